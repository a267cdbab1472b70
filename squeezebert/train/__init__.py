"""The one trainer (train_and_evaluate) and its parts."""
