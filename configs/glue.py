"""GLUE fine-tuning.

Run (from the repo root):
  python -m squeezebert.main --config=configs/glue.py:task=sst2,variant=squeezebert-base \
      --workdir=/tmp/sst2
Arguments (after the colon, comma-separated):
  task      cola | sst2 | mrpc | stsb | qqp | mnli | qnli | rte | wnli
  variant   a model preset (squeezebert-base, squeezebert-small, bert-base, tiny, ...)
  init_from an HF or our checkpoint directory ("" = from scratch)
  runlocal  True: tiny model, 64 train examples, a few steps (tests, smoke runs)
  teacher   distil from this checkpoint (HF dir / our dir / workdir with the task's head)
  recipe    default | bells: the paper's "bells and whistles" GLUE recipe:
              1. task=mnli,init_from=PRETRAINED,teacher=MNLI_TEACHER,recipe=bells -> /w/mnli
              2. task=rte,init_from=/w/mnli,teacher=RTE_TEACHER,recipe=bells (each other task)
Overrides: --config.learning_rate=3e-5 --config.num_epochs=5 ...
Expect (see README for measured figures): squeezebert-small from scratch on SST-2 ~ 80% dev
accuracy after ~20 min on 2 CPU cores; MiniLM (init_from) on SST-2 >= 87%.
Data: TFDS glue/<task> from config.data.tfds_data_dir or $TFDS_DATA_DIR; falls back to the
official GLUE TSVs in config.data.tsv_dir or $GLUE_DIR.
"""

from squeezebert import configlib as common

# Per-task defaults (recipes in the style of the BERT/SqueezeBERT papers).
TASK_DEFAULTS = {
    "cola": dict(num_epochs=3.0, learning_rate=5e-5),
    "sst2": dict(num_epochs=3.0, learning_rate=5e-5),
    "mrpc": dict(num_epochs=5.0, learning_rate=5e-5),
    "stsb": dict(num_epochs=5.0, learning_rate=5e-5),
    "qqp": dict(num_epochs=3.0, learning_rate=5e-5),
    "mnli": dict(num_epochs=3.0, learning_rate=5e-5),
    "qnli": dict(num_epochs=3.0, learning_rate=5e-5),
    "rte": dict(num_epochs=5.0, learning_rate=5e-5),
    "wnli": dict(num_epochs=3.0, learning_rate=2e-5),
}


def get_config(arg=None):
  a = common.parse_arg(arg, task="sst2", variant="squeezebert-base", init_from="",
                       runlocal=False, dtype="float32", teacher="", recipe="default")
  if a.recipe not in ("default", "bells"):
    raise ValueError(f"unknown recipe {a.recipe!r}; use default | bells")
  if a.task not in TASK_DEFAULTS:
    raise ValueError(f"unknown GLUE task {a.task!r}; known: {sorted(TASK_DEFAULTS)}")
  c = common.base_train_config()
  c.task = a.task
  c.model.variant = a.variant
  if a.variant == "tiny":  # the preset's 128-token vocab is for model unit tests
    c.model.vocab_size = 30522
  c.init_from = a.init_from
  c.dtype = a.dtype
  for k, v in TASK_DEFAULTS[a.task].items():
    c[k] = v
  c.distill.teacher = a.teacher
  if a.recipe == "bells":
    # The paper's "bells and whistles": distil from a task-specific teacher; MNLI first, every
    # other task then starts from the distilled MNLI model (init_from=<MNLI workdir>).
    if not a.teacher:
      raise ValueError("recipe=bells needs teacher=<a checkpoint fine-tuned on the task>")
    c.distill.alpha = 0.5
    c.distill.temperature = 2.0
  if a.runlocal:
    common.apply_runlocal(c, a.init_from, keep_variant=common.given(arg, "variant"))
  return c
