"""Pretraining text prepared once, offline, into shards that each process reads by index.

  python -m squeezebert.data.prepare --corpus_dir DIR --out OUT [--num_shards 64 --max_len 128]

Documents of each split (text_corpus.load_documents: a TFDS text dataset, or text_corpus/<fmt>
for a local directory) go to shards by index: document i of a split to shard i % num_shards. One
pass writes each shard's documents to a temporary JSON-lines file; then each shard is tokenized
and packed on its own (ALBERT's SOP packing, pretraining.create_sop_pairs, seeded by (seed,
split, shard)), so memory holds one shard at a time, never the corpus. Layout:

  OUT/manifest.json                        settings, per-shard counts, totals, wall time
  OUT/<split>/shard-00003-of-00064.npz     input_ids (uint16 when the vocab fits), token_type_ids
                                           and word_start (int8), lengths (int32), labels (int8)

Every file is written to a temporary name and renamed, and the manifest lists a shard only once
its file is complete, so a killed run rerun with the same command finishes the job, rewriting
only missing shards. Different settings in the same OUT are refused (naming the differences)
unless --overwrite is given.

Reading: load_prepared(OUT, split, shard_index, shard_count) -> EncodedSplit with the shards j
where j % shard_count == shard_index, idx = the sequence's number in the whole split (unique
across shards); read_manifest and check_compatible check a run against what was prepared.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import itertools
import json
import logging as py_logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np
from absl import app, flags

from squeezebert import workdir as workdir_lib
from squeezebert.data import pretraining, text_corpus
from squeezebert.data import tokenizer as tokenization
from squeezebert.data.batching import EncodedSplit

VERSION = 1
MANIFEST = "manifest.json"
DOCS_DIR = ".docs"           # <split>/.docs: the documents of each shard before packing
DOCS_DONE = "complete.json"  # written once every document of the split has been distributed
PACKING = "albert-sop"       # pretraining.create_sop_pairs, short_seq_prob 0.1
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_FLUSH_BYTES = 32 << 20      # per-shard document buffers are appended to disk past this size
_ENCODE_DOCS = 256           # documents tokenized per encode_batch call


# ------------------------------------------------------------------ names and settings
def shard_name(index: int, num_shards: int) -> str:
  return f"shard-{index:05d}-of-{num_shards:05d}.npz"


def shard_seed(seed: int, split: str, index: int) -> int:
  """The packing seed of one shard: a function of (seed, split, shard) only."""
  h = hashlib.sha256(f"{seed}/{split}/{index}".encode()).digest()
  return int.from_bytes(h[:8], "little")


def vocab_fingerprint(vocab: str | None = None) -> dict:
  """{file, sha1} of the WordPiece vocab `vocab` resolves to (tokenizer.resolve_vocab:
  the path, else $SQUEEZEBERT_VOCAB, else the packaged bert-base-uncased vocab)."""
  path = tokenization.resolve_vocab(vocab)
  with open(path, "rb") as f:
    data = f.read()
  return {"file": os.path.abspath(path), "sha1": hashlib.sha1(data).hexdigest()}


def _settings(corpus, corpus_dir, vocab_info, vocab_size, max_len, seed, num_shards, limit):
  return {"version": VERSION, "corpus": corpus,
          "corpus_dir": os.path.abspath(corpus_dir) if corpus_dir else "",
          "vocab": dict(vocab_info, size=vocab_size),
          "tokenizer": {"type": "bert-wordpiece", "lowercase": True},
          "packing": PACKING, "max_len": max_len, "seed": seed, "num_shards": num_shards,
          "limit": limit}


def _comparable(settings: dict) -> dict:
  """The settings that change the data (the vocab by content and size, not by path)."""
  out = {k: v for k, v in settings.items() if k != "vocab"}
  v = settings.get("vocab") or {}
  out["vocab size"], out["vocab sha1"] = v.get("size"), v.get("sha1")
  return out


def settings_differences(prepared: dict, wanted: dict) -> list[str]:
  a, b = _comparable(prepared), _comparable(wanted)
  return [f"{k}: {a.get(k)!r} prepared, {b.get(k)!r} now" for k in sorted(a.keys() | b.keys())
          if a.get(k) != b.get(k)]


# ------------------------------------------------------------------ manifest
def read_manifest(out_dir: str) -> dict:
  """The manifest of prepared data in `out_dir` (ValueError / FileNotFoundError if absent or
  unreadable)."""
  path = os.path.join(out_dir, MANIFEST)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no prepared pretraining data in {out_dir}: {MANIFEST} is missing "
                            "(run python -m squeezebert.data.prepare --out ... first)")
  try:
    with open(path) as f:
      m = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path} is unreadable ({e}): prepare the data again with --overwrite")
  if m.get("version") != VERSION:
    raise ValueError(f"{path} has format version {m.get('version')!r}; this code reads "
                     f"version {VERSION}: prepare the data again with --overwrite")
  return m


def _write_manifest(out_dir: str, m: dict) -> None:
  splits = m["splits"]
  for s in splits.values():
    done = [e for e in s["shards"] if e]
    s["complete"] = len(done) == len(s["shards"])
    for key in ("documents", "sequences", "tokens", "bytes"):
      s[key] = sum(e[key] for e in done)
  m["totals"] = {key: sum(s[key] for s in splits.values())
                 for key in ("documents", "sequences", "tokens", "bytes")}
  path = os.path.join(out_dir, MANIFEST)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(m, f, indent=1)
    f.write("\n")
  os.replace(tmp, path)


def check_compatible(manifest: dict, max_len: int, vocab_size: int, *,
                     vocab_sha1: str | None = None, shard_count: int = 1,
                     splits: Iterable[str] = ()) -> None:
  """Raises ValueError when data prepared as `manifest` cannot serve a run with this max_len,
  vocab and number of reading processes, or lacks (a complete) one of `splits`."""
  s = manifest["settings"]
  where = manifest.get("out_dir", "the prepared data")
  if max_len != s["max_len"]:
    raise ValueError(
        f"{where} was packed to max_len={s['max_len']} but the run uses max_len={max_len}: "
        f"packing fills sequences to max_len, so prepare again with --max_len {max_len} (into "
        "another --out) or run at the prepared length")
  v = s["vocab"]
  if vocab_size != v["size"] or (vocab_sha1 and vocab_sha1 != v["sha1"]):
    raise ValueError(
        f"{where} was tokenized with another vocab ({v['file']}: {v['size']} tokens, sha1 "
        f"{v['sha1'][:12]}) than the run's ({vocab_size} tokens"
        + (f", sha1 {vocab_sha1[:12]}" if vocab_sha1 else "") + "): prepare again with --vocab")
  if shard_count < 1:
    raise ValueError(f"shard_count must be >= 1, got {shard_count}")
  if s["num_shards"] < shard_count:
    raise ValueError(
        f"{where} has {s['num_shards']} shards per split, fewer than the {shard_count} "
        "processes reading it (each process reads whole shards): prepare again with "
        f"--num_shards >= {shard_count} (a multiple of it keeps the shares even)")
  for split in splits:
    _split_entry(manifest, split)


def _split_entry(manifest: dict, split: str) -> dict:
  where = manifest.get("out_dir", "the prepared data")
  entry = manifest["splits"].get(split)
  if entry is None:
    raise ValueError(f"{where} has no split {split!r} (it has {sorted(manifest['splits'])}): "
                     f"prepare it with --splits {split}")
  if not all(entry["shards"]):
    done = sum(1 for e in entry["shards"] if e)
    raise ValueError(f"{where}: split {split!r} is incomplete ({done} of "
                     f"{len(entry['shards'])} shards): rerun the prepare command to finish it")
  return entry


def share_sizes(manifest: dict, split: str, shard_count: int) -> list[int]:
  """Sequences each of `shard_count` processes reads from `split` (without reading shards)."""
  entry = _split_entry(manifest, split)
  return [sum(e["sequences"] for j, e in enumerate(entry["shards"]) if j % shard_count == i)
          for i in range(shard_count)]


# ------------------------------------------------------------------ reading
def load_prepared(out_dir: str, split: str, shard_index: int = 0,
                  shard_count: int = 1) -> EncodedSplit:
  """This process's share of a prepared split: shards j with j % shard_count == shard_index,
  concatenated in shard order. idx is the sequence's number in the whole split (shard offsets
  from the manifest), so it is unique across processes; ids are int32 in memory."""
  m = read_manifest(out_dir)
  m["out_dir"] = out_dir
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} outside [0, shard_count={shard_count})")
  check_compatible(m, m["settings"]["max_len"], m["settings"]["vocab"]["size"],
                   shard_count=shard_count, splits=(split,))
  max_len = m["settings"]["max_len"]
  entries = _split_entry(m, split)["shards"]
  offsets = np.cumsum([0] + [e["sequences"] for e in entries])
  mine = [j for j in range(len(entries)) if j % shard_count == shard_index]
  n = sum(entries[j]["sequences"] for j in mine)
  ids = np.zeros((n, max_len), np.int32)
  types = np.zeros((n, max_len), np.int8)
  word_start = np.zeros((n, max_len), np.int8)
  lengths = np.zeros((n,), np.int32)
  labels = np.zeros((n,), np.int32)
  idx = np.zeros((n,), np.int32 if offsets[-1] < 2**31 else np.int64)
  row = 0
  for j in mine:
    e = entries[j]
    a = read_shard(os.path.join(out_dir, e["file"]), e["sequences"], max_len, e.get("bytes"))
    k = e["sequences"]
    ids[row:row + k] = a["input_ids"]
    types[row:row + k] = a["token_type_ids"]
    word_start[row:row + k] = a["word_start"]
    lengths[row:row + k] = a["lengths"]
    labels[row:row + k] = a["labels"]
    idx[row:row + k] = np.arange(offsets[j], offsets[j] + k)
    row += k
  return EncodedSplit(ids, types, lengths, labels, idx, 0, token_extras={"word_start": word_start})


_SHARD_KEYS = ("input_ids", "token_type_ids", "lengths", "labels", "word_start")


def read_shard(path: str, sequences: int, max_len: int, size: int | None = None) -> dict:
  """One shard's arrays, checked against what the manifest says it holds."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"prepared shard {path} is missing: rerun the prepare command (same "
                            "flags) to write it again")
  if size is not None and os.path.getsize(path) != size:
    raise ValueError(f"prepared shard {path} is corrupt ({os.path.getsize(path)} bytes, the "
                     f"manifest says {size}): rerun the prepare command to write it again")
  try:
    with np.load(path) as z:
      a = {k: z[k] for k in _SHARD_KEYS}
  except Exception as e:  # zipfile / pickle / KeyError: any unreadable file
    raise ValueError(f"prepared shard {path} is corrupt ({type(e).__name__}: {e}): rerun the "
                     "prepare command to write it again") from e
  if a["input_ids"].shape != (sequences, max_len) or len(a["lengths"]) != sequences:
    raise ValueError(f"prepared shard {path} holds {a['input_ids'].shape} ids, the manifest "
                     f"says ({sequences}, {max_len}): rerun the prepare command")
  return a


# ------------------------------------------------------------------ packing
def pack_documents(documents: Iterable[str], tokenizer, max_len: int, seed: int) -> tuple[dict, int]:
  """(arrays, documents packed): build_sop_split's sequences, streamed (documents are tokenized
  in batches and rows kept in compact arrays, so a large shard holds no token lists), with
  compact dtypes: uint16 ids when the vocab fits, int8 types / word_start / labels."""
  cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
  id_dtype = np.uint16 if tokenizer.get_vocab_size() <= 65536 else np.int32
  n_docs = 0

  def tokenized():
    nonlocal n_docs
    it = iter(documents)
    while chunk := list(itertools.islice(it, _ENCODE_DOCS)):
      sents = [pretraining.split_sentences(d) for d in chunk]
      flat = [s for ss in sents for s in ss]
      enc = tokenizer.encode_batch(flat, add_special_tokens=False) if flat else []
      pos = 0
      for ss in sents:
        if ss:
          n_docs += 1
          yield [e.ids for e in enc[pos:pos + len(ss)]]
          pos += len(ss)

  blocks, cur, fill = [], None, 0
  block = 4096

  def new_block():
    return dict(input_ids=np.zeros((block, max_len), id_dtype),
                token_type_ids=np.zeros((block, max_len), np.int8),
                lengths=np.zeros((block,), np.int32), labels=np.zeros((block,), np.int8))

  for a, b, swapped in pretraining.create_sop_pairs(tokenized(), max_len, seed):
    if cur is None or fill == block:
      if cur is not None:
        blocks.append(cur)
      cur, fill = new_block(), 0
    seq = [cls_id, *a, sep_id, *b, sep_id]
    cur["input_ids"][fill, :len(seq)] = seq
    cur["token_type_ids"][fill, len(a) + 2:len(seq)] = 1
    cur["lengths"][fill], cur["labels"][fill] = len(seq), int(swapped)
    fill += 1
  if cur is not None:
    blocks.append({k: v[:fill] for k, v in cur.items()})
  if blocks:
    arrays = {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
  else:
    arrays = {k: v[:0] for k, v in new_block().items()}
  cont = pretraining.continuation_table(tokenizer)
  arrays["word_start"] = (~cont[arrays["input_ids"]]).astype(np.int8)
  return arrays, n_docs


def _save_npz(path: str, arrays: dict) -> int:
  tmp = path + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)
  return os.path.getsize(path)


# ------------------------------------------------------------------ preparing
@dataclasses.dataclass
class _Bar:
  """A tqdm bar, or nothing when progress is off."""
  total: int | None
  desc: str
  unit: str
  enabled: bool

  def __post_init__(self):
    self.bar = None
    if self.enabled:
      from tqdm import tqdm  # lazy: only commands with progress bars need it
      self.bar = tqdm(total=self.total, desc=self.desc, unit=self.unit, dynamic_ncols=True,
                      unit_scale=self.unit == "doc", file=sys.stderr)

  def update(self, n=1, **postfix):
    if self.bar is not None:
      self.bar.update(n)
      if postfix:
        self.bar.set_postfix(postfix, refresh=False)

  def close(self):
    if self.bar is not None:
      self.bar.close()


def _document_total(corpus, split, data_dir, corpus_dir, limit) -> int | None:
  """Documents in a split as TFDS records them (for the progress bar); None if unknown."""
  try:
    if corpus.startswith("text_corpus/"):
      info = text_corpus.corpus_builder(corpus.split("/", 1)[1], data_dir, corpus_dir).info
    else:
      import tensorflow_datasets as tfds  # lazy: importing TensorFlow costs seconds
      info = tfds.builder(corpus, data_dir=data_dir or None).info
    n = info.splits[split].num_examples
  except Exception:  # only a progress-bar nicety
    return None
  return min(n, limit) if limit else n


def _check_inputs(corpus, corpus_dir, splits, num_shards, max_len, limit):
  if num_shards < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}")
  if max_len < 5:
    raise ValueError(f"max_len must be >= 5 ([CLS] A [SEP] B [SEP]), got {max_len}")
  if max_len > 65536:
    raise ValueError(f"max_len={max_len} is larger than any model's positions")
  if limit < 0:
    raise ValueError(f"limit must be >= 0, got {limit}")
  if not splits:
    raise ValueError("no splits to prepare")
  for s in splits:
    if not _SPLIT_NAME.match(s):
      raise ValueError(f"split name {s!r} is not a plain name (letters, digits, _ . -)")
  if corpus.startswith("text_corpus/"):
    fmt = corpus.split("/", 1)[1]
    if fmt not in text_corpus.FORMATS:
      raise ValueError(f"unknown corpus format {fmt!r} in --corpus {corpus}; known: "
                       f"{', '.join('text_corpus/' + f for f in text_corpus.FORMATS)}")
    if not corpus_dir:
      raise ValueError(f"--corpus {corpus} reads a local directory of text files: give it as "
                       "--corpus_dir")
    if not os.path.isdir(corpus_dir):
      raise FileNotFoundError(f"corpus directory {corpus_dir} does not exist")


def _check_out_dir(out_dir: str) -> None:
  """A directory without a manifest must be new or empty: prepare never writes into (or
  removes from) a directory holding anything else."""
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise NotADirectoryError(f"--out {out_dir} is a file, not a directory")
  if os.path.isdir(out_dir) and not os.path.exists(os.path.join(out_dir, MANIFEST)):
    other = sorted(set(os.listdir(out_dir)) - {workdir_lib.LOCK_FILE})
    if other:
      raise ValueError(f"--out {out_dir} is not empty and holds no {MANIFEST} (it has "
                       f"{', '.join(other[:5])}{', ...' if len(other) > 5 else ''}): choose a "
                       "new or empty directory")


def _open_manifest(out_dir: str, settings: dict, overwrite: bool) -> dict:
  """The manifest to continue: the existing one when its settings agree, else (only with
  overwrite, after removing the prepared files) a new one."""
  if os.path.exists(os.path.join(out_dir, MANIFEST)):
    try:
      m = read_manifest(out_dir)
      diffs = settings_differences(m["settings"], settings)
    except (ValueError, KeyError, TypeError) as e:
      if not overwrite:
        raise ValueError(f"{out_dir}/{MANIFEST} is not a readable manifest ({e}): pass "
                         "--overwrite to prepare again") from None
      diffs = [str(e)]
    if not diffs:
      return m
    if not overwrite:
      raise ValueError(f"{out_dir} holds data prepared with other settings ("
                       + "; ".join(diffs) + "): pass --overwrite to replace it, or choose "
                       "another --out")
    _remove_prepared(out_dir)
  return {"version": VERSION, "settings": settings, "splits": {}, "wall_seconds": 0.0,
          "runs": []}


def _remove_prepared(out_dir: str) -> None:
  """What prepare writes, and nothing else: the manifest, shard files and .docs folders."""
  for name in os.listdir(out_dir):
    p = os.path.join(out_dir, name)
    if name in (MANIFEST, MANIFEST + ".tmp"):
      os.remove(p)
    elif os.path.isdir(p) and _SPLIT_NAME.match(name):
      shutil.rmtree(os.path.join(p, DOCS_DIR), ignore_errors=True)
      for f in os.listdir(p):
        if re.match(r"^shard-\d+-of-\d+\.npz(\.tmp\.npz)?$", f):
          os.remove(os.path.join(p, f))
      if not os.listdir(p):
        os.rmdir(p)


def _shard_done(out_dir: str, entry: dict | None) -> bool:
  if not entry:
    return False
  p = os.path.join(out_dir, entry["file"])
  return os.path.isfile(p) and os.path.getsize(p) == entry["bytes"]


def _distribute(docs: Iterable[str], docs_dir: str, num_shards: int, wanted: set[int],
                bar: _Bar) -> dict[int, int]:
  """Writes document i to docs_dir/docs-<i % num_shards>.jsonl for the wanted shards; returns
  {shard: documents}. Buffers are appended in batches, so any number of shards works."""
  os.makedirs(docs_dir, exist_ok=True)
  for j in wanted:
    open(_docs_path(docs_dir, j), "w").close()
  buf = {j: [] for j in wanted}
  counts = dict.fromkeys(wanted, 0)
  size = 0

  def flush():
    for j, lines in buf.items():
      if lines:
        with open(_docs_path(docs_dir, j), "a", encoding="utf-8") as f:
          f.writelines(lines)
        lines.clear()

  for i, doc in enumerate(docs):
    j = i % num_shards
    if j in wanted:
      line = json.dumps(doc, ensure_ascii=False) + "\n"
      buf[j].append(line)
      counts[j] += 1
      size += len(line)
      if size > _FLUSH_BYTES:
        flush()
        size = 0
    bar.update(1)
  flush()
  return counts


def _docs_path(docs_dir: str, j: int) -> str:
  return os.path.join(docs_dir, f"docs-{j:05d}.jsonl")


def _read_docs(path: str) -> Iterator[str]:
  with open(path, encoding="utf-8") as f:
    for line in f:
      yield json.loads(line)


def prepare(out_dir: str, *, corpus: str = "text_corpus/paragraphs", corpus_dir: str = "",
            data_dir: str | None = None, splits: Iterable[str] = ("train", "validation"),
            num_shards: int = 64, max_len: int = 128, seed: int = 0, vocab: str | None = None,
            limit: int = 0, overwrite: bool = False, progress: bool = False,
            documents: Callable[[str], Iterable[str]] | None = None) -> dict:
  """Prepares `splits` of `corpus` into `out_dir` (see the module docstring); returns the
  manifest, with "out_dir" and "this_run" (seconds, shards written) added. Resumable: shards
  the manifest lists whose file is present at the recorded size are kept; only the others are
  written.

  documents: split -> documents, instead of text_corpus.load_documents(corpus, ...) (tests,
  custom sources); `corpus` then only names the source in the manifest. limit > 0 reads at most
  that many documents per split."""
  t_start = time.time()
  splits = tuple(dict.fromkeys(splits))
  _check_inputs(corpus if documents is None else "", corpus_dir, splits, num_shards, max_len,
                limit)
  tokenizer = tokenization.load_tokenizer(vocab)
  settings = _settings(corpus, corpus_dir, vocab_fingerprint(vocab), tokenizer.get_vocab_size(),
                       max_len, seed, num_shards, limit)
  _check_out_dir(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  try:
    lock = workdir_lib.WorkdirLock(out_dir).__enter__()
  except RuntimeError as e:
    raise RuntimeError(f"{out_dir} is being prepared by another process: {e}") from None
  try:
    m = _open_manifest(out_dir, settings, overwrite)
    todo = {}
    for split in splits:
      entry = m["splits"].setdefault(split, {"shards": [None] * num_shards})
      todo[split] = [j for j in range(num_shards)
                     if not _shard_done(out_dir, entry["shards"][j])]
      for j in todo[split]:
        entry["shards"][j] = None
    run = {"started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "seconds": 0.0, "shards_written": 0, "read_seconds": 0.0, "pack_seconds": 0.0}
    if any(todo.values()):
      m["runs"].append(run)
      base_wall = m["wall_seconds"]

      def save():
        run["seconds"] = round(time.time() - t_start, 2)
        m["wall_seconds"] = round(base_wall + run["seconds"], 2)
        _write_manifest(out_dir, m)

      save()
      for split in splits:
        if todo[split]:
          _prepare_split(out_dir, split, todo[split], m, run, save, tokenizer, corpus=corpus,
                         corpus_dir=corpus_dir, data_dir=data_dir, num_shards=num_shards,
                         max_len=max_len, seed=seed, limit=limit, progress=progress,
                         documents=documents)
      save()
  finally:
    lock.__exit__(None, None, None)
  m["out_dir"] = out_dir
  m["this_run"] = {"seconds": round(time.time() - t_start, 2),
                   "shards_written": run["shards_written"]}
  return m


def _prepare_split(out_dir, split, todo, m, run, save, tokenizer, *, corpus, corpus_dir,
                   data_dir, num_shards, max_len, seed, limit, progress, documents):
  """Distributes the split's documents to the `todo` shards (unless an earlier run already
  did), then packs and writes each of them, recording it in the manifest as it is written."""
  entry = m["splits"][split]
  docs_dir = os.path.join(out_dir, split, DOCS_DIR)
  done_path = os.path.join(docs_dir, DOCS_DONE)
  key = hashlib.sha1(json.dumps(_comparable(m["settings"]), sort_keys=True).encode()).hexdigest()
  distributed = None
  if os.path.exists(done_path):  # an earlier run distributed the documents: reuse them
    try:
      with open(done_path) as f:
        d = json.load(f)
    except (OSError, ValueError):
      d = {}
    if d.get("key") == key and all(str(j) in d["documents"] and
                                   os.path.exists(_docs_path(docs_dir, j)) for j in todo):
      distributed = {j: d["documents"][str(j)] for j in todo}
  if distributed is None:
    t0 = time.time()
    if os.path.exists(done_path):
      os.remove(done_path)
    if documents is None:
      total = _document_total(corpus, split, data_dir, corpus_dir, limit) if progress else None
      docs = text_corpus.load_documents(corpus, split, data_dir=data_dir, corpus_dir=corpus_dir,
                                        limit=limit)
    else:
      total, docs = None, documents(split)
      docs = itertools.islice(docs, limit) if limit else docs
    bar = _Bar(total, f"{split}: reading documents", "doc", progress)
    try:
      distributed = _distribute(docs, docs_dir, num_shards, set(todo), bar)
    finally:
      bar.close()
    with open(done_path + ".tmp", "w") as f:
      json.dump({"key": key, "documents": {str(j): n for j, n in distributed.items()}}, f)
    os.replace(done_path + ".tmp", done_path)
    run["read_seconds"] = round(run["read_seconds"] + time.time() - t0, 2)
  bar = _Bar(len(todo), f"{split}: packing shards", "shard", progress)
  try:
    for j in todo:
      t0 = time.time()
      s = shard_seed(m["settings"]["seed"], split, j)
      arrays, n_docs = pack_documents(_read_docs(_docs_path(docs_dir, j)), tokenizer, max_len, s)
      name = os.path.join(split, shard_name(j, num_shards))
      size = _save_npz(os.path.join(out_dir, name), arrays)
      entry["shards"][j] = {"file": name, "documents": n_docs,
                            "sequences": int(len(arrays["lengths"])),
                            "tokens": int(arrays["lengths"].sum()), "bytes": size, "seed": s}
      run["shards_written"] += 1
      run["pack_seconds"] = round(run["pack_seconds"] + time.time() - t0, 2)
      save()
      os.remove(_docs_path(docs_dir, j))
      bar.update(1, sequences=f"{entry['sequences']:,}")
  finally:
    bar.close()
  shutil.rmtree(docs_dir, ignore_errors=True)


def _human_bytes(n: float) -> str:
  for unit in ("B", "KB", "MB", "GB"):
    if n < 1000 or unit == "GB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1000
  return f"{n:.1f} TB"


def _human_seconds(s: float) -> str:
  s = int(round(s))
  return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def summary(m: dict) -> str:
  """One line: sequences, tokens, size on disk and wall time of prepared data."""
  s, t = m["settings"], m["totals"]
  per_split = ", ".join(f"{name} {e['sequences']:,}" for name, e in m["splits"].items())
  run = m.get("this_run")
  if run is None:
    this = ""
  elif not run["shards_written"]:
    this = "; nothing to do: every shard was already prepared"
  elif run["seconds"] < m["wall_seconds"] - 0.5:
    this = (f" (this run {_human_seconds(run['seconds'])}, {run['shards_written']} shards "
            "written)")
  else:
    this = ""
  return (f"prepared {t['sequences']:,} sequences ({per_split}), {t['tokens']:,} tokens, "
          f"<= {s['max_len']} tokens each, {s['num_shards']} shards per split; "
          f"{_human_bytes(t['bytes'])} on disk in {m.get('out_dir', '.')}; "
          f"{_human_seconds(m['wall_seconds'])} of preparation{this}")


# ------------------------------------------------------------------ command line
def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """The command's flags (defined by the command, never at import)."""
  flags.DEFINE_string("corpus", "text_corpus/paragraphs", "TFDS text dataset (wikipedia/"
                      "20230601.en, c4/en) or text_corpus/paragraphs|wikitext", flag_values=fv)
  flags.DEFINE_string("corpus_dir", "", "local directory of text files for text_corpus/*",
                      flag_values=fv)
  flags.DEFINE_string("data_dir", None, "TFDS data dir (default $TFDS_DATA_DIR)", flag_values=fv)
  flags.DEFINE_string("out", None, "output directory (manifest.json + <split>/shard-*.npz)",
                      flag_values=fv)
  flags.DEFINE_list("splits", ["train", "validation"], "splits to prepare", flag_values=fv)
  flags.DEFINE_integer("num_shards", 64, "shards per split (>= the processes that will read "
                       "it; a multiple of them keeps shares even)", flag_values=fv)
  flags.DEFINE_integer("max_len", 128, "sequence length the text is packed to", flag_values=fv)
  flags.DEFINE_integer("seed", 0, "packing seed (segment cuts, SOP swaps)", flag_values=fv)
  flags.DEFINE_string("vocab", None, "WordPiece vocab.txt (default: bert-base-uncased's)",
                      flag_values=fv)
  flags.DEFINE_integer("limit", 0, "at most this many documents per split (0: all)",
                       flag_values=fv)
  flags.DEFINE_bool("overwrite", False, "replace data prepared with other settings in --out",
                    flag_values=fv)
  flags.DEFINE_bool("progress", True, "show progress bars", flag_values=fv)
  flags.DEFINE_bool("verbose", False, "on an error, print the full traceback", flag_values=fv)


def main(argv, fv: flags.FlagValues = flags.FLAGS) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not fv.out:
    raise ValueError("--out is required: the directory to write the prepared shards to")
  m = prepare(fv.out, corpus=fv.corpus, corpus_dir=fv.corpus_dir,
              data_dir=fv.data_dir or os.environ.get("TFDS_DATA_DIR") or None,
              splits=fv.splits, num_shards=fv.num_shards, max_len=fv.max_len, seed=fv.seed,
              vocab=fv.vocab, limit=fv.limit, overwrite=fv.overwrite, progress=fv.progress)
  print(summary(m), flush=True)


USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, RuntimeError)


def guarded(main_fn, argv, fv: flags.FlagValues = flags.FLAGS) -> int:
  """main_fn(argv) with user errors as one `error: ...` line and exit status 1 (the project's
  command-line style, squeezebert/cli.py, which this data-layer module cannot import)."""
  try:
    main_fn(argv)
  except USER_ERRORS as e:
    if fv["verbose"].value:
      raise
    print(f"error: {e}\n(--verbose shows the traceback)", file=sys.stderr)
    return 1
  return 0


class _QuietLibraries(py_logging.Filter):
  """Drops TFDS / etils info lines (TFDS's own progress bars stay)."""

  def filter(self, record):
    lib = any(p in (record.pathname or "") for p in ("/tensorflow_datasets/", "/etils/"))
    return record.levelno >= py_logging.WARNING or not lib


def _cli() -> None:
  define_flags(flags.FLAGS)

  def wrapped(argv):
    for handler in py_logging.getLogger().handlers:
      handler.addFilter(_QuietLibraries())
    sys.exit(guarded(main, argv))

  app.run(wrapped)


if __name__ == "__main__":
  _cli()
