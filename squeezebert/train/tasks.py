"""Tasks: what the one trainer needs to know about a task (data, head, loss, metrics).

A task provides: head, num_labels, main_metric (+ mode), splits, `load(split)` -> an
EncodedSplit-like object for `squeezebert.data.batching.batches`, `loss(out, batch)`,
`eval_outputs(out, batch)` (per-example arrays gathered on the host) and `metrics(collected)`.
New tasks (MLM pretraining, NER, QA) register here; the trainer stays the same.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from squeezebert import metrics as metrics_lib
from squeezebert.data import batching, glue
from squeezebert.data import tokenizer as tokenization
from squeezebert.train import task_ner, task_qa
from squeezebert.train.task_pretrain import PretrainTask

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def weighted_mean(x, w):
  return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)


class GlueTask:
  def __init__(self, config):
    self.config = config
    self.spec = glue.get_task(config.task)
    self.name = self.spec.name
    self.head = "regression" if self.spec.is_regression else "classification"
    self.num_labels = self.spec.num_labels
    self.main_metric, self.metric_mode = self.spec.main_metric, "max"
    self.train_split = self.spec.train_split
    self.eval_splits, self.test_splits = self.spec.eval_splits, self.spec.test_splits

  @functools.cached_property
  def tokenizer(self):
    return tokenization.load_tokenizer(self.config.data.vocab or None)

  @functools.cached_property
  def special_tokens(self) -> dict:
    """[MASK] / special / vocab ids for in-step token corruption (distillation augmentation)."""
    return tokenization.special_token_ids(self.tokenizer)

  def load(self, split: str):
    """Tokenized examples of `split`. data.train_limit caps the training split; data.eval_limit
    caps every other split (eval AND test: smoke runs)."""
    d = self.config.data
    try:
      ex = glue.load_examples(self.spec, split, data_dir=d.tfds_data_dir or None,
                              source=d.source, tsv_dir=d.tsv_dir or None)
    except FileNotFoundError as e:
      raise FileNotFoundError(
          f"{e}\nGLUE data for {self.name}/{split} not found: set config.data.tfds_data_dir "
          f"(or ${glue.TFDS_DIR_ENV}) to a TFDS data dir holding {self.spec.tfds_name}, or "
          f"config.data.tsv_dir (or ${glue.GLUE_DIR_ENV}) to a download_glue_data.py output "
          "dir.") from e
    limit = d.train_limit if split == self.train_split else d.eval_limit
    if limit > 0:
      ex = {k: (v[:limit] if v is not None else None) for k, v in ex.items()}
    # Test sets are unlabeled and GLUE has a handful of empty test sentences: keep them
    # (they encode as [CLS] [SEP]); an empty training/dev sentence is a data error.
    allow_empty = split in self.test_splits
    if not allow_empty:
      for key in ("text_a", "text_b"):
        for i, t in enumerate(ex[key] or ()):
          if t is None or not str(t).strip():
            raise ValueError(f"{self.name}/{split}: empty {key} in the example with idx "
                             f"{int(ex['idx'][i])} (its data-row number); fix or drop it")
    enc = batching.encode_examples(self.spec, ex, self.tokenizer, d.max_len,
                                   allow_empty=allow_empty)
    if enc.num_truncated:
      logging.info("%s/%s: %d of %d examples truncated to %d tokens", self.name, split,
                   enc.num_truncated, len(enc), d.max_len)
    return enc

  def loss(self, out, batch):
    w = batch["example_weight"]
    if self.head == "regression":
      per_ex = jnp.square(out.logits[:, 0].astype(jnp.float32) - batch["labels"])
      return weighted_mean(per_ex, w), {}
    logits = out.logits.astype(jnp.float32)
    per_ex = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    acc = (jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32)
    return weighted_mean(per_ex, w), {"accuracy": weighted_mean(acc, w)}

  def eval_outputs(self, out, batch):
    logits = out.logits.astype(jnp.float32)
    pred = logits[:, 0] if self.head == "regression" else jnp.argmax(logits, -1)
    return {"pred": pred, "labels": batch["labels"], "weight": batch["example_weight"],
            "idx": batch["idx"]}

  def metrics(self, c: dict) -> dict:
    return metrics_lib.glue_metrics(self.name, c["pred"], c["labels"], c["weight"])

  def write_predictions(self, c: dict, split: str, out_dir: str) -> str:
    keep = c["weight"] > 0
    return metrics_lib.write_glue_submission(self.name, c["idx"][keep], c["pred"][keep],
                                             out_dir, split=split)


TASKS = {name: GlueTask for name in glue.TASKS}
# Token classification and extractive QA (task_ner.py, task_qa.py).
TASKS["conll2003"] = task_ner.NerTask
TASKS["squad"] = task_qa.QaTask
TASKS["pretrain"] = PretrainTask


def get_task(config):
  if config.task not in TASKS:
    raise ValueError(f"unknown task {config.task!r}; known: {sorted(TASKS)}")
  return TASKS[config.task](config)
