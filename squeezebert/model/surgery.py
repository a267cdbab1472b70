"""Model surgery: a shallower copy of a deeper model (layer reduction), re-initialising
chosen parameters of a loaded model (`reinit`), and the learned hidden-state projection a
distillation student carries (`attach_projection`).

DistilBERT initialises its 6-layer student from layers [0, 2, 4, 7, 9, 11] of BERT-base;
`layer_indices("every_other", 12, 6)` returns exactly those (evenly spaced, first and last
kept); "first_k" keeps the bottom layers.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from squeezebert.model.model import SqueezeBert, build_model
from squeezebert.model.params import flat_params, load_params_into

INIT_LAYERS = ("first_k", "every_other")


def layer_indices(spec: str, n_src: int, n_dst: int) -> list[int]:
  """Which source layers a `n_dst`-layer copy takes: 'first_k', 'every_other' (evenly
  spaced incl. the first and last) or an explicit comma-separated list '0,2,4'."""
  if not 1 <= n_dst <= n_src:
    raise ValueError(f"cannot take {n_dst} layers from a {n_src}-layer model")
  if spec == "first_k":
    return list(range(n_dst))
  if spec == "every_other":
    if n_dst == 1:
      return [0]
    return [int(i) for i in np.round(np.linspace(0, n_src - 1, n_dst))]
  try:
    idx = [int(x) for x in spec.split(",") if x.strip()]
  except ValueError:
    raise ValueError(f"init_layers must be one of {INIT_LAYERS} or a list like '0,2,4', "
                     f"got {spec!r}") from None
  if len(idx) != n_dst or len(set(idx)) != n_dst or not all(0 <= i < n_src for i in idx):
    raise ValueError(f"init_layers {idx}: need {n_dst} distinct indices in [0, {n_src})")
  return idx


def select_layers(model: SqueezeBert, indices: list[int], seed: int = 0) -> SqueezeBert:
  """A new model with `len(indices)` layers: layer j is a copy of `model`'s layer
  indices[j]; embeddings, pooler and head are copied unchanged."""
  cfg = model.config
  if cfg.share_layers:
    raise ValueError("select_layers: a model with shared layers has one block; change "
                     "num_hidden_layers instead")
  src = flat_params(model)
  out = build_model(cfg.replace(num_hidden_layers=len(indices),
                                conv_layers=tuple(j for j, i in enumerate(indices)
                                                  if i in cfg.conv_layers)),
                    head=model.head, num_labels=model.num_labels, seed=seed)
  flat = {}
  for k, v in src.items():
    parts = k.split("/")
    if parts[:2] == ["transformer", "layers"]:
      i = int(parts[2])
      for j, want in enumerate(indices):
        if want == i:
          flat["/".join(parts[:2] + [str(j)] + parts[3:])] = v
    else:
      flat[k] = v
  load_params_into(out, flat, source="select_layers", seed=seed)
  return out


def match_paths(paths, fragments: tuple[str, ...], field: str, example: str) -> set[str]:
  """The '/'-joined parameter paths that contain one of `fragments` (config.freeze_params,
  config.reinit_params); a fragment matching no path raises, naming config.`field`, so a
  typo cannot silently do nothing."""
  paths = list(paths)
  missing = [f for f in fragments if not any(f in p for p in paths)]
  if missing:
    raise ValueError(f"config.{field}: {missing} match no parameter path of the model "
                     f"(e.g. {example})")
  return {p for p in paths if any(f in p for f in fragments)}


def reinit(model: SqueezeBert, fragments: tuple[str, ...], seed: int = 0) -> tuple[SqueezeBert, list[str]]:
  """A copy of `model` in which every parameter whose '/'-joined path contains one of
  `fragments` (e.g. "pooler", "layers/3/") takes the fresh init of `seed`; the rest is copied.
  Zhang et al. 2021 ("Revisiting Few-sample BERT Fine-tuning") re-initialise the pooler and
  top layers this way. Returns (model, the re-initialised paths); a fragment matching no
  parameter raises, so a typo cannot silently keep the pretrained weights."""
  src = flat_params(model)
  hit = sorted(match_paths(src, fragments, "reinit_params", "'pooler', 'layers/3/'"))
  out = build_model(model.config, head=model.head, num_labels=model.num_labels, seed=seed)
  fresh = flat_params(out)
  load_params_into(out, {k: fresh[k] if k in hit else v for k, v in src.items()},
                   source="reinit", seed=seed)
  return out, hit


PROJECTION_ATTR = "distill_projection"


class HiddenProjection(nnx.Module):
  """Student hidden states [..., Hs] -> the teacher's width [..., Ht] (one shared linear map)."""

  def __init__(self, student_hidden: int, teacher_hidden: int, *, rngs: nnx.Rngs):
    self.dense = nnx.Linear(student_hidden, teacher_hidden, rngs=rngs,
                            kernel_init=nnx.initializers.lecun_normal())

  def __call__(self, h):
    return self.dense(h.astype(jnp.float32))


def attach_projection(model, shape, seed: int = 0):
  """Adds a trainable HiddenProjection of `shape` = (Hs, Ht) to `model` (in place): hidden-
  state distillation to a teacher of another width. Workdirs record the shape (run.json)."""
  hs, ht = (int(x) for x in shape)
  if hs != model.config.hidden_size:
    raise ValueError(f"distill projection of width {hs} does not fit a student of hidden size "
                     f"{model.config.hidden_size}")
  setattr(model, PROJECTION_ATTR, HiddenProjection(hs, ht, rngs=nnx.Rngs(params=seed + 7)))
  return model


def projection_of(model):
  return getattr(model, PROJECTION_ATTR, None)
