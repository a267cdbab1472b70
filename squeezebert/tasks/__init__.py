"""Tasks: what the one trainer needs to know about a task (data, head, loss, metrics).

A task provides: head, num_labels, main_metric (+ mode), splits, `load(split)` -> an
EncodedSplit-like object for `squeezebert.data.batching.batches`, `loss(out, batch)`,
`eval_outputs(out, batch)` (per-example arrays gathered on the host) and `metrics(collected)`.
Tasks with in-step work also have `prepare(batch, rng, train)` and `model_kwargs(batch)`
(pretraining's MLM masking). New tasks register in TASKS; the trainer stays the same.
"""

from __future__ import annotations

from squeezebert.data import glue as glue_data
from squeezebert.tasks.glue import MODEL_INPUTS, GlueTask  # noqa: F401 (re-export)
from squeezebert.tasks.ner import NerTask
from squeezebert.tasks.pretrain import PretrainTask
from squeezebert.tasks.squad import SquadTask

TASKS = {name: GlueTask for name in glue_data.TASKS}
TASKS["conll2003"] = NerTask   # token classification (tasks/ner.py)
TASKS["squad"] = SquadTask     # extractive QA (tasks/squad.py)
TASKS["pretrain"] = PretrainTask


def get_task(config):
  if config.task not in TASKS:
    raise ValueError(f"unknown task {config.task!r}; known: {sorted(TASKS)}")
  return TASKS[config.task](config)
