"""SQuAD v1.1 extractive question answering.

Run (from the repo root):
  # official protocol: train on train, evaluate on dev (needs TFDS squad/v1.1 or train-v1.1.json)
  python -m squeezebert.main --config=configs/squad.py:init_from=/path/to/hf_dir,train_articles=0 \
      --workdir=/tmp/squad
  # here (only dev-v1.1.json exists): train on 75% of the dev articles, evaluate on the rest
  python -m squeezebert.main --config=configs/squad.py:init_from=/path/to/hf_dir \
      --config.data.squad_dir=/path/to/dir_with_dev-v1.1.json --workdir=/tmp/squad
Arguments (after the colon, comma-separated):
  variant         a model preset (squeezebert-base, squeezebert-small, bert-base, tiny, ...)
  init_from       an HF or our checkpoint directory ("" = from scratch); a fresh QA head
  train_articles  config.data.squad_train_articles (below); default 0.75
  runlocal        True: tiny model, 64 train questions, a few steps (tests, smoke runs)
config.data fields of this task:
  squad_dir             dir with train-v1.1.json / dev-v1.1.json (fallback to TFDS); "" ->
                        $SQUAD_DIR. source='tsv' forces the JSON files.
  squad_train_articles  0: the official splits (train -> validation). >0: train on part of the
                        DEV set and evaluate on the rest, split BY ARTICLE (no context is
                        shared): a fraction in (0, 1) of the 48 dev articles, or a count >= 1.
                        Articles are sorted by title and permuted with squad_split_seed (not
                        config.seed), so the split is deterministic and independent of the
                        source (TFDS or JSON); the chosen titles are logged. The splits are then
                        named dev_train / dev_heldout.
  squad_split_seed      seed of that article permutation (default 0)
  max_len, doc_stride   windows of max_len tokens: [CLS] question [SEP] context [SEP]; window
                        starts advance by doc_stride context tokens (BERT's run_squad.py)
  max_query_len         questions are cut to this many WordPiece tokens
  n_best_size, max_answer_len   decoding: n best starts x ends per window, answers of at most
                        max_answer_len tokens; the best start+end logit over all windows wins
Metrics: the official evaluate-v1.1.py exact_match and f1 (percent), over every question of the
eval split; the best checkpoint is picked by f1. --config.mode=predict writes the official
predictions JSON ({question id: answer}) of the eval split.
Expect: BERT-base ~88.5 F1 / 81 EM on the official protocol (Devlin et al. 2019). Here the default
split trains on 8,239 questions of 36 dev articles (9,135 windows at max_len 256) and evaluates
on the other 2,331 questions (12 articles). On a 2-core CPU shared with another job, MiniLM-L6
took ~20 s per step of 32 windows of 256 tokens, so CPU runs see a fraction of an epoch: use a
shorter max_len, fewer eval questions (--config.data.eval_limit) and see README for measured
results. A from-scratch model (no pretraining) stays near the trivial-span level.
"""

from squeezebert import configlib as common


def get_config(arg=None):
  a = common.parse_arg(arg, variant="squeezebert-base", init_from="", runlocal=False,
                       dtype="float32", train_articles=0.75)
  c = common.base_train_config()
  c.task = "squad"
  c.model.variant = a.variant
  if a.variant == "tiny":  # the preset's 128-token vocab is for model unit tests
    c.model.vocab_size = 30522
  c.init_from = a.init_from
  c.dtype = a.dtype
  c.num_epochs = 2.0
  c.learning_rate = 5e-5
  c.data.squad_dir = ""
  c.data.squad_train_articles = float(a.train_articles)
  c.data.squad_split_seed = 0
  c.data.max_len = 384
  c.data.bucket_boundaries = (128, 192, 256, 320, 384)
  c.data.doc_stride = 128
  c.data.max_query_len = 64
  c.data.max_answer_len = 30
  c.data.n_best_size = 20
  if a.runlocal:
    common.apply_runlocal(c, a.init_from, keep_variant=common.given(arg, "variant"),
                          bucket_boundaries=(64,), doc_stride=16, max_query_len=24)
  return c
