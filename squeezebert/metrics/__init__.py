"""Task metrics on host arrays: GLUE (`glue`), CoNLL-2003 entity F1 (`ner`), SQuAD EM/F1
(`squad`). They depend on no other part of the package."""
