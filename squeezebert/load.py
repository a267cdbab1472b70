"""Loading any model: `from_pretrained(path)` and a training workdir's model (one place).

`from_pretrained` reads, by what the directory holds:
  squeezebert_int8.json   an int8 model (squeezebert.quant)
  squeezebert_jax.json    one of our model directories (squeezebert.convert.ours)
  config.json             an HF checkpoint (squeezebert.convert.hf)
  run.json + checkpoints/ a training workdir: its best checkpoint by the task metric (the
                          latest if the task has none), or `step=` another one.
"""

from __future__ import annotations

import os

from flax import nnx
from flax.traverse_util import flatten_dict

from squeezebert import workdir as workdir_lib
from squeezebert.convert import hf, ours
from squeezebert.model import ModelConfig, SqueezeBert
from squeezebert.model import surgery
from squeezebert.model.params import (abstract_model, check_finite, flat_params, join_path,
                                      load_params_into)
from squeezebert.quant import core as quant_core
from squeezebert.quant.config import QuantConfig


def from_pretrained(path: str, head: str | None = None, num_labels: int | None = None,
                    seed: int = 0, step: int | str = "best", **config_overrides) -> SqueezeBert:
  """Load an HF directory, one of our model directories (float or int8), or a training
  workdir (its checkpoint `step`: "best" by the task metric, "latest", or a number).
  `head` / `num_labels` other than the checkpoint's keep the encoder and start a fresh head;
  `config_overrides` replace ModelConfig fields (dtype, dropout, ...)."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"from_pretrained: {path!r} is not a directory")
  if os.path.exists(os.path.join(path, quant_core.INT8_CONFIG)):
    if config_overrides:
      raise ValueError(f"{path} is an int8 model: config overrides {sorted(config_overrides)} "
                       "cannot apply")
    return quant_core.load_int8(path, head=head, num_labels=num_labels)
  if ours.is_ours_dir(path):
    return ours.load_ours(path, head, num_labels, seed, **config_overrides)
  if os.path.exists(os.path.join(path, "config.json")):
    return hf.from_hf(path, head, num_labels, seed, **config_overrides)
  if workdir_lib.is_workdir(path):
    return load_workdir(path, head=head, num_labels=num_labels, seed=seed, step=step,
                        **config_overrides)
  raise FileNotFoundError(f"{path}: neither an HF checkpoint (config.json), one of ours "
                          f"({ours.OURS_CONFIG}) nor a training workdir with checkpoints")


def workdir_step(workdir: str, step: int | str = "best") -> int:
  """The checkpoint step `step` names: "best" (by the task metric; the latest when the task
  has none), "latest", or a step number that must exist."""
  run = workdir_lib.read_run_file(workdir)
  ck = workdir_lib.Checkpoints(workdir, best_metric=run.get("best_metric"),
                               best_mode=run.get("best_mode", "max"), read_only=True)
  try:
    if not ck.saved():
      raise FileNotFoundError(f"{workdir}: no checkpoint saved yet")
    return ck.step(step)
  finally:
    ck.close()


def load_workdir(workdir: str, head: str | None = None, num_labels: int | None = None,
                 seed: int = 0, step: int | str = "best", as_trained: bool = False,
                 **config_overrides):
  """A workdir's model at checkpoint `step` (see workdir_step).

  The plain float model by default (a QAT run's parameters without its quantizers, a
  distilled student without its projection); `as_trained=True` returns the model as it was
  trained (a QAT model keeps its quantizers and static activation ranges) and no other head.
  """
  run = workdir_lib.read_run_file(workdir)
  step = workdir_step(workdir, step)
  cfg = ModelConfig(**{**run["model"], **config_overrides})
  saved = SqueezeBert(cfg, head=run["head"], num_labels=run["num_labels"],
                      rngs=nnx.Rngs(params=seed))
  if run.get("quant"):  # a QAT run: its checkpoints may hold activation ranges too
    saved = quant_core.quantize_for_training(saved, QuantConfig.from_dict(run["quant"]))
  if run.get("distill_projection"):  # trained with a hidden-state projection
    surgery.attach_projection(saved, run["distill_projection"], seed=seed)
  ck = workdir_lib.Checkpoints(workdir, read_only=True)
  try:
    model_state, _, _ = ck.restore(step, nnx.state(saved))
  finally:
    ck.close()
  check_finite({join_path(p): v for p, v in flatten_dict(nnx.to_pure_dict(model_state)).items()},
               f"{workdir} checkpoint {step}")
  nnx.update(saved, model_state)
  if as_trained:
    return saved
  model = saved
  if run.get("quant") or run.get("distill_projection"):  # the plain float model
    model = abstract_model(cfg, run["head"], run["num_labels"], seed)
    load_params_into(model, flat_params(saved), source=workdir)
  if (head or run["head"]) == run["head"] and (num_labels or run["num_labels"]) == run["num_labels"]:
    return model
  # A different head: copy the encoder, leave the new head fresh.
  other = SqueezeBert(cfg, head=head or run["head"], num_labels=num_labels or run["num_labels"],
                      rngs=nnx.Rngs(params=seed))
  load_params_into(other, flat_params(model), source=workdir)
  return other
