"""Evaluation through the trainer's eval step: one loop for training-time evals, mode=eval /
predict, and every tool that scores a model (quantization, robustness)."""

from __future__ import annotations

import jax
import numpy as np
from absl import logging
from flax import nnx

from squeezebert.data import batching
from squeezebert.train import distributed, steps as steps_lib
from squeezebert.train.mesh import Mesh


class NoOptimizer(nnx.Module):
  """Stands in for the optimizer in the (model, optimizer) state the eval step expects."""


def collect(task, eval_step, state, mesh: Mesh, enc, batch_size: int, bucket_boundaries) -> dict:
  """The task's per-example eval outputs over one split, gathered on every process's host.
  `enc`: an EncodedSplit every process holds whole (each puts its share of every batch), or
  batching.Shards (each process holds and puts its own shards' rows)."""
  collected = []
  if isinstance(enc, batching.Shards):
    for batch in batching.eval_batches(enc, batch_size, bucket_boundaries=bucket_boundaries,
                                       agree=distributed.agree_max):
      collected.append(mesh.fetch(eval_step(state, mesh.put_batch(batch))))
    return {k: np.concatenate([c[k] for c in collected]) for k in collected[0]}
  for batch in batching.batches(enc, batch_size, shuffle=False, drop_remainder=False,
                                bucket_boundaries=bucket_boundaries):
    collected.append(mesh.fetch(eval_step(state, mesh.put_global_batch(batch))))
  return {k: np.concatenate([c[k] for c in collected]) for k in collected[0]}


def eval_splits(task, eval_step, state, mesh: Mesh, encs: dict, config) -> dict:
  """Metrics of every split in `encs` ('split/metric' keys when there are several)."""
  out = {}
  for split, enc in encs.items():
    c = collect(task, eval_step, state, mesh, enc, config.batch_size,
                tuple(config.data.bucket_boundaries))
    prefix = "" if len(encs) == 1 else f"{split}/"
    out.update({prefix + k: v for k, v in task.metrics(c).items()})
  return out


def evaluate_model(model, task, config, encs: dict | None = None) -> dict:
  """Dev metrics of `model` (float, QAT or int8) on the task's eval splits (or `encs`)."""
  mesh = Mesh()
  graphdef, state = nnx.split((model, NoOptimizer()))
  state = jax.device_put(state, mesh.replicated)
  eval_step = steps_lib.make_eval_step(graphdef, task)
  encs = encs if encs is not None else {s: task.load(s) for s in task.eval_splits}
  return eval_splits(task, eval_step, state, mesh, encs, config)


def predict_test_splits(task, model, config, out_dir: str) -> dict:
  """Writes the task's submission files for its test splits into `out_dir`."""
  mesh = Mesh()
  graphdef, state = nnx.split((model, NoOptimizer()))
  state = jax.device_put(state, mesh.replicated)
  eval_step = steps_lib.make_eval_step(graphdef, task)
  files = {}
  for split in task.test_splits:
    c = collect(task, eval_step, state, mesh, task.load(split), config.batch_size,
                tuple(config.data.bucket_boundaries))
    files[f"{split}_file"] = task.write_predictions(c, split, out_dir)
  if config.data.eval_limit:
    logging.warning("config.data.eval_limit=%d: the submission files hold only the first %d "
                    "test examples (a smoke run, not a valid submission)",
                    config.data.eval_limit, config.data.eval_limit)
  return files
