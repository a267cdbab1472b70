"""Reading what `python -m squeezebert.data.prepare` wrote: the manifest, compatibility checks
and each process's shards (the writer and its CLI are in prepare.py; training imports only this).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

import numpy as np
from etils import epath

from squeezebert.data import pretraining
from squeezebert.data import tokenizer as tokenization
from squeezebert.data.batching import EncodedSplit

VERSION = 2
MANIFEST = "manifest.json"
VOCAB_FILE = "vocab.txt"
SHARD_KEYS = ("tokens", "lengths", "a_lengths", "labels", "doc")


def vocab_sha1(vocab: str | None = None) -> str:
  """sha1 of the vocab file `vocab` resolves to (tokenizer.resolve_vocab: the path, else
  $SQUEEZEBERT_VOCAB, else the packaged bert-base-uncased vocab)."""
  with open(tokenization.resolve_vocab(vocab), "rb") as f:
    return hashlib.sha1(f.read()).hexdigest()


# ------------------------------------------------------------------ manifest and reading
def read_manifest(out_dir: str) -> dict:
  """The manifest of the data prepared in `out_dir` (with "out_dir" added). Reading goes
  through epath: `out_dir` may be a local path or a URL such as gs://bucket/prepared."""
  path = epath.Path(out_dir) / MANIFEST
  if not path.exists():
    raise FileNotFoundError(f"no prepared pretraining data in {out_dir}: {MANIFEST} is missing "
                            "(run python -m squeezebert.data.prepare --out ... first)")
  try:
    m = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise ValueError(f"{path} is unreadable ({e}): prepare the data again with --overwrite")
  if m.get("version") != VERSION:
    raise ValueError(f"{path} has format version {m.get('version')!r}, this code reads "
                     f"version {VERSION}: prepare the data again with --overwrite")
  return dict(m, out_dir=out_dir)


def check_compatible(manifest: dict, *, max_len: int | None = None,
                     vocab_size: int | None = None, vocab_sha1: str | None = None,
                     shard_count: int = 1, splits: Iterable[str] = ()) -> None:
  """ValueError naming the mismatch when the prepared data cannot serve a run with this
  max_len and vocab, read as `shard_count` shards, or lacks (a complete) one of `splits`."""
  s, where = manifest["settings"], manifest["out_dir"]
  if max_len is not None and max_len != s["max_len"]:
    raise ValueError(
        f"{where} was packed to max_len={s['max_len']} but the run uses max_len={max_len}: "
        f"prepare again with --max_len {max_len} into another --out, or run with "
        f"--config.data.max_len={s['max_len']}")
  if (vocab_size is not None and vocab_size != s["vocab_size"]) or (
      vocab_sha1 is not None and vocab_sha1 != s["vocab_sha1"]):
    raise ValueError(
        f"{where} was tokenized with another vocab ({s['vocab_size']} tokens, sha1 "
        f"{s['vocab_sha1'][:12]}) than the run's ({vocab_size} tokens, sha1 "
        f"{(vocab_sha1 or '?')[:12]}): prepare again with --vocab set to the run's "
        "config.data.vocab")
  if not 1 <= shard_count <= s["num_shards"]:
    raise ValueError(
        f"{where} has {s['num_shards']} shards per split, too few to read as {shard_count} "
        f"shards (each reader takes whole shards): prepare again with --num_shards a multiple "
        f"of {shard_count}")
  for split in splits:
    _split_entry(manifest, split)


def _split_entry(manifest: dict, split: str) -> dict:
  where = manifest["out_dir"]
  entry = manifest["splits"].get(split)
  if entry is None:
    raise ValueError(f"{where} has no split {split!r} (it has {sorted(manifest['splits'])}): "
                     f"prepare it with --splits {split}")
  if not entry["complete"]:
    done = sum(1 for e in entry["shards"] if e)
    raise ValueError(f"{where}: split {split!r} is incomplete ({done} of "
                     f"{len(entry['shards'])} shards): rerun the prepare command to finish it")
  return entry


def share_sizes(manifest: dict, split: str, shard_count: int) -> list[int]:
  """Sequences in each of the `shard_count` shares of `split` (no limit), without reading."""
  entry = _split_entry(manifest, split)
  return [sum(e["sequences"] for j, e in enumerate(entry["shards"]) if j % shard_count == i)
          for i in range(shard_count)]


def read_shard(out_dir: str, entry: dict) -> dict:
  """One shard's arrays, checked against what the manifest says it holds."""
  path = epath.Path(out_dir) / entry["file"]
  rerun = "rerun the prepare command (same flags) to write it again"
  if not path.exists():
    raise FileNotFoundError(f"prepared shard {path} is missing: {rerun}")
  if (size := path.stat().length) != entry["bytes"]:
    raise ValueError(f"prepared shard {path} has {size} bytes, the manifest says "
                     f"{entry['bytes']}: {rerun}")
  try:
    with path.open("rb") as f, np.load(f) as z:
      a = {k: z[k] for k in SHARD_KEYS}
  except Exception as e:  # zipfile, pickle or key errors: an unreadable file
    raise ValueError(f"prepared shard {path} is unreadable ({type(e).__name__}: {e}): "
                     f"{rerun}") from e
  if len(a["lengths"]) != entry["sequences"] or int(a["lengths"].sum()) != len(a["tokens"]):
    raise ValueError(f"prepared shard {path} does not hold the manifest's {entry['sequences']} "
                     f"sequences: {rerun}")
  return a


def load_prepared(out_dir: str, split: str, shard_index: int = 0, shard_count: int = 1, *,
                  limit: int = 0) -> EncodedSplit:
  """Shards j of `split` with j % shard_count == shard_index, in shard order, as an
  EncodedSplit (labels: SOP label; token_extras word_start). idx is the sequence's number in
  the whole split. limit > 0 keeps the sequences of documents 0..limit-1 of the split (the
  documents load_documents(limit=limit) reads)."""
  m = read_manifest(out_dir)
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} outside [0, shard_count={shard_count})")
  check_compatible(m, shard_count=shard_count, splits=(split,))
  entries = m["splits"][split]["shards"]
  offsets = np.cumsum([0] + [e["sequences"] for e in entries])
  parts = []
  for j in range(shard_index, len(entries), shard_count):
    a = read_shard(out_dir, entries[j])
    a["idx"] = np.arange(offsets[j], offsets[j + 1], dtype=np.int64)
    if limit:
      keep = a["doc"] < limit
      a["tokens"] = a["tokens"][np.repeat(keep, a["lengths"])]
      a = dict(a, **{k: a[k][keep] for k in a if k != "tokens"})
    parts.append(a)
  a = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  # vocab.txt read through epath (out_dir may be a URL): line i is the piece of id i.
  lines = (epath.Path(out_dir) / VOCAB_FILE).read_text(encoding="utf-8").splitlines()
  cont = pretraining.continuation_table({t: i for i, t in enumerate(lines)})
  p = pretraining.to_padded(a, m["settings"]["max_len"], cont)
  idx = a["idx"].astype(np.int32 if offsets[-1] < 2**31 else np.int64)
  return EncodedSplit(p["input_ids"], p["token_type_ids"], a["lengths"],
                      a["labels"].astype(np.int32), idx, 0,
                      token_extras={"word_start": p["word_start"]})


# ------------------------------------------------------------------ preparing
