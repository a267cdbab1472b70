"""SQuAD v1.1 extractive QA as a task of the one trainer (`config.task = "squad"`).

QA head (start/end logits). Each question becomes one or more windows (features); the loss is
the mean of the start and end cross-entropies (a window without the answer points at [CLS]).
Evaluation gathers every window's logits, decodes the n-best spans per question on the host and
scores them with the official v1.1 exact match / F1 (percentages).

With config.data.squad_train_articles > 0 the task trains on a part of SQuAD's dev set and
evaluates on the rest, split by article (see squeezebert.data.squad.split_articles): the splits
are then named 'dev_train' and 'dev_heldout'. With 0 it uses the official train/validation.
"""

from __future__ import annotations

import functools
import json
import os

import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from squeezebert.metrics import squad as metrics_squad
from squeezebert.data import batching
from squeezebert.data import squad
from squeezebert.data.sharding import shard_range
from squeezebert.data import tokenizer as tokenization
from squeezebert.tasks.common import lookup_split, split_base

DEV_TRAIN, DEV_HELDOUT = "dev_train", "dev_heldout"


class SquadTask:
  head = "qa"
  label_names = None
  num_labels = 2

  def __init__(self, config):
    self.config = config
    self.name = "squad"
    self.main_metric, self.metric_mode = "f1", "max"
    d = config.data
    self.train_articles = float(d.get("squad_train_articles", 0.0))
    if self.train_articles < 0:
      raise ValueError(f"config.data.squad_train_articles must be >= 0, got "
                       f"{self.train_articles}")
    for name in ("doc_stride", "max_query_len", "max_answer_len", "n_best_size"):
      if int(d.get(name, 1)) < 1:
        raise ValueError(f"config.data.{name} must be >= 1, got {d.get(name)}")
    if self.train_articles > 0:
      self.train_split, self.eval_splits = DEV_TRAIN, (DEV_HELDOUT,)
    else:
      self.train_split, self.eval_splits = "train", ("validation",)
    self.test_splits = self.eval_splits  # mode=predict writes <split>_predictions.json
    self._splits: dict = {}

  @functools.cached_property
  def tokenizer(self):
    return tokenization.load_tokenizer(self.config.data.vocab or None)

  def _source_examples(self, split: str) -> list:
    d = self.config.data
    return squad.load_examples(split, data_dir=d.tfds_data_dir or None, source=d.source,
                               squad_dir=d.get("squad_dir") or None,
                               download=d.get("download", True))

  @functools.cached_property
  def _dev_parts(self):
    train, held, titles = squad.split_articles(
        self._source_examples("validation"), self.train_articles,
        int(self.config.data.get("squad_split_seed", 0)))
    logging.info("squad: training on %d dev articles (%d questions), evaluating on the other "
                 "%d questions; training articles: %s", len(titles), len(train), len(held),
                 titles)
    return {DEV_TRAIN: train, DEV_HELDOUT: held}

  def check_data(self) -> str:
    """Where the data comes from ('tfds' | 'file'); downloads it if needed and allowed."""
    d = self.config.data
    return squad.resolve_source(d.tfds_data_dir or None, d.source, d.get("squad_dir") or None,
                                d.get("download", True))

  def examples(self, split: str) -> list:
    if split in (DEV_TRAIN, DEV_HELDOUT):
      if self.train_articles <= 0:
        raise ValueError(f"split {split!r} needs config.data.squad_train_articles > 0")
      ex = self._dev_parts[split]
    else:
      ex = self._source_examples(split)
    d = self.config.data
    limit = d.train_limit if split == self.train_split else d.eval_limit
    return ex[:limit] if limit > 0 else ex

  # Eval metrics map windows back to their question and context (host-side metadata of the
  # loaded split): eval splits are read whole by every process; training splits are sharded.
  eval_shardable = False

  def load(self, split: str, shard: tuple[int, int] | None = None) -> batching.EncodedSplit:
    """Windows of `split`'s questions (shard=(index, count): of that part of the questions
    only, featurized alone)."""
    d = self.config.data
    ex = self.examples(split)
    if shard is not None:
      a, b = shard_range(len(ex), *shard)
      ex = ex[a:b]
    feats = squad.featurize(self.tokenizer, ex, d.max_len, int(d.get("doc_stride", 128)),
                            int(d.get("max_query_len", 64)))
    logging.info("%s/%s: %d questions -> %d windows (max_len %d); %d questions truncated",
                 self.name, split, len(ex), len(feats), d.max_len,
                 feats.num_truncated_questions)
    base = split_base(self._splits, split)
    self._splits[split].update(examples=ex, feats=feats)
    n = len(feats)
    return batching.EncodedSplit(
        input_ids=feats.input_ids, token_type_ids=feats.token_type_ids, lengths=feats.lengths,
        labels=np.zeros((n,), np.int32), idx=(base + np.arange(n)).astype(np.int32),
        num_truncated=0,
        example_extras={"start_positions": feats.start_positions,
                        "end_positions": feats.end_positions})

  def _masked(self, logits, batch):
    return jnp.where(batch["attention_mask"] > 0, logits.astype(jnp.float32), squad.NEG)

  def loss(self, out, batch):
    w = batch["example_weight"]
    s, e = self._masked(out.start_logits, batch), self._masked(out.end_logits, batch)
    ls = optax.softmax_cross_entropy_with_integer_labels(s, batch["start_positions"])
    le = optax.softmax_cross_entropy_with_integer_labels(e, batch["end_positions"])
    hit = ((jnp.argmax(s, -1) == batch["start_positions"])
           & (jnp.argmax(e, -1) == batch["end_positions"])).astype(jnp.float32)
    denom = jnp.maximum(jnp.sum(w), 1.0)
    return jnp.sum((ls + le) * 0.5 * w) / denom, {"span_accuracy": jnp.sum(hit * w) / denom}

  def eval_outputs(self, out, batch):
    pad = self.config.data.max_len - batch["input_ids"].shape[1]
    padded = lambda x: jnp.pad(self._masked(x, batch), ((0, 0), (0, pad)),
                               constant_values=squad.NEG)
    return {"start_logits": padded(out.start_logits), "end_logits": padded(out.end_logits),
            "weight": batch["example_weight"], "idx": batch["idx"]}

  def predictions(self, c: dict):
    keep = c["weight"] > 0
    split, meta, local = lookup_split(self._splits, c["idx"][keep])
    d = self.config.data
    preds = squad.decode(meta["feats"], meta["examples"], local, c["start_logits"][keep],
                         c["end_logits"][keep], n_best_size=int(d.get("n_best_size", 20)),
                         max_answer_len=int(d.get("max_answer_len", 30)))
    return split, meta, preds

  def metrics(self, c: dict) -> dict:
    _, meta, preds = self.predictions(c)
    gold = {e.id: e.answers for e in meta["examples"]}
    return metrics_squad.squad_scores(gold, preds)

  def write_predictions(self, c: dict, split: str, out_dir: str) -> str:
    """The official predictions file: {question id: answer text}."""
    _, _, preds = self.predictions(c)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"squad_{split}_predictions.json")
    with open(path, "w", encoding="utf-8") as f:
      json.dump(dict(sorted(preds.items())), f, ensure_ascii=False, indent=0)
    return path
