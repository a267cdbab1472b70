"""CoNLL-2003 English NER (token classification).

Run (from the repo root):
  python -m squeezebert.main --config=configs/ner.py:variant=squeezebert-base --workdir=/tmp/ner
  python -m squeezebert.main --config=configs/ner.py:init_from=/path/to/hf_dir --workdir=/tmp/ner
Arguments (after the colon, comma-separated):
  variant   a model preset (squeezebert-base, squeezebert-small, bert-base, tiny, ...)
  init_from an HF or our checkpoint directory ("" = from scratch); a fresh token head
  runlocal  True: tiny model, 64 train sentences, a few steps (tests, smoke runs)
Overrides: --config.learning_rate=3e-5 --config.num_epochs=5 --config.data.eval_splits="('dev',)"
What it does: each word's first WordPiece carries the word's tag (the others are ignored by the
loss); predictions are mapped back to words and scored with entity-level precision / recall /
F1 (seqeval/conlleval-equivalent, squeezebert/metrics/ner.py) and word accuracy. By default both
dev and test are evaluated (metrics `dev/f1`, `test/f1`, ...); the best checkpoint is picked by
dev F1. --config.mode=predict writes `word gold predicted` files (conlleval input) for test.
Expect: BERT-base reaches ~92 test F1 after 3 epochs (Devlin et al. 2019); a from-scratch model
(no pretraining) far less. On a 2-core CPU shared with another job, MiniLM-L6 (init_from) took
~3.5-4 s per step of 32 sentences once compiled, so a 25-minute run is ~300 steps (~0.7 epoch);
see README for measured results. An eval of dev + test (6.7k sentences) costs minutes on such a
CPU: evaluate rarely (--config.eval_every_steps) or only dev during training.
Data: TFDS conll2003 (IOB2 tags) from config.data.tfds_data_dir or $TFDS_DATA_DIR; falls back to
the raw CoNLL files train.txt/valid.txt/test.txt in config.data.conll_dir or $CONLL2003_DIR
(source='tsv' forces them). IOB1 files are detected and rewritten to IOB2 (data.tag_scheme).
"""

from squeezebert import configlib as common


def get_config(arg=None):
  a = common.parse_arg(arg, variant="squeezebert-base", init_from="", runlocal=False,
                       dtype="float32")
  c = common.base_train_config()
  c.task = "conll2003"
  c.model.variant = a.variant
  if a.variant == "tiny":  # the preset's 128-token vocab is for model unit tests
    c.model.vocab_size = 30522
  c.init_from = a.init_from
  c.dtype = a.dtype
  c.num_epochs = 3.0
  c.learning_rate = 5e-5
  c.data.conll_dir = ""           # raw CoNLL files (fallback); "" -> $CONLL2003_DIR
  c.data.tag_scheme = "auto"      # auto (IOB1 detected, rewritten to IOB2) | iob1 | iob2
  c.data.eval_splits = ("dev", "test")  # evaluated at every eval; the first picks the best
  # The longest CoNLL-2003 sentence has 164 WordPieces with [CLS]/[SEP]: nothing is truncated.
  c.data.max_len = 192
  c.data.bucket_boundaries = (16, 32, 64, 128, 192)  # median sentence: 15 WordPieces
  if a.runlocal:
    common.apply_runlocal(c, a.init_from, keep_variant=common.given(arg, "variant"))
  return c
