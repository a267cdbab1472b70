"""Optimizer from config: AdamW or LAMB, linear warmup + linear decay, clipping, no weight
decay on LayerNorm parameters and biases, and optionally frozen parameters."""

from __future__ import annotations

import jax
import optax
from flax import nnx

from squeezebert.model import surgery


OPTIMIZERS = ("adamw", "lamb")


def total_and_warmup_steps(config, steps_per_epoch: int) -> tuple[int, int]:
  """Durations converted to steps once: num_train_steps wins over num_epochs."""
  if config.num_train_steps > 0:
    total = int(config.num_train_steps)
  else:
    if config.num_epochs <= 0:
      raise ValueError("set config.num_train_steps > 0 or config.num_epochs > 0")
    total = max(1, int(round(config.num_epochs * steps_per_epoch)))
  if config.warmup_steps > 0:
    warmup = int(config.warmup_steps)
  else:
    if not 0.0 <= config.warmup_ratio < 1.0:
      raise ValueError(f"config.warmup_ratio must be in [0, 1), got {config.warmup_ratio}")
    warmup = int(config.warmup_ratio * total)
  return total, min(warmup, total)


def schedule(peak_lr: float, total: int, warmup: int) -> optax.Schedule:
  if peak_lr <= 0:
    raise ValueError(f"config.learning_rate must be > 0, got {peak_lr}")
  if warmup <= 0:  # no warmup: the first update already uses the peak rate
    return optax.linear_schedule(peak_lr, 0.0, max(total, 1))
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak_lr, warmup),
       optax.linear_schedule(peak_lr, 0.0, max(total - warmup, 1))], [warmup])


def decay_mask(params):
  """True where weight decay applies: kernels and embeddings, not LayerNorm or biases."""
  def keep(path, x):
    names = _path_names(path)
    is_ln = any("layer_norm" in n for n in names)
    return not (is_ln or names[-1] in ("bias", "scale") or x.ndim < 2)
  return jax.tree_util.tree_map_with_path(keep, params)


def _path_names(path) -> list[str]:
  return [str(getattr(p, "key", getattr(p, "name", p))) for p in path]


def path_fragments(config, field: str) -> tuple[str, ...]:
  """A comma-separated config string of parameter-path fragments, e.g. "word_embeddings"
  (a module or parameter name; matched against each '/'-joined path)."""
  spec = config.get(field, "") or ""
  if not isinstance(spec, str):
    raise ValueError(f"config.{field} must be a comma-separated string, got {spec!r}")
  return tuple(f.strip() for f in spec.split(",") if f.strip())


def frozen_fragments(config) -> tuple[str, ...]:
  """config.freeze_params: the parameters that get no updates."""
  return path_fragments(config, "freeze_params")


def frozen_labels(fragments):
  """params -> a tree of "frozen" / "train" labels; raises if a fragment matches nothing."""
  def labels(params):
    def joined(path):
      return "/".join(_path_names(path))
    paths = (joined(path) for path, _ in jax.tree_util.tree_leaves_with_path(params))
    hit = surgery.match_paths(paths, fragments, "freeze_params", "'word_embeddings', 'layers/0/'")
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "frozen" if joined(path) in hit else "train", params)
  return labels


def make_tx(config, total: int, warmup: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  lr = schedule(config.learning_rate, total, warmup)
  if config.optimizer == "adamw":
    core = optax.adamw(lr, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps,
                       weight_decay=config.weight_decay, mask=decay_mask)
  elif config.optimizer == "lamb":
    core = optax.lamb(lr, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps,
                      weight_decay=config.weight_decay, mask=decay_mask)
  else:
    raise ValueError(f"unknown config.optimizer {config.optimizer!r}; use 'adamw' or 'lamb'")
  if config.grad_clip_norm < 0:
    raise ValueError(f"config.grad_clip_norm must be >= 0, got {config.grad_clip_norm}")
  parts = [optax.clip_by_global_norm(config.grad_clip_norm)] if config.grad_clip_norm else []
  tx = optax.chain(*parts, core)
  fragments = frozen_fragments(config)
  if fragments:  # frozen params get zero updates, no decay, and no share of the clipping norm
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                               frozen_labels(fragments))
  return tx, lr


def make_optimizer(model, tx) -> nnx.Optimizer:
  return nnx.Optimizer(model, tx, wrt=nnx.Param)
