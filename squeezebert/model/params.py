"""Parameters as flat '/'-joined dicts, and loading such a dict into a model.

The key format ('transformer/layers/0/attention/query/kernel') is that of our
model.safetensors files; `load_params_into` is how every loader (our dirs, workdirs, layer
surgery, int8 conversion) fills a model, with one error type for checkpoints that do not fit.
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
from safetensors.numpy import load_file

from squeezebert.model.config import ModelConfig
from squeezebert.model.model import SqueezeBert


class CheckpointMismatchError(ValueError):
  """A checkpoint whose encoder weights do not fit the model being built (names the keys)."""


def read_json(path: str) -> dict:
  """A JSON file of a checkpoint directory; a clear error naming it if it is not valid JSON."""
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointMismatchError(f"{path} is not valid JSON: {e}") from None


def write_files(out_dir: str, files: dict | None) -> None:
  """Writes {name: text} (e.g. the tokenizer files an export carries) into `out_dir`."""
  for name, text in (files or {}).items():
    with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
      f.write(text)


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """A safetensors file; a clear error naming it if it is truncated or not safetensors."""
  try:
    return load_file(path)
  except FileNotFoundError:
    raise
  except Exception as e:  # noqa: BLE001 (safetensors raises its own SafetensorError)
    raise CheckpointMismatchError(f"{path} is not a readable safetensors file ({e}): "
                                  "truncated or corrupt?") from None


def check_finite(arrays: dict, source: str) -> None:
  """Refuses weights holding NaN or inf (a diverged or corrupted checkpoint)."""
  bad = sorted(k for k, v in arrays.items()
               if np.issubdtype(np.asarray(v).dtype, np.floating)
               and not np.all(np.isfinite(np.asarray(v, np.float32))))
  if bad:
    raise CheckpointMismatchError(f"{source}: non-finite (NaN/inf) values in {len(bad)} "
                                  f"weight(s): {bad[:8]}{' ...' if len(bad) > 8 else ''}")


def join_path(path: tuple) -> str:
  # Paths hold ints (the nnx.List layer index): flatten_dict(sep="/") would reject them.
  return "/".join(str(p) for p in path)


def flat_params(model) -> dict[str, np.ndarray]:
  """Our parameters as {'transformer/layers/0/attention/query/kernel': array, ...}."""
  flat = flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  return {join_path(path): np.asarray(v) for path, v in flat.items()}


def abstract_model(cfg: ModelConfig, head: str, num_labels: int, seed: int = 0) -> SqueezeBert:
  """The model's structure only (nnx.eval_shape: no random init, nothing allocated). The
  loaders fill it from the checkpoint and initialise for real only what that lacks."""
  return nnx.eval_shape(lambda: SqueezeBert(cfg, head=head, num_labels=num_labels,
                                            rngs=nnx.Rngs(params=seed)))


def materialize(model: SqueezeBert, tree: dict, seed: int) -> dict:
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


def replace_params(model, pure: dict):
  """The model's Param state with the values of the nested pure dict `pure`."""
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, pure)
  return state


def load_params_into(model: SqueezeBert, flat: dict[str, np.ndarray], source: str = "",
                     seed: int = 0) -> list:
  """Load our '/'-joined param dict into `model`: encoder keys must match exactly; head keys
  that are absent or shaped for another label count are left fresh (returned)."""
  check_finite(flat, source or "checkpoint")
  tree = flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  paths = {join_path(path): path for path in tree}
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
  tree = materialize(model, {paths[k]: v for k, v in params.items()}, seed)
  nnx.update(model, replace_params(model, unflatten_dict(tree)))
  if fresh:
    logging.warning("head weights freshly initialised: %s", fresh)
  return fresh


def float_model(model) -> SqueezeBert:
  """A plain float SqueezeBert holding `model`'s parameters (itself if it already is one):
  e.g. a QAT model without its quantizers."""
  if type(model) is SqueezeBert and not hasattr(model, "distill_projection"):
    return model
  plain = abstract_model(model.config, model.head, model.num_labels)
  load_params_into(plain, flat_params(model))  # every parameter: nothing left abstract
  return plain
