"""A training workdir: orbax checkpoints of model and optimizer state, and the run files.

Layout: <workdir>/run.json (model config, head, labels: what the workdir holds) and
<workdir>/checkpoints/<step>/{model, optimizer, meta}. Saves are atomic (orbax writes a
temporary directory and renames it), so a killed run never leaves a half-written checkpoint
behind as the latest one. The latest N are kept plus the best by the task's main metric.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from squeezebert.model import ModelConfig

RUN_FILE = "run.json"
TRAIN_CONFIG = "train_config.json"


def ckpt_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def is_workdir(path: str) -> bool:
  return os.path.exists(os.path.join(path, RUN_FILE)) and os.path.isdir(ckpt_dir(path))


def write_run_file(workdir: str, run: dict) -> None:
  """Record what this workdir trains; refuse to reuse a workdir that holds another model."""
  path = os.path.join(workdir, RUN_FILE)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if "model" in old and "model" in run:
      # Compare as ModelConfig: fields added since the workdir was written take their
      # defaults, and JSON lists equal tuples.
      old["model"] = ModelConfig(**old["model"]).architecture_dict()
      run = dict(run, model=ModelConfig(**run["model"]).architecture_dict())
    keys = ("model", "head", "num_labels", "task", "quant", "distill_projection")
    diff = [k for k in keys if old.get(k) != run.get(k)]
    if diff:
      raise ValueError(
          f"workdir {workdir} already holds a run with a different {', '.join(diff)} "
          f"(saved: { {k: old.get(k) for k in diff} }, now: { {k: run.get(k) for k in diff} }). "
          "Use a new --workdir; the existing checkpoints were left untouched.")
    return
  os.makedirs(workdir, exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(run, f, indent=2)
  os.replace(tmp, path)


def write_train_config(workdir: str, config) -> None:
  """The full config of the latest run in this workdir (TRAIN_CONFIG; not config.json, which
  would make the workdir look like an HF checkpoint): tools such as squeezebert.quant rebuild
  the task and its eval data from it."""
  path = os.path.join(workdir, TRAIN_CONFIG)
  text = config.to_json_best_effort(indent=2)
  if os.path.exists(path):
    with open(path) as f:
      if f.read() == text:  # a rerun of the same command writes nothing
        return
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def read_train_config(workdir: str):
  path = os.path.join(workdir, TRAIN_CONFIG)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found (workdirs written before it existed): pass the "
                            "run's config explicitly")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def read_run_file(workdir: str) -> dict:
  with open(os.path.join(workdir, RUN_FILE)) as f:
    return json.load(f)


class Checkpoints:
  def __init__(self, workdir: str, keep: int = 2, best_metric: str | None = None,
               best_mode: str = "max", read_only: bool = False):
    policies = [pp.LatestN(n=max(keep, 1))]
    if best_metric:
      sign = 1.0 if best_mode == "max" else -1.0
      policies.append(pp.BestN(get_metric_fn=lambda m: sign * m[best_metric], n=1,
                               keep_checkpoints_without_metrics=False))
    self.best_metric, self.best_mode = best_metric, best_mode
    options = ocp.CheckpointManagerOptions(
        preservation_policy=pp.AnyPreservationPolicy(policies),
        enable_async_checkpointing=False, cleanup_tmp_directories=True,
        read_only=read_only, create=not read_only)
    self.mngr = ocp.CheckpointManager(ckpt_dir(workdir), options=options,
                                      item_names=("model", "optimizer", "meta"))

  def latest_step(self) -> int | None:
    return self.mngr.latest_step()

  def best_step(self) -> int | None:
    return self.mngr.best_step() if self.best_metric else None

  def save(self, step: int, model_state, opt_state, meta: dict, metrics: dict | None = None):
    args = ocp.args.Composite(model=ocp.args.StandardSave(model_state),
                              optimizer=ocp.args.StandardSave(opt_state),
                              meta=ocp.args.JsonSave(meta))
    self.mngr.save(step, args=args, metrics=metrics, force=True)
    self.mngr.wait_until_finished()

  def restore(self, step: int, model_state, opt_state=None):
    """Restores into the structure (and shardings) of the given states."""
    abstract = lambda s: jax.tree.map(ocp.utils.to_shape_dtype_struct, s)
    items = dict(model=ocp.args.StandardRestore(abstract(model_state)),
                 meta=ocp.args.JsonRestore())
    if opt_state is not None:
      items["optimizer"] = ocp.args.StandardRestore(abstract(opt_state))
    try:
      out = self.mngr.restore(step, args=ocp.args.Composite(**items))
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(
          f"checkpoint {self.mngr.directory}/{step} does not match the model being built "
          f"(shape or structure mismatch): {e}. The checkpoint was not modified.") from e
    return out["model"], out.get("optimizer"), out["meta"]

  def close(self):
    self.mngr.close()
