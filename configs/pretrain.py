"""MLM + sentence-order-prediction pretraining (the one trainer, task=pretrain).

Run (from the repo root):
  # the paper's recipe (SqueezeBERT, Iandola et al. 2020, after ALBERT/LAMB): phase 1 then 2
  python -m squeezebert.main --config=configs/pretrain.py:recipe=paper,phase=1,accum=64 \\
      --config.data.corpus=wikipedia/20230601.en --workdir=/ckpt/sqb_p1
  python -m squeezebert.main --config=configs/pretrain.py:recipe=paper,phase=2,accum=256 \\
      --config.data.corpus=wikipedia/20230601.en --config.init_from=/ckpt/sqb_p1 \\
      --workdir=/ckpt/sqb_p2
  # a small model on the local plain-text corpus, 2-core CPU (~35 min; TFDS prepares the
  # directory into a writable --config.data.tfds_data_dir on first use)
  python -m squeezebert.main --config=configs/pretrain.py:recipe=cpu \\
      --config.data.corpus_dir=../shared/data/corpus --workdir=/tmp/pretrain_small
Arguments (after the colon, comma-separated):
  recipe    paper | cpu | runlocal (tiny model, a few steps: tests)
  variant   model preset (default squeezebert-base for paper, squeezebert-small for cpu)
  phase     paper recipe: 1 = 56k steps at length 128, 2 = 6k steps at length 512 (set
            --config.init_from to the phase-1 workdir: weights carry over, LAMB restarts)
  accum     gradient-accumulation steps, so that 8192 / accum sequences fit in memory per update
  teacher   optional encoder checkpoint (HF dir such as MiniLM, our dir or a workdir, any head):
            adds hidden-state distillation to MLM + SOP (alpha 0, hidden_weight 1: the
            student's mapped hidden states, through a learned projection at unequal widths,
            regress the teacher's states on the unmasked text; TinyBERT-style general
            distillation). E.g. on CPU:
              --config=configs/pretrain.py:recipe=cpu,teacher=<minilm model dir>
            add --config.pretrain.mlm_weight=0 for distillation only (no MLM term; the untrained
            MLM head's perplexity then picks no checkpoint, so the latest ones are kept)
Paper recipe: LAMB, global batch 8192, lr 2.5e-3, warmup 28% of the steps, weight decay 0.01,
bf16 compute, 15% masking (80/10/10), SOP on segment pairs packed to the max length.
Data: config.data.corpus is a TFDS text dataset with a "text" feature (wikipedia/..., c4/en) or
text_corpus/paragraphs | text_corpus/wikitext with config.data.corpus_dir a local directory
(squeezebert/data/text_corpus.py prepares it as a TFDS dataset under the TFDS data dir); the
corpus is packed at start-up (cached), or, for multi-process runs, prepared once into shards:
  python -m squeezebert.data.prepare --corpus_dir=DIR --out=PREP --max_len=128
  ... --config.data.prepared_dir=PREP   (each process reads only its shards; docs/pretraining.md)
Expect: eval MLM loss falls steadily; see README for the measured CPU run.
"""

from squeezebert import configlib as common


def get_config(arg=None):
  a = common.parse_arg(arg, recipe="cpu", variant="", phase=1, accum=1, teacher="")
  if a.recipe not in ("paper", "cpu", "runlocal"):
    raise ValueError(f"unknown recipe {a.recipe!r}; use paper | cpu | runlocal")
  if a.phase not in (1, 2):
    raise ValueError(f"phase must be 1 or 2, got {a.phase}")
  c = common.base_train_config()
  c.task = "pretrain"
  c.data.corpus = "text_corpus/paragraphs"  # or wikipedia/20230601.en, c4/en, text_corpus/wikitext
  c.data.corpus_dir = ""          # local text directory for text_corpus/* (TFDS manual dir)
  c.data.eval_split = "validation"
  c.data.cache_dir = ""           # packed-sequence cache; "" -> <TFDS data dir>/squeezebert_cache
  c.data.prepared_dir = ""        # shards from python -m squeezebert.data.prepare (read instead
                                  # of packing the corpus at start-up; same max_len and vocab)
  c.pretrain = common.pretrain_section()
  c.optimizer = "lamb"
  c.weight_decay = 0.01
  if a.teacher:
    c.distill.teacher = a.teacher
    c.distill.alpha = 0.0         # no MLM-logit term: the teacher needs no MLM head
    c.distill.hidden_weight = 1.0
  if a.recipe == "paper":
    c.model.variant = a.variant or "squeezebert-base"
    c.dtype = "bfloat16"
    c.batch_size = 8192
    c.grad_accum_steps = a.accum
    c.learning_rate = 2.5e-3
    c.warmup_ratio = 0.28
    c.data.max_len = 128 if a.phase == 1 else 512
    c.data.bucket_boundaries = (c.data.max_len,)
    c.num_train_steps = 56_000 if a.phase == 1 else 6_000
    c.eval_every_steps = 2000
    c.log_every_steps = 100
    c.data.eval_limit = 2000      # documents of the eval split
  elif a.recipe == "cpu":
    # Sized for ~35 minutes on 2 CPU cores: length 64 (GLUE single sentences are short),
    # AdamW (LAMB's large-batch advantage does not apply at batch 64).
    c.model.variant = a.variant or "squeezebert-small"
    c.optimizer = "adamw"
    c.batch_size = 64
    c.grad_accum_steps = a.accum
    c.learning_rate = 1e-3
    c.warmup_ratio = 0.06
    c.data.max_len = 64
    c.data.bucket_boundaries = (32, 64)
    c.data.eval_limit = 500       # held-out documents for eval perplexity
    c.num_train_steps = 3000
    c.eval_every_steps = 500
    c.log_every_steps = 50
  else:  # runlocal
    common.apply_runlocal(c, train_limit=40, eval_limit=10)
    c.model.variant = a.variant or "tiny"
    c.learning_rate = 1e-3
  return c
