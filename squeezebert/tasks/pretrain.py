"""Pretraining task: masked LM + sentence-order prediction (SOP) for the one trainer.

Hooks the trainer's step uses besides the common task API (see tasks.py):
  prepare(batch, rng, train) -> batch   masks tokens inside the jitted step; eval batches get
                                        masks from a fixed key and the batch's example ids, so
                                        eval perplexity is the same at every evaluation.
  model_kwargs(batch) -> dict           masked_positions for the MLM head.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from squeezebert.data import prepared, pretraining, text_corpus
from squeezebert.data import tokenizer as tokenization
from squeezebert.tasks import masking

EVAL_MASK_SEED = 1234


def weighted_mean(x, w):
  return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)


class PretrainTask:
  name = "pretrain"
  head = "pretraining"
  label_names = None
  num_labels = 2
  main_metric, metric_mode = "perplexity", "min"
  train_split = "train"
  test_splits = ()

  def __init__(self, config):
    self.config = config
    p = config.get("pretrain")
    if p is None:
      raise ValueError("task=pretrain needs a config.pretrain section (see configs/pretrain.py)")
    if not 0.0 < p.mask_prob < 1.0:
      raise ValueError(f"config.pretrain.mask_prob must be in (0, 1), got {p.mask_prob}")
    if p.sop_weight < 0:
      raise ValueError(f"config.pretrain.sop_weight must be >= 0, got {p.sop_weight}")
    self.mlm_weight = p.get("mlm_weight", 1.0)  # workdirs older than the option: 1
    if self.mlm_weight < 0:
      raise ValueError(f"config.pretrain.mlm_weight must be >= 0, got {self.mlm_weight}")
    d = config.get("distill")
    has_teacher = bool(d and d.get("teacher") and d.get("hidden_weight", 0) > 0)
    if self.mlm_weight == 0 and p.sop_weight == 0 and not has_teacher:
      raise ValueError("config.pretrain.mlm_weight and sop_weight are both 0 and no teacher "
                       "gives hidden-state targets (distill.teacher, distill.hidden_weight > 0):"
                       " nothing to train on")
    self.p = p
    if self.mlm_weight == 0:
      # The MLM head is not trained, so its perplexity says nothing: keep (and load) the
      # latest checkpoint instead of the best by perplexity.
      self.main_metric = None
    self.eval_splits = (config.data.eval_split,)
    self._max_pred = p.max_predictions or masking.max_predictions(config.data.max_len,
                                                                  p.mask_prob)

  @functools.cached_property
  def tokenizer(self):
    return tokenization.load_tokenizer(self.config.data.vocab or None)

  @functools.cached_property
  def special_tokens(self) -> dict:
    """[MASK] / special / vocab ids for in-step masking (squeezebert.train.masking)."""
    return tokenization.special_token_ids(self.tokenizer)

  @property
  def prepared_dir(self) -> str:
    return self.config.data.get("prepared_dir", "")  # workdirs older than the option: ""

  def check_data(self) -> str:
    """The data is reachable: prepared shards that fit the run (data.prepared_dir), else the
    corpus: a local directory for text_corpus/*, else a TFDS dataset (prepared, or downloaded
    by TFDS when the training split is read)."""
    d = self.config.data
    if self.prepared_dir:
      m = self._prepared_manifest(1, (self.train_split, *self.eval_splits))
      return (f"prepared shards {self.prepared_dir} ({m['settings']['corpus']}, "
              f"{m['totals']['sequences']:,} sequences)")
    if d.corpus.startswith("text_corpus/") and not (d.corpus_dir and os.path.isdir(d.corpus_dir)):
      raise FileNotFoundError(f"config.data.corpus={d.corpus!r} reads a local directory: set "
                              f"--config.data.corpus_dir to a directory of text files (got "
                              f"{d.corpus_dir!r}), or --config.data.prepared_dir to shards "
                              "made by python -m squeezebert.data.prepare")
    return "tfds"

  def _prepared_manifest(self, shard_count: int, splits) -> dict:
    """The manifest of data.prepared_dir, checked against this run (max_len, vocab, shards)."""
    m = prepared.read_manifest(self.prepared_dir)
    prepared.check_compatible(
        m, max_len=self.config.data.max_len, vocab_size=self.tokenizer.get_vocab_size(),
        vocab_sha1=prepared.vocab_sha1(self.config.data.vocab or None), shard_count=shard_count,
        splits=splits)
    return m

  # Eval metrics are sums over the gathered outputs: eval splits can be sharded.
  eval_shardable = True

  def load(self, split: str, shard: tuple[int, int] | None = None):
    """Packed SOP sequences of `split`. shard=(index, count): document i of the split belongs to
    shard i % count. With data.prepared_dir, the prepared shards j with j % count == index are
    read (python -m squeezebert.data.prepare); else this shard's documents are tokenized and
    packed here (its own random stream; cached under data.cache_dir)."""
    d = self.config.data
    limit = d.train_limit if split == self.train_split else d.eval_limit
    index, count = shard or (0, 1)
    if self.prepared_dir:
      self._prepared_manifest(count, (split,))
      enc = prepared.load_prepared(self.prepared_dir, split, index, count, limit=limit)
      logging.info("pretrain/%s: %d sequences, %d tokens from %s (shard %d of %d)", split,
                   len(enc), int(enc.lengths.sum()), self.prepared_dir, index, count)
      return enc
    if jax.process_count() > 1 and split == self.train_split:
      logging.warning(
          "pretraining text is tokenized and packed by every process at start-up (its own "
          "share of %s); for multi-process runs prepare it once with python -m "
          "squeezebert.data.prepare --out DIR and pass --config.data.prepared_dir=DIR", d.corpus)
    docs = text_corpus.load_documents(d.corpus, split, data_dir=d.tfds_data_dir or None,
                                      corpus_dir=d.corpus_dir, limit=limit)
    seed = self.config.seed + (0 if split == self.train_split else 1)
    key = dict(corpus=d.corpus, dir=os.path.abspath(d.corpus_dir) if d.corpus_dir else "",
               split=split, limit=limit, vocab=self.config.data.vocab or "default")
    if count > 1:
      docs = (doc for i, doc in enumerate(docs) if i % count == index)
      seed = [seed, index]
      key["shard"] = [index, count]
    cache_dir = d.cache_dir or os.path.join(
        d.tfds_data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser(
            "~/tensorflow_datasets"), "squeezebert_cache")
    enc = pretraining.build_sop_split(docs, self.tokenizer, d.max_len, seed,
                                      cache_dir=cache_dir, cache_key=key)
    logging.info("pretrain/%s: %d sequences, %d tokens", split, len(enc), int(enc.lengths.sum()))
    return enc

  # ---- in-step hooks
  def prepare(self, batch, rng, train: bool):
    if not train:
      rng = jax.random.fold_in(jax.random.key(EVAL_MASK_SEED), batch["idx"][0])
    ids, pos, tgt, w = masking.mask_tokens(
        rng, batch["input_ids"], batch["attention_mask"], batch.get("word_start"),
        mask_prob=self.p.mask_prob, whole_word=self.p.whole_word,
        max_predictions_per_seq=self._max_pred, **self.special_tokens)
    w = w * batch["example_weight"][:, None]
    return dict(batch, input_ids=ids, unmasked_input_ids=batch["input_ids"],
                masked_positions=pos, mlm_targets=tgt, mlm_weights=w)

  def model_kwargs(self, batch):
    return {"masked_positions": batch["masked_positions"]}

  def _per_example(self, out, batch):
    logits = out.logits.astype(jnp.float32)
    tgt, w = batch["mlm_targets"], batch["mlm_weights"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tgt)
    correct = (jnp.argmax(logits, -1) == tgt).astype(jnp.float32)
    sop = out.sop_logits.astype(jnp.float32)
    sop_ce = optax.softmax_cross_entropy_with_integer_labels(sop, batch["labels"])
    sop_ok = (jnp.argmax(sop, -1) == batch["labels"]).astype(jnp.float32)
    return ce, correct, w, sop_ce, sop_ok

  def loss(self, out, batch):
    ce, correct, w, sop_ce, sop_ok = self._per_example(out, batch)
    ew = batch["example_weight"]
    mlm = weighted_mean(ce, w)
    sop = weighted_mean(sop_ce, ew)
    total = self.mlm_weight * mlm + self.p.sop_weight * sop
    return total, {"mlm_loss": mlm, "mlm_accuracy": weighted_mean(correct, w),
                   "sop_loss": sop, "sop_accuracy": weighted_mean(sop_ok, ew)}

  def eval_outputs(self, out, batch):
    ce, correct, w, _, sop_ok = self._per_example(out, batch)
    return {"mlm_loss_sum": jnp.sum(ce * w, 1), "mlm_correct": jnp.sum(correct * w, 1),
            "mlm_count": jnp.sum(w, 1), "sop_correct": sop_ok, "weight": batch["example_weight"]}

  def metrics(self, c: dict) -> dict:
    n = max(float(c["mlm_count"].sum()), 1.0)
    loss = float(c["mlm_loss_sum"].sum()) / n
    wsum = max(float(c["weight"].sum()), 1.0)
    return {"mlm_loss": loss, "perplexity": float(np.exp(min(loss, 50.0))),
            "mlm_accuracy": float(c["mlm_correct"].sum()) / n,
            "sop_accuracy": float((c["sop_correct"] * c["weight"]).sum()) / wsum}
