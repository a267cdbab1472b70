"""Tokenize a split once, then serve exactly-resumable, length-bucketed numpy batches.

The batch order of an epoch is a pure function of (seed, epoch, batch_size), computed from
indices only, so a resumed run jumps to batch `start_batch` without touching skipped data.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from squeezebert.data import tokenizer as tokenization
from squeezebert.data.glue import TaskSpec
from squeezebert.data.sharding import owned_shards, shard_range  # noqa: F401 (re-exported)

DEFAULT_BUCKETS = (32, 64, 128, 256, 512)
# Sort windows of this many batches by length: batches of similar lengths pad little, while the
# window keeps batch composition random across epochs.
SORT_WINDOW_BATCHES = 50


@dataclasses.dataclass
class EncodedSplit:
  """A tokenized split: ids padded to `max_len` (pad id 0) plus true lengths."""
  input_ids: np.ndarray       # [N, max_len] int32
  token_type_ids: np.ndarray  # [N, max_len] int8
  lengths: np.ndarray         # [N] int32
  labels: np.ndarray          # [N] int32 (float32 for regression)
  idx: np.ndarray             # [N] int32
  num_truncated: int
  # Task-specific arrays served in every batch under their own names (NER tags, QA spans...).
  # token_extras are [N, max_len] and sliced to the batch's bucket length like input_ids;
  # example_extras are [N, ...]. Rows that pad a short final batch get `extra_pad[name]` (0).
  token_extras: dict = dataclasses.field(default_factory=dict)
  example_extras: dict = dataclasses.field(default_factory=dict)
  extra_pad: dict = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return len(self.lengths)

  @property
  def max_len(self) -> int:
    return self.input_ids.shape[1]


def encode_examples(spec: TaskSpec, examples: dict, tokenizer, max_len: int = 128,
                    allow_empty: bool = False) -> EncodedSplit:
  """Tokenizes load_examples() output once; over-long inputs are truncated and counted."""
  enc = tokenization.encode(tokenizer, examples["text_a"], examples["text_b"], max_len,
                            allow_empty=allow_empty)
  n = len(enc["input_ids"])
  ids = np.zeros((n, max_len), np.int32)
  types = np.zeros((n, max_len), np.int8)
  lengths = np.zeros((n,), np.int32)
  for i, (a, t) in enumerate(zip(enc["input_ids"], enc["token_type_ids"])):
    ids[i, :len(a)], types[i, :len(t)], lengths[i] = a, t, len(a)
  labels = np.asarray(examples["label"], np.float32 if spec.is_regression else np.int32)
  return EncodedSplit(ids, types, lengths, labels, np.asarray(examples["idx"], np.int32),
                      enc["num_truncated"])


def num_batches(enc: EncodedSplit | int, batch_size: int, drop_remainder: bool) -> int:
  n = enc if isinstance(enc, int) else len(enc)
  return n // batch_size if drop_remainder else -(-n // batch_size)


def batch_order(enc: EncodedSplit, batch_size: int, *, shuffle: bool, seed: int = 0,
                epoch: int = 0, drop_remainder: bool, stream: int | None = None
                ) -> list[np.ndarray]:
  """Example indices of each batch of one epoch (one may be short unless drop_remainder).
  `stream` (a data shard's number) gives each shard of a split its own order."""
  n = len(enc)
  order = np.arange(n)
  if shuffle:
    rng = np.random.default_rng([seed, epoch] if stream is None else [seed, epoch, stream])
    order = rng.permutation(n)
    window = SORT_WINDOW_BATCHES * batch_size
    # Windows are whole batches, so only the final batch can be short.
    for s in range(0, n, window):
      chunk = order[s:s + window]
      order[s:s + window] = chunk[np.argsort(enc.lengths[chunk], kind="stable")]
  out = [order[i:i + batch_size] for i in range(0, n, batch_size)]
  if drop_remainder and out and len(out[-1]) < batch_size:
    out.pop()
  if shuffle:  # sorted windows -> random batch order
    out = [out[i] for i in rng.permutation(len(out))]
  return out


def _bucket_len(longest: int, boundaries, max_len: int) -> int:
  for b in boundaries or ():
    if b >= longest:
      return min(b, max_len)
  return max_len


def batches(enc: EncodedSplit, batch_size: int, *, shuffle: bool, seed: int = 0,
            epoch: int = 0, start_batch: int = 0, bucket_boundaries=DEFAULT_BUCKETS,
            drop_remainder: bool) -> Iterator[dict]:
  """Yields numpy batches of one epoch, from batch `start_batch` on.

  Every batch has exactly `batch_size` rows: a short final batch (drop_remainder=False) is padded
  with rows of example_weight 0, idx -1, label 0 and an all-zero attention_mask. Sequence length
  L is the smallest bucket boundary >= the batch's longest example (capped at enc.max_len;
  bucket_boundaries=None always pads to enc.max_len), so jit sees few distinct shapes.
  """
  order = batch_order(enc, batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
                      drop_remainder=drop_remainder)
  if not 0 <= start_batch <= len(order):
    raise ValueError(f"start_batch={start_batch} outside [0, {len(order)}]")
  for sel in order[start_batch:]:
    L = _bucket_len(int(enc.lengths[sel].max()), bucket_boundaries, enc.max_len)
    yield make_batch(enc, sel, batch_size, L)


def make_batch(enc: EncodedSplit, sel: np.ndarray, batch_size: int, L: int) -> dict:
  """The examples `sel` of `enc` as one batch of `batch_size` rows padded to length L (rows
  past len(sel) have example_weight 0, idx -1, label 0 and an all-zero attention_mask)."""
  real = len(sel)
  lengths = np.zeros((batch_size,), np.int32)
  lengths[:real] = enc.lengths[sel]
  batch = {
      "input_ids": np.zeros((batch_size, L), np.int32),
      "token_type_ids": np.zeros((batch_size, L), np.int32),
      "labels": np.zeros((batch_size,), enc.labels.dtype),
      "example_weight": np.zeros((batch_size,), np.float32),
      "idx": np.full((batch_size,), -1, np.int32),
  }
  batch["input_ids"][:real] = enc.input_ids[sel, :L]
  batch["token_type_ids"][:real] = enc.token_type_ids[sel, :L]
  batch["attention_mask"] = (np.arange(L)[None, :] < lengths[:, None]).astype(np.int32)
  batch["labels"][:real] = enc.labels[sel]
  batch["example_weight"][:real] = 1.0
  batch["idx"][:real] = enc.idx[sel]
  for name, arr in enc.token_extras.items():
    batch[name] = _padded_rows(arr[sel, :L], batch_size, enc.extra_pad.get(name, 0))
  for name, arr in enc.example_extras.items():
    batch[name] = _padded_rows(arr[sel], batch_size, enc.extra_pad.get(name, 0))
  return batch


def _padded_rows(rows: np.ndarray, batch_size: int, fill) -> np.ndarray:
  out = np.full((batch_size, *rows.shape[1:]), fill, rows.dtype)
  out[:len(rows)] = rows
  return out


def shard_batch_for_process(batch: dict, process_index: int, process_count: int) -> dict:
  """This process's contiguous slice of a global batch (every host builds the same global batch,
  so shapes, including the bucket length, agree across hosts)."""
  if process_count == 1:
    return batch
  b = len(next(iter(batch.values())))
  if b % process_count:
    raise ValueError(f"global batch {b} not divisible by process_count={process_count}")
  per = b // process_count
  return {k: v[process_index * per:(process_index + 1) * per] for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------
# Data shards: a split read as `count` contiguous parts, each process holding its own.


@dataclasses.dataclass
class Shards:
  """One split as `count` shards; this process holds `encs` (the shards `ids`). `sizes`: every
  shard's size, on every process. A global batch of B rows is B/count rows of each shard,
  concatenated in shard order, so the data order depends on `count`, not on how many
  processes share the shards."""
  encs: list
  ids: list
  count: int
  sizes: list

  def __len__(self) -> int:
    return int(sum(self.sizes))

  def per_shard(self, batch_size: int) -> int:
    if batch_size % self.count:
      raise ValueError(f"batch size {batch_size} must divide by config.data.shards="
                       f"{self.count}")
    return batch_size // self.count

  def train_steps_per_epoch(self, batch_size: int) -> int:
    per = self.per_shard(batch_size)
    return min(self.sizes) // per


def _agree_alone(x: np.ndarray) -> np.ndarray:
  return x


def train_batches(shards: Shards, batch_size: int, *, seed: int, epoch: int, start_batch: int,
                  bucket_boundaries=DEFAULT_BUCKETS, agree=_agree_alone) -> Iterator[dict]:
  """This process's rows of each training batch of one epoch, from batch `start_batch` on.
  One shard is exactly `batches(..., shuffle=True, drop_remainder=True)`. With several, each
  shard has its own order (stream = its number), epochs are as long as the smallest shard
  allows, and the padded length of a step is the longest any shard needs: `agree` maps this
  process's per-step lengths to the maximum over all processes (one exchange per epoch)."""
  if shards.count == 1:
    yield from batches(shards.encs[0], batch_size, shuffle=True, seed=seed, epoch=epoch,
                       start_batch=start_batch, bucket_boundaries=bucket_boundaries,
                       drop_remainder=True)
    return
  per = shards.per_shard(batch_size)
  steps = shards.train_steps_per_epoch(batch_size)
  orders = [batch_order(enc, per, shuffle=True, seed=seed, epoch=epoch, drop_remainder=True,
                        stream=s)[:steps] for enc, s in zip(shards.encs, shards.ids)]
  yield from _joined(shards, orders, per, start_batch, steps, bucket_boundaries, agree)


def eval_batches(shards: Shards, batch_size: int, *, bucket_boundaries=DEFAULT_BUCKETS,
                 agree=_agree_alone) -> Iterator[dict]:
  """This process's rows of each eval batch (every example once; short shards pad with
  weight-0 rows, so all processes run the same number of batches)."""
  if shards.count == 1:
    yield from batches(shards.encs[0], batch_size, shuffle=False, drop_remainder=False,
                       bucket_boundaries=bucket_boundaries)
    return
  per = shards.per_shard(batch_size)
  steps = max(-(-n // per) for n in shards.sizes)
  orders = [batch_order(enc, per, shuffle=False, drop_remainder=False)
            for enc in shards.encs]
  yield from _joined(shards, orders, per, 0, steps, bucket_boundaries, agree)


def _joined(shards, orders, per, start, steps, bucket_boundaries, agree):
  empty = np.zeros((0,), np.int64)
  sels = [[o[t] if t < len(o) else empty for o in orders] for t in range(steps)]
  need = np.array([max(_bucket_len(int(enc.lengths[sel].max()) if len(sel) else 0,
                                   bucket_boundaries, enc.max_len)
                       for enc, sel in zip(shards.encs, row)) for row in sels[start:]],
                  np.int32)
  lengths = agree(need)  # the same padded length on every process
  for t, L in zip(range(start, steps), lengths):
    parts = [make_batch(enc, sel, per, int(L)) for enc, sel in zip(shards.encs, sels[t])]
    yield {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
