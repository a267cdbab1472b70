"""Checkpoint conversion: HF (SqueezeBERT / BERT) <-> ours, and our own model directories.

- `from_pretrained(path, head=None, num_labels=None)`: an HF directory (config.json +
  model.safetensors or pytorch_model.bin), one of our exported model directories
  (`squeezebert_jax.json` + `model.safetensors`), or a training workdir (orbax checkpoints).
- `export_hf(model, out_dir)`: an HF directory that `transformers` loads with from_pretrained.
- `save_pretrained(model, out_dir)`: our own directory format.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors.numpy import load_file, save_file

from squeezebert.convert import names
from squeezebert.convert.torch_zip import load_torch_bin
from squeezebert.model import ModelConfig, SqueezeBert

OURS_CONFIG = "squeezebert_jax.json"
_HF_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "intermediate_size", "hidden_act", "hidden_dropout_prob",
              "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
              "initializer_range", "layer_norm_eps", "pad_token_id")
_GROUP_FIELDS = ("q_groups", "k_groups", "v_groups", "post_attention_groups",
                 "intermediate_groups", "output_groups")


class CheckpointMismatchError(ValueError):
  """Missing, unexpected or mis-shaped weights; the message lists every one."""


# ---------------------------------------------------------------- HF config <-> ours
def config_from_hf(hf: dict, **overrides) -> ModelConfig:
  mt = hf.get("model_type")
  if mt not in ("squeezebert", "bert"):
    raise ValueError(f"unsupported HF model_type {mt!r}: expected 'squeezebert' or 'bert'")
  if hf.get("position_embedding_type", "absolute") != "absolute":
    raise ValueError("only absolute position embeddings are supported")
  kw = {k: hf[k] for k in _HF_FIELDS if k in hf}
  kw["embedding_size"] = hf.get("embedding_size", kw.get("hidden_size", 768))
  kw["family"] = mt
  if mt == "squeezebert":
    kw.update({k: hf[k] for k in _GROUP_FIELDS if k in hf})
  else:
    kw.update({k: 1 for k in _GROUP_FIELDS})
  kw.update(overrides)
  return ModelConfig(**kw)


def config_to_hf(cfg: ModelConfig, head: str, num_labels: int,
                 id2label: dict | None = None) -> dict:
  d = {k: getattr(cfg, k) for k in _HF_FIELDS}
  d["model_type"] = cfg.family
  d["architectures"] = [names.hf_architecture(cfg, head)]
  if cfg.family == "squeezebert":
    d["embedding_size"] = cfg.embedding_size
    d.update({k: getattr(cfg, k) for k in _GROUP_FIELDS})
  elif any(getattr(cfg, k) != 1 for k in _GROUP_FIELDS):
    raise ValueError("family='bert' export needs every group count to be 1")
  if head in ("classification", "regression", "token"):
    n = 1 if head == "regression" else num_labels
    id2label = id2label or {i: f"LABEL_{i}" for i in range(n)}
    d["id2label"] = {str(i): v for i, v in id2label.items()}
    d["label2id"] = {v: int(i) for i, v in id2label.items()}
    if head == "regression":
      d["problem_type"] = "regression"
  return d


# ---------------------------------------------------------------- reading weights
def read_hf_weights(path: str) -> dict[str, np.ndarray]:
  st, pt = os.path.join(path, "model.safetensors"), os.path.join(path, "pytorch_model.bin")
  if os.path.exists(st):
    return load_file(st)
  if os.path.exists(pt):
    return load_torch_bin(pt)
  raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin")


def _strip_prefix(sd: dict, prefix: str) -> dict:
  if any(k.startswith(prefix) for k in sd):
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}
  return dict(sd)


def load_hf_state(model: SqueezeBert, sd: dict[str, np.ndarray], seed: int = 0) -> list[str]:
  """Copy an HF state dict into `model` in place. Returns the head keys left freshly
  initialised (missing from the checkpoint, or a different label count; also the pooler
  when the checkpoint has none, as HF BertForMaskedLM/TokenClassification/QA save). Raises
  CheckpointMismatchError listing every missing / unexpected / mis-shaped encoder key."""
  cfg = model.config
  sd = _strip_prefix(sd, names.base_prefix(cfg))
  params = flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  entries = names.encoder_entries(cfg) + names.head_entries(model.head)
  missing, misshaped, fresh, used = [], [], [], set()
  for e in entries:
    if e.hf not in sd:
      (fresh if e.is_head or e.optional else missing).append(e.hf)
      continue
    used.add(e.hf)
    try:
      value = e.to_ours(np.asarray(sd[e.hf]))
    except ValueError:  # a reshape that cannot work is a shape mismatch too
      value = None
    want = params[e.ours].shape
    if value is None or value.shape != want:
      got = sd[e.hf].shape
      if e.is_head:
        fresh.append(f"{e.hf} (checkpoint {tuple(got)}, model needs {tuple(want)})")
      else:
        misshaped.append(f"{e.hf}: checkpoint {tuple(got)} -> model needs {tuple(want)}")
      continue
    params[e.ours] = jnp.asarray(value, dtype=params[e.ours].dtype)
  unexpected = sorted(k for k in sd if k not in used and k not in names.IGNORED_HF_KEYS
                      and not k.startswith(names.HEAD_PREFIXES))
  problems = []
  if missing:
    problems.append(f"missing from the checkpoint ({len(missing)}): {missing}")
  if misshaped:
    problems.append(f"mis-shaped ({len(misshaped)}): {misshaped}")
  if unexpected:
    problems.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
  if problems:
    raise CheckpointMismatchError(
        f"checkpoint does not fit a {cfg.family} model with {cfg.num_hidden_layers} layers, "
        f"hidden {cfg.hidden_size}:\n  " + "\n  ".join(problems))
  dec = sd.get("cls.predictions.decoder.weight")
  if dec is not None and model.head in ("mlm", "pretraining"):
    emb = np.asarray(params[("transformer", "embeddings", "word_embeddings")])
    if dec.shape != emb.shape or not np.allclose(dec, emb):
      logging.warning("checkpoint's MLM decoder is not tied to the word embeddings; "
                      "this model ties them, so the decoder weight is ignored")
  nnx.update(model, _replace_params(model, unflatten_dict(_materialize(model, params, seed))))
  if fresh:
    logging.warning("head/pooler weights freshly initialised (not in the checkpoint or a "
                    "different shape): %s", fresh)
  return fresh


def _abstract_model(cfg: ModelConfig, head: str, num_labels: int, seed: int) -> SqueezeBert:
  """The model's structure only (nnx.eval_shape: no random init, nothing allocated). The
  loaders fill it from the checkpoint and initialise for real only what that lacks."""
  return nnx.eval_shape(lambda: SqueezeBert(cfg, head=head, num_labels=num_labels,
                                            rngs=nnx.Rngs(params=seed)))


def _materialize(model: SqueezeBert, tree: dict, seed: int) -> dict:
  """Give still-abstract entries of a flat param tree the values a real
  `SqueezeBert(..., rngs=nnx.Rngs(params=seed))` init has (a no-op for a concrete model)."""
  todo = [p for p, v in tree.items() if isinstance(v, jax.ShapeDtypeStruct)]
  if todo:
    real = SqueezeBert(model.config, head=model.head, num_labels=model.num_labels,
                       rngs=nnx.Rngs(params=seed))
    init = flatten_dict(nnx.to_pure_dict(nnx.state(real, nnx.Param)))
    for p in todo:
      tree[p] = init[p]
  return tree


def _replace_params(model, pure):
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, pure)
  return state


# ---------------------------------------------------------------- public API
def from_hf(path: str, head: str | None = None, num_labels: int | None = None, seed: int = 0,
            **config_overrides) -> SqueezeBert:
  cfg_path = os.path.join(path, "config.json")
  with open(cfg_path) as f:
    hf = json.load(f)
  cfg = config_from_hf(hf, **config_overrides)
  arch = (hf.get("architectures") or [None])[0]
  hf_labels = len(hf["id2label"]) if "id2label" in hf else hf.get("num_labels", 2)
  if head is None:
    head = names.head_from_architecture(arch) or "base"
    # HF ForSequenceClassification is a regressor when problem_type says so, or (unset)
    # when it has a single label (its loss picks MSE then).
    ptype = hf.get("problem_type")
    if head == "classification" and (ptype == "regression" or (ptype is None and hf_labels == 1)):
      head = "regression"
  if num_labels is None:
    num_labels = hf_labels
  model = _abstract_model(cfg, head, num_labels, seed)
  load_hf_state(model, read_hf_weights(path), seed=seed)
  return model


def export_hf(model: SqueezeBert, out_dir: str, id2label: dict | None = None,
              vocab_file: str | None = None) -> str:
  cfg = model.config
  if not cfg.is_hf_architecture:
    raise ValueError("this model is a variant HF has no class for (factorized embeddings, "
                     "shared layers, separable FFN or conv layers): save it with "
                     "squeezebert.convert.save_pretrained instead")
  os.makedirs(out_dir, exist_ok=True)
  params = flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  prefix = "" if model.head == "base" else names.base_prefix(cfg)
  sd = {}
  for e in names.encoder_entries(cfg):
    if e.optional and not names.hf_has_pooler(cfg, model.head):
      continue  # e.g. BertForMaskedLM has no pooler: exporting it would be an unexpected key
    sd[prefix + e.hf] = np.ascontiguousarray(e.to_hf(np.asarray(params[e.ours], np.float32)))
  for e in names.head_entries(model.head):
    sd[e.hf] = np.ascontiguousarray(e.to_hf(np.asarray(params[e.ours], np.float32)))
  save_file(sd, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(config_to_hf(cfg, model.head, model.num_labels, id2label), f, indent=2)
  if vocab_file:
    with open(vocab_file) as src, open(os.path.join(out_dir, "vocab.txt"), "w") as dst:
      dst.write(src.read())
  return out_dir


def _join(path: tuple) -> str:
  # Paths hold ints (the nnx.List layer index): flatten_dict(sep="/") would reject them.
  return "/".join(str(p) for p in path)


def flat_params(model: SqueezeBert) -> dict[str, np.ndarray]:
  """Our parameters as {'transformer/layers/0/attention/query/kernel': array, ...}: the
  key format of our model.safetensors and of `load_params_into`."""
  flat = flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  return {_join(path): np.asarray(v) for path, v in flat.items()}


def save_pretrained(model: SqueezeBert, out_dir: str, extra: dict | None = None) -> str:
  """Our own directory: squeezebert_jax.json + model.safetensors ('/'-joined param paths)."""
  os.makedirs(out_dir, exist_ok=True)
  save_file(flat_params(model), os.path.join(out_dir, "model.safetensors"))
  meta = dict(model=model.config.architecture_dict(), head=model.head, num_labels=model.num_labels,
              **(extra or {}))
  with open(os.path.join(out_dir, OURS_CONFIG), "w") as f:
    json.dump(meta, f, indent=2)
  return out_dir


def load_ours(path: str, head: str | None = None, num_labels: int | None = None,
              seed: int = 0, **config_overrides) -> SqueezeBert:
  with open(os.path.join(path, OURS_CONFIG)) as f:
    meta = json.load(f)
  cfg = ModelConfig(**{**meta["model"], **config_overrides})
  head = head or meta["head"]
  num_labels = num_labels or meta["num_labels"]
  model = _abstract_model(cfg, head, num_labels, seed)
  load_params_into(model, load_file(os.path.join(path, "model.safetensors")), source=path,
                   seed=seed)
  return model


def load_params_into(model: SqueezeBert, flat: dict[str, np.ndarray], source: str = "",
                     seed: int = 0) -> list:
  """Load our '/'-joined param dict into `model`: encoder keys must match exactly; head keys
  that are absent or shaped for another label count are left fresh (returned)."""
  tree = flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  paths = {_join(path): path for path in tree}
  params = {name: tree[path] for name, path in paths.items()}
  missing, misshaped, fresh = [], [], []
  for k, v in params.items():
    is_head = not k.startswith("transformer/")
    if k not in flat:
      (fresh if is_head else missing).append(k)
    elif tuple(flat[k].shape) != tuple(v.shape):
      msg = f"{k}: checkpoint {tuple(flat[k].shape)} -> model needs {tuple(v.shape)}"
      (fresh if is_head else misshaped).append(msg)
    else:
      params[k] = jnp.asarray(flat[k], dtype=v.dtype)
  unexpected = sorted(k for k in flat if k not in params and k.startswith("transformer/"))
  if missing or misshaped or unexpected:
    raise CheckpointMismatchError(
        f"{source}: checkpoint does not fit the model:\n  missing: {missing}\n  "
        f"mis-shaped: {misshaped}\n  unexpected: {unexpected}")
  tree = _materialize(model, {paths[k]: v for k, v in params.items()}, seed)
  nnx.update(model, _replace_params(model, unflatten_dict(tree)))
  if fresh:
    logging.warning("head weights freshly initialised: %s", fresh)
  return fresh


def from_pretrained(path: str, head: str | None = None, num_labels: int | None = None,
                    seed: int = 0, **config_overrides) -> SqueezeBert:
  """Load an HF directory, one of our model directories (float or int8), or a training
  workdir."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"from_pretrained: {path!r} is not a directory")
  from squeezebert.quant.core import INT8_CONFIG  # noqa: PLC0415
  if os.path.exists(os.path.join(path, INT8_CONFIG)):  # an int8 model (squeezebert.quant)
    if config_overrides:
      raise ValueError(f"{path} is an int8 model: config overrides {sorted(config_overrides)} "
                       "cannot apply")
    from squeezebert.quant import load_int8  # noqa: PLC0415
    return load_int8(path, head=head, num_labels=num_labels)
  if os.path.exists(os.path.join(path, OURS_CONFIG)):
    return load_ours(path, head, num_labels, seed, **config_overrides)
  if os.path.exists(os.path.join(path, "config.json")):
    return from_hf(path, head, num_labels, seed, **config_overrides)
  from squeezebert.train import checkpoint as ckpt  # a training workdir
  if ckpt.is_workdir(path):
    return ckpt.load_model_from_workdir(path, head=head, num_labels=num_labels,
                                        seed=seed, **config_overrides)
  raise FileNotFoundError(f"{path}: neither an HF checkpoint (config.json), one of ours "
                          f"({OURS_CONFIG}) nor a training workdir with checkpoints")



def is_hf_dir(path: str) -> bool:
  return (os.path.exists(os.path.join(path, "config.json"))
          and not os.path.exists(os.path.join(path, OURS_CONFIG)))
