"""HF checkpoints (SqueezeBERT / BERT): config and weight mapping in both directions.

`from_hf(dir)` reads an HF directory (config.json + model.safetensors or pytorch_model.bin,
the latter without pickle code execution); `export_hf(model, dir)` writes one that
`transformers` loads with from_pretrained. The per-weight mapping is in `names`.
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors.numpy import save_file

from squeezebert.convert import names
from squeezebert.convert.ours import OURS_CONFIG
from squeezebert.convert.torch_zip import load_torch_bin
from squeezebert.model import ModelConfig, SqueezeBert
from squeezebert.model.params import (CheckpointMismatchError, abstract_model, check_finite,
                                      materialize, read_json, read_safetensors, replace_params,
                                      write_files)

_HF_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "intermediate_size", "hidden_act", "hidden_dropout_prob",
              "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
              "initializer_range", "layer_norm_eps", "pad_token_id")
_GROUP_FIELDS = ("q_groups", "k_groups", "v_groups", "post_attention_groups",
                 "intermediate_groups", "output_groups")


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
    d["problem_type"] = {"regression": "regression",
                         "classification": "single_label_classification"}.get(head)
    if d["problem_type"] is None:
      del d["problem_type"]
  return d


def read_hf_weights(path: str) -> dict[str, np.ndarray]:
  st, pt = os.path.join(path, "model.safetensors"), os.path.join(path, "pytorch_model.bin")
  if os.path.exists(st):
    return read_safetensors(st)
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
  check_finite(sd, "HF checkpoint")
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
  nnx.update(model, replace_params(model, unflatten_dict(materialize(model, params, seed))))
  if fresh:
    logging.warning("head/pooler weights freshly initialised (not in the checkpoint or a "
                    "different shape): %s", fresh)
  return fresh


def from_hf(path: str, head: str | None = None, num_labels: int | None = None, seed: int = 0,
            **config_overrides) -> SqueezeBert:
  cfg_path = os.path.join(path, "config.json")
  hf = read_json(cfg_path)
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
  model = abstract_model(cfg, head, num_labels, seed)
  load_hf_state(model, read_hf_weights(path), seed=seed)
  return model


def export_hf(model: SqueezeBert, out_dir: str, id2label: dict | None = None,
              vocab_file: str | None = None, files: dict | None = None) -> str:
  """An HF directory of `model`: config.json (with id2label / label2id / problem_type),
  model.safetensors, and `files` ({name: text}: the tokenizer files, see
  squeezebert.data.tokenizer.tokenizer_files) or just `vocab_file` copied as vocab.txt."""
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
  write_files(out_dir, files)
  return out_dir


def is_hf_dir(path: str) -> bool:
  return (os.path.exists(os.path.join(path, "config.json"))
          and not os.path.exists(os.path.join(path, OURS_CONFIG)))
