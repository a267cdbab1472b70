"""GLUE tasks for the trainer: data, classification/regression head, loss, official metrics
and the GLUE server's submission files."""

from __future__ import annotations

import functools
import os

import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from squeezebert.data import batching
from squeezebert.data import glue as glue_data
from squeezebert.data import tokenizer as tokenization
from squeezebert.metrics import glue as metrics_glue

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def weighted_mean(x, w):
  return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)


def glue_metrics(task_name: str, predictions, labels, weights=None) -> dict[str, float]:
  """The task's official GLUE metrics plus 'combined' (their mean, the GLUE task score).
  predictions: class ids or [N, C] logits (classification), scores or [N, 1] (STS-B)."""
  spec = glue_data.get_task(task_name)
  return metrics_glue.compute(spec.metrics, predictions, labels, weights,
                              regression=spec.is_regression)


def write_glue_submission(task_name: str, idx, predictions, out_dir: str,
                          split: str | None = None) -> str:
  """Writes the GLUE server's <TASK>.tsv (`index<TAB>prediction`, sorted by index); returns path.

  Predictions are label names for NLI tasks (MNLI, QNLI, RTE, AX), 0/1 for CoLA, SST-2, MRPC,
  QQP and WNLI, and scores with 3 decimals clipped to [0, 5] for STS-B. `split` picks the
  file for tasks with several test splits (MNLI: test_matched / test_mismatched).
  """
  spec = glue_data.get_task(task_name)
  if split is None:
    if len(spec.test_splits) != 1:
      raise ValueError(f"{spec.name} has several test splits; pass split=, one of "
                       f"{spec.test_splits}")
    split = spec.test_splits[0]
  preds = metrics_glue.to_predictions(predictions, spec.is_regression)
  idx = np.asarray(idx).reshape(-1)
  if len(idx) != len(preds):
    raise ValueError(f"{len(idx)} indices but {len(preds)} predictions")
  if len(np.unique(idx)) != len(idx):
    raise ValueError("duplicate indices: was batch padding (idx -1) filtered out?")
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, spec.submission_file(split))
  with open(path, "w") as f:
    f.write("index\tprediction\n")
    for i in np.argsort(idx, kind="stable"):
      if spec.is_regression:
        value = f"{float(np.clip(preds[i], 0.0, 5.0)):.3f}"
      elif spec.submit_label_names:
        value = spec.label_names[int(preds[i])]
      else:
        value = str(int(preds[i]))
      f.write(f"{int(idx[i])}\t{value}\n")
  return path


class GlueTask:
  def __init__(self, config):
    self.config = config
    self.spec = glue_data.get_task(config.task)
    self.name = self.spec.name
    self.head = "regression" if self.spec.is_regression else "classification"
    self.num_labels = self.spec.num_labels
    self.label_names = tuple(self.spec.label_names) or None  # None: regression
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

  def check_data(self) -> str:
    """Where the data comes from ('tfds' | 'tsv'); downloads and prepares it with TFDS if
    needed and allowed (glue.resolve_source)."""
    d = self.config.data
    return glue_data.resolve_source(self.spec, d.tfds_data_dir or None, d.source,
                                    d.tsv_dir or None, d.get("download", True))

  # Eval metrics need only the gathered per-example outputs: eval splits can be sharded.
  eval_shardable = True

  def load(self, split: str, shard: tuple[int, int] | None = None):
    """Tokenized examples of `split` (shard=(index, count): only that part, read and tokenized
    alone). data.train_limit caps the training split; data.eval_limit caps every other split
    (eval AND test: smoke runs)."""
    d = self.config.data
    limit = d.train_limit if split == self.train_split else d.eval_limit
    ex = glue_data.load_examples(self.spec, split, data_dir=d.tfds_data_dir or None,
                                 source=self.check_data(), tsv_dir=d.tsv_dir or None,
                                 shard=shard, limit=limit)
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
    return glue_metrics(self.name, c["pred"], c["labels"], c["weight"])

  def write_predictions(self, c: dict, split: str, out_dir: str) -> str:
    keep = c["weight"] > 0
    return write_glue_submission(self.name, c["idx"][keep], c["pred"][keep],
                                             out_dir, split=split)
