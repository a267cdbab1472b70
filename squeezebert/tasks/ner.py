"""CoNLL-2003 NER as a task of the one trainer (`config.task = "conll2003"`).

Token-classification head; the loss is cross-entropy over each word's first sub-token (the
others carry -100). Evaluation maps per-token argmax predictions back to words on the host and
scores them with squeezebert.metrics_ner (seqeval-equivalent entity P/R/F1, word accuracy).
"""

from __future__ import annotations

import functools
import os

import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from squeezebert.metrics import ner as metrics_ner
from squeezebert.data import batching
from squeezebert.data import conll
from squeezebert.data.sharding import shard_range
from squeezebert.data import tokenizer as tokenization
from squeezebert.tasks.common import lookup_split, split_base

class NerTask:
  head = "token"

  def __init__(self, config):
    self.config = config
    self.name = "conll2003"
    self.label_names = conll.LABEL_NAMES
    self.num_labels = len(self.label_names)
    self.main_metric, self.metric_mode = "f1", "max"
    self.train_split = "train"
    d = config.data
    self.eval_splits = tuple(d.get("eval_splits", ("dev",)) or ("dev",))
    self.test_splits = ("test",)
    for s in self.eval_splits:
      if s not in conll.SPLITS:
        raise ValueError(f"config.data.eval_splits: conll2003 has no split {s!r}; "
                         f"splits: {conll.SPLITS}")
    self._splits: dict = {}
    self._sentences: dict = {}

  @functools.cached_property
  def tokenizer(self):
    return tokenization.load_tokenizer(self.config.data.vocab or None)

  def check_data(self) -> str:
    """Where the data comes from ('tfds' | 'file'); downloads it if needed and allowed."""
    d = self.config.data
    return conll.resolve_source(d.tfds_data_dir or None, d.source, d.get("conll_dir") or None,
                                d.get("download", True))

  def sentences(self, split: str) -> dict:
    """conll.load_sentences() of `split` (read once per task object)."""
    if split not in self._sentences:
      d = self.config.data
      self._sentences[split] = conll.load_sentences(
          split, data_dir=d.tfds_data_dir or None, source=d.source,
          conll_dir=d.get("conll_dir") or None, tag_scheme=d.get("tag_scheme", "auto"),
          download=d.get("download", True))
    return self._sentences[split]

  # Eval metrics map token predictions back to each sentence's words (host-side metadata of
  # the loaded split): eval splits are read whole by every process; training splits are sharded.
  eval_shardable = False

  def load(self, split: str, shard: tuple[int, int] | None = None) -> batching.EncodedSplit:
    """Tokenized sentences of `split` (shard=(index, count): only that part, tokenized alone)."""
    d = self.config.data
    data = self.sentences(split)
    limit = d.train_limit if split == self.train_split else d.eval_limit
    words, tags = data["words"], data["tags"]
    if limit > 0:
      words, tags = words[:limit], tags[:limit]
    if shard is not None:
      a, b = shard_range(len(words), *shard)
      words, tags = words[a:b], tags[a:b]
    enc = conll.align_words(self.tokenizer, words, tags, d.max_len)
    if enc["num_truncated"]:
      logging.info("%s/%s: %d of %d sentences truncated to %d tokens (%d words lost, "
                   "predicted O)", self.name, split, enc["num_truncated"], len(words),
                   d.max_len, enc["num_lost_words"])
    base = split_base(self._splits, split)
    self._splits[split].update(words=words, tags=tags, word_pos=enc["word_pos"])
    n = len(words)
    return batching.EncodedSplit(
        input_ids=enc["input_ids"], token_type_ids=np.zeros_like(enc["input_ids"], np.int8),
        lengths=enc["lengths"], labels=np.zeros((n,), np.int32),
        idx=(base + np.arange(n)).astype(np.int32), num_truncated=enc["num_truncated"],
        token_extras={"tags": enc["labels"]}, extra_pad={"tags": conll.IGNORE})

  def loss(self, out, batch):
    logits = out.logits.astype(jnp.float32)
    tags = batch["tags"]
    mask = (tags != conll.IGNORE).astype(jnp.float32) * batch["example_weight"][:, None]
    safe = jnp.where(tags == conll.IGNORE, 0, tags)
    per_tok = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    denom = jnp.maximum(jnp.sum(mask), 1.0)
    acc = (jnp.argmax(logits, -1) == safe).astype(jnp.float32)
    return jnp.sum(per_tok * mask) / denom, {"accuracy": jnp.sum(acc * mask) / denom}

  def eval_outputs(self, out, batch):
    pred = jnp.argmax(out.logits, -1).astype(jnp.int32)
    pad = self.config.data.max_len - pred.shape[1]
    pred = jnp.pad(pred, ((0, 0), (0, pad)), constant_values=-1)  # fixed width to concatenate
    return {"pred": pred, "weight": batch["example_weight"], "idx": batch["idx"]}

  def word_predictions(self, c: dict):
    """(split, sentence numbers, word-level predicted label ids) of the collected outputs."""
    keep = c["weight"] > 0
    split, meta, local = lookup_split(self._splits, c["idx"][keep])
    preds = [conll.words_from_tokens(p, meta["word_pos"][s])
             for p, s in zip(c["pred"][keep], local)]
    return split, meta, local, preds

  def metrics(self, c: dict) -> dict:
    _, meta, local, preds = self.word_predictions(c)
    names = self.label_names
    y_true = [[names[t] for t in meta["tags"][s]] for s in local]
    y_pred = [[names[t] for t in p] for p in preds]
    return metrics_ner.ner_scores(y_true, y_pred)

  def write_predictions(self, c: dict, split: str, out_dir: str) -> str:
    """conlleval input: `word gold predicted` per line, a blank line between sentences."""
    _, meta, local, preds = self.word_predictions(c)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"conll2003_{split}.txt")
    names = self.label_names
    with open(path, "w", encoding="utf-8") as f:
      for s, p in sorted(zip(local.tolist(), preds), key=lambda x: x[0]):
        for w, t, q in zip(meta["words"][s], meta["tags"][s], p):
          f.write(f"{w} {names[t]} {names[q]}\n")
        f.write("\n")
    return path
