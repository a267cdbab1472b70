"""Config helpers shared by configs/*.py: big_vision-style typed string arguments, the default
train config, the runlocal smoke sizes, and loading a config file by path (ml-collections stays
at the edges: the model itself takes a plain dataclass).

`parse_arg("task=sst2,variant=squeezebert-base,runlocal=True", task="", variant="", runlocal=False)`
returns a ConfigDict whose values take the type of their defaults;
`load_config("configs/glue.py:task=sst2,runlocal=True")` is what `--config=` does.
"""

import importlib.util
import os

import ml_collections
from ml_collections import config_dict

MODEL_INT_FIELDS = ("vocab_size", "num_hidden_layers", "hidden_size", "embedding_size", "num_attention_heads",
                    "intermediate_size", "q_groups", "k_groups", "v_groups",
                    "post_attention_groups", "intermediate_groups", "output_groups",
                    "max_position_embeddings")
MODEL_FLOAT_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob")
# Variant switches (ModelConfig docs): ALBERT-like sharing, separable FFN, hybrid conv layers.
MODEL_VARIANT_FIELDS = dict(share_layers=bool, separable_kernel=int, conv_kernel=int,
                            conv_layers=str)  # conv_layers as "1,3"
# Execution switches (same parameters and function; squeezebert/model/config.py).
MODEL_EXECUTION_FIELDS = dict(attention_impl=str, remat=str, fused_qkv=bool, grouped_layout=str,
                              batch_chunk=str, chunk_streams=int)  # batch_chunk: "auto" | "N"


def _cast(value: str, default):
  if isinstance(default, bool):
    if value.lower() in ("1", "true", "yes", ""):
      return True
    if value.lower() in ("0", "false", "no"):
      return False
    raise ValueError(f"expected a boolean, got {value!r}")
  if isinstance(default, int):
    return int(value)
  if isinstance(default, float):
    return float(value)
  return value


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
    try:
      out[key] = _cast(value, defaults[key])
    except ValueError as e:
      raise ValueError(f"config argument {key}={value!r}: {e}") from None
  return ml_collections.ConfigDict(out)


def base_train_config() -> ml_collections.ConfigDict:
  """Fields every run has; task configs override them. One commented field per line."""
  c = ml_collections.ConfigDict()
  c.mode = "train"                # train | eval (eval the best/latest checkpoint) | predict (test set)
  c.seed = 0                      # params init, data order and dropout all derive from it
  c.task = ""                     # e.g. "sst2"; see squeezebert/train/tasks.py
  # Model: a preset from squeezebert/model/config.py plus field overrides.
  c.model = ml_collections.ConfigDict(dict(variant="squeezebert-base"))
  # Optional ModelConfig field overrides (None = keep the preset's / checkpoint's value).
  for name in MODEL_INT_FIELDS:
    c.model[name] = config_dict.placeholder(int)
  for name in MODEL_FLOAT_FIELDS:
    c.model[name] = config_dict.placeholder(float)
  for name, typ in {**MODEL_VARIANT_FIELDS, **MODEL_EXECUTION_FIELDS}.items():
    c.model[name] = config_dict.placeholder(typ)
  c.init_from = ""                # "" (scratch) | HF dir | our model dir | a training workdir
  c.init_from_checkpoint = "best" # init_from=<workdir>: best (by its task metric) | latest | step
  c.init_layers = ""              # with init_from and model.num_hidden_layers = n: take n of its
                                  #   layers: first_k | every_other (DistilBERT) | "0,2,4"
  c.reinit_params = ""            # with init_from: comma-separated parameter-path fragments
                                  #   reset to the seed's fresh init, e.g. "pooler,layers/3/"
  c.dtype = "float32"             # compute dtype: float32 | bfloat16 (params stay float32)
  c.rng_impl = "threefry"         # dropout/masking PRNG: threefry (partitionable) | rbg |
                                  #   unsafe_rbg (cheaper bits on GPU/TPU; other random draws)
  c.finite_check = "cheap"        # per-step divergence check: cheap (loss and grad norm) |
                                  #   params (every parameter after the update)
  # Data.
  c.data = ml_collections.ConfigDict(dict(
      source="auto",              # auto: prepared TFDS -> tsv_dir -> TFDS download | tfds | tsv
      download=True,              # auto may download and prepare the dataset through TFDS
      tfds_data_dir="",           # "" -> $TFDS_DATA_DIR -> tfds default
      tsv_dir="",                 # GLUE TSV layout dir (fallback); "" -> $GLUE_DIR
      vocab="",                   # vocab.txt; "" -> $SQUEEZEBERT_VOCAB -> the MiniLM package's
      max_len=128,                # tokens incl. [CLS]/[SEP]; longer inputs are truncated
      bucket_boundaries=(32, 64, 96, 128),  # padded lengths (dynamic padding)
      train_limit=0,              # >0: use only the first N training examples (smoke tests)
      eval_limit=0,               # >0: only the first N examples of every eval AND test split
                                  #   (smoke runs; a limited test split is no valid submission)
      shards=0,                   # each split read as this many shards, each process loading
                                  #   only its own; 0 -> one per process. Part of the data order
                                  #   (a run resumes only with the same count)
  ))
  # Devices: a ('data', 'fsdp') mesh; the batch is split over both, parameters and optimizer
  # state are split over 'fsdp' (squeezebert/train/mesh.py). -1: the devices the other leaves.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  # Optimisation.
  c.batch_size = 32               # global batch (all devices, all processes)
  c.grad_accum_steps = 1          # micro-batches per update (batch_size must divide by it)
  c.num_epochs = 3.0              # used when num_train_steps <= 0
  c.num_train_steps = 0           # >0 overrides num_epochs
  c.optimizer = "adamw"           # adamw | lamb
  c.learning_rate = 5e-5
  c.warmup_ratio = 0.1            # fraction of total steps (ignored if warmup_steps > 0)
  c.warmup_steps = 0
  c.weight_decay = 0.01           # never applied to LayerNorm params and biases
  c.adam_b1 = 0.9
  c.adam_b2 = 0.999
  c.adam_eps = 1e-6
  c.grad_clip_norm = 1.0          # 0 disables
  c.freeze_params = ""            # comma-separated parameter-path fragments kept fixed, e.g.
                                  #   "word_embeddings" (pretraining on an imported table)
  # Knowledge distillation (squeezebert/train/distill.py): a frozen teacher in the train step.
  c.distill = ml_collections.ConfigDict(dict(
      teacher="",                 # "" = off | HF dir | our model dir | workdir, with the task's head
      alpha=0.5,                  # loss = (1 - alpha) * task + alpha * T^2 * KL(teacher || student)
      temperature=2.0,
      hidden_weight=0.0,          # >0: + weight * MSE of mapped hidden states (a learned
                                  # projection at unequal widths; alpha=0: hidden states only)
      augment_prob=0.0,           # >0 (GLUE): the teacher terms also run on a copy of each batch
                                  # with this fraction of tokens -> [MASK] / random tokens
      augment_copies=1,           # corrupted copies per batch (student and teacher see (1+n)B rows)
      embedding_init=False,       # a from-scratch student's word embeddings start as the
                                  # teacher's table projected to its width (closed-form
                                  # TinyBERT embedding loss; squeezebert/train/embed_init.py)
  ))
  # Quantization (squeezebert/quant): QAT is a switch of this trainer; PTQ / int8 conversion
  # of a finished workdir: python -m squeezebert.quant --workdir RUN --mode ptq|int8 --out DIR.
  c.quant = ml_collections.ConfigDict(dict(
      mode="none",                # none | qat (qwix QtProvider, straight-through gradients)
      weight_bits=8,              # 8 | 4: symmetric, per output channel
      act_bits=8,                 # 8 | 16 (simulated, hand-written fake-quant) | 0 (weights only)
      act_mode="dynamic",         # dynamic (per token, every call) | static (averaged ranges)
      # comma-separated: qkv, attention_matmuls, post_attention, ffn, pooler, head, embeddings
      modules="qkv,attention_matmuls,post_attention,ffn,pooler,head",
      calib_batches=32,           # PTQ with static ranges: training batches to calibrate on
  ))
  # Bookkeeping.
  c.log_every_steps = 50
  c.eval_every_steps = 0          # 0 -> once per epoch
  c.checkpoint_every_steps = 0    # 0 -> at every eval
  c.keep_checkpoints = 2          # latest N kept, plus the best by the task metric
  c.eval_checkpoint = "best"      # mode=eval|predict: best (by the task metric) | latest | step
  c.allow_config_change = False   # resume a workdir although seed/batch/model/lr... changed
  c.progress_bar = True
  c.distributed = "auto"          # jax.distributed.initialize(): auto (when a coordinator is
                                  #   set or a cluster detected) | True | False; see
                                  #   squeezebert/train/distributed.py
  c.checkpoint_async = True       # orbax writes checkpoints in the background (waited for
                                  #   before the next save, at preemption and at exit)
  c.stop_after_steps = 0          # >0: stop (as if preempted) after this many steps this run
  c.step_delay_secs = 0.0         # seconds to sleep after each step; for kill/resume tests only
  return c


def pretrain_section() -> ml_collections.ConfigDict:
  """config.pretrain of task=pretrain (configs/pretrain.py; the train benchmark)."""
  return ml_collections.ConfigDict(dict(
      mask_prob=0.15,             # fraction of maskable tokens predicted per sequence
      whole_word=False,           # mask all pieces of a word together
      max_predictions=0,          # P masked positions per sequence; 0 -> ceil(max_len*mask_prob)
      sop_weight=1.0,             # loss = mlm_weight * MLM + sop_weight * SOP
      mlm_weight=1.0,             # 0 with a teacher: distillation-only general pretraining
  ))


def model_overrides(model_cfg) -> dict:
  """The ModelConfig fields set in config.model (None placeholders dropped)."""
  names = (MODEL_INT_FIELDS + MODEL_FLOAT_FIELDS + tuple(MODEL_VARIANT_FIELDS)
           + tuple(MODEL_EXECUTION_FIELDS))
  return {k: model_cfg[k] for k in names if k in model_cfg and model_cfg[k] is not None}


def given(arg: str | None, key: str) -> bool:
  """Whether the config argument string sets `key` explicitly ("variant=..." in it)."""
  return any(item.partition("=")[0] == key for item in (arg or "").split(","))


def apply_runlocal(c: ml_collections.ConfigDict, init_from: str = "", keep_variant: bool = False,
                   **data) -> None:
  """The tiny smoke-run sizes every config's `runlocal=True` uses (tests run them): 4 steps of
  batch 8 on 64 training examples, evals on 32, length 64; the tiny model with the real
  WordPiece vocab unless a checkpoint or (keep_variant) an explicit variant is given.
  `data`: extra config.data fields."""
  if not init_from and not keep_variant:
    c.model.variant = "tiny"
  if not init_from and c.model.variant == "tiny":
    c.model.vocab_size = 30522  # the real WordPiece vocab (the preset's 128 is for unit tests)
  c.batch_size = 8
  c.num_train_steps = 4
  c.eval_every_steps = 2
  c.log_every_steps = 1
  c.data.train_limit = 64
  c.data.eval_limit = 32
  c.data.max_len = 64             # the tiny preset has 64 positions
  c.data.bucket_boundaries = (32, 64)
  c.progress_bar = False
  for k, v in data.items():
    c.data[k] = v


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`path/to/config.py[:arg]` -> that file's get_config(arg), as `--config=spec` loads it."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} not found (from {spec!r}; relative paths "
                            "are taken from the current directory)")
  name = "config_" + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)
