"""Pretraining text prepared once, offline, into shards that each process reads by index.

  python -m squeezebert.data.prepare --corpus_dir DIR --out OUT [--num_shards 64 --max_len 128]
  python -m squeezebert.main --config=configs/pretrain.py ... --config.data.prepared_dir=OUT

OUT gets manifest.json, vocab.txt and <split>/shard-XXXXX-of-YYYYY.npz. Rerunning the same
command after a kill writes only the missing shards; other settings in OUT are refused unless
--overwrite. More: docs/pretraining.md.
"""

# How it works. Document i of a split (text_corpus.load_documents: a TFDS text dataset, or
# text_corpus/<format> for a local directory) goes to shard i % num_shards. One pass over the
# split writes each shard's documents to OUT/<split>/.docs/; then each shard is tokenized and
# packed on its own (pretraining.pack_sop: ALBERT's SOP packing, seeded by (seed, split,
# shard)), so memory holds one shard, never the corpus. Layout:
#   OUT/manifest.json                     settings, per-shard counts and sizes, wall time
#   OUT/vocab.txt                         the WordPiece vocab the ids refer to
#   OUT/<split>/shard-00003-of-00064.npz  pack_sop's ragged arrays: tokens (uint16), lengths,
#                                         a_lengths, labels, doc (the document's number)
# A shard file is written under a temporary name and renamed, and the manifest lists it only
# once it is complete, so a rerun writes only the missing shards, identical to what an
# uninterrupted run writes.
# Reading: load_prepared(OUT, split, shard_index, shard_count) -> EncodedSplit of the shards j
# with j % shard_count == shard_index (idx: the sequence's number in the whole split, unique
# across shards); check_compatible checks a run's max_len / vocab against the manifest. Reading
# goes through epath, so OUT may also be a URL (gs://bucket/prepared) once copied there; the
# command itself writes to a local or mounted directory.

from __future__ import annotations

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
from tqdm import tqdm

from squeezebert import workdir as workdir_lib
from squeezebert.data import pretraining, text_corpus
from squeezebert.data import tokenizer as tokenization
from squeezebert.data.prepared import MANIFEST, VERSION, VOCAB_FILE, read_manifest, vocab_sha1

DOCS_DIR = ".docs"           # <split>/.docs: each shard's documents before packing
DOCS_DONE = "complete.json"  # written once every document of the split is distributed
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_FLUSH_BYTES = 32 << 20      # document buffers are appended to their files past this size


def shard_name(index: int, num_shards: int) -> str:
  return f"shard-{index:05d}-of-{num_shards:05d}.npz"


def shard_seed(seed: int, split: str, index: int) -> int:
  """The packing seed of one shard: a function of (seed, split, shard) only."""
  return int.from_bytes(hashlib.sha256(f"{seed}/{split}/{index}".encode()).digest()[:8], "little")


def settings_differences(prepared: dict, wanted: dict) -> list[str]:
  return [f"{k}: {prepared.get(k)!r} prepared, {wanted.get(k)!r} now"
          for k in sorted(prepared.keys() | wanted.keys()) if prepared.get(k) != wanted.get(k)]


def _check_inputs(corpus, corpus_dir, splits, num_shards, max_len, limit):
  if num_shards < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}")
  if max_len < 5:
    raise ValueError(f"max_len must be >= 5 ([CLS] A [SEP] B [SEP]), got {max_len}")
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


def _open_manifest(out_dir: str, settings: dict, overwrite: bool) -> dict:
  """The manifest to continue (same settings), or a new one: in a new or empty directory, or
  (overwrite) after removing what an earlier prepare wrote."""
  if os.path.exists(os.path.join(out_dir, MANIFEST)):
    try:
      diffs = settings_differences(read_manifest(out_dir)["settings"], settings)
      if not diffs:
        return read_manifest(out_dir)
    except (ValueError, KeyError, TypeError) as e:
      diffs = [str(e)]
    if not overwrite:
      raise ValueError(f"{out_dir} holds data prepared with other settings ("
                       + "; ".join(diffs) + "): pass --overwrite to replace it, or choose "
                       "another --out")
    _remove_prepared(out_dir)
  elif os.path.isdir(out_dir):
    other = sorted(set(os.listdir(out_dir)) - {workdir_lib.LOCK_FILE})
    if other:
      raise ValueError(f"--out {out_dir} is not empty and holds no {MANIFEST} (it has "
                       f"{', '.join(other[:5])}{', ...' if len(other) > 5 else ''}): choose a "
                       "new or empty directory")
  return {"version": VERSION, "settings": settings, "splits": {}, "wall_seconds": 0.0,
          "out_dir": out_dir}


def _remove_prepared(out_dir: str) -> None:
  """What prepare writes, and nothing else."""
  for name in os.listdir(out_dir):
    p = os.path.join(out_dir, name)
    if name in (MANIFEST, MANIFEST + ".tmp", VOCAB_FILE):
      os.remove(p)
    elif os.path.isdir(p) and _SPLIT_NAME.match(name):
      shutil.rmtree(os.path.join(p, DOCS_DIR), ignore_errors=True)
      for f in os.listdir(p):
        if re.match(r"^shard-\d+-of-\d+\.npz(\.tmp\.npz)?$", f):
          os.remove(os.path.join(p, f))
      if not os.listdir(p):
        os.rmdir(p)


def _write_manifest(m: dict) -> None:
  for s in m["splits"].values():
    done = [e for e in s["shards"] if e]
    s["complete"] = len(done) == len(s["shards"])
    for key in ("documents", "sequences", "tokens", "bytes"):
      s[key] = sum(e[key] for e in done)
  m["totals"] = {key: sum(s[key] for s in m["splits"].values())
                 for key in ("documents", "sequences", "tokens", "bytes")}
  path = os.path.join(m["out_dir"], MANIFEST)
  with open(path + ".tmp", "w") as f:
    json.dump({k: v for k, v in m.items() if k not in ("out_dir", "this_run")}, f, indent=1)
    f.write("\n")
  os.replace(path + ".tmp", path)


def _shard_done(out_dir: str, entry: dict | None) -> bool:
  return bool(entry) and os.path.isfile(p := os.path.join(out_dir, entry["file"])) and (
      os.path.getsize(p) == entry["bytes"])


def _docs_path(docs_dir: str, j: int) -> str:
  return os.path.join(docs_dir, f"docs-{j:05d}.jsonl")


def _distribute(docs: Iterable[str], docs_dir: str, num_shards: int, wanted: list[int],
                bar) -> None:
  """Appends document i, as a JSON line, to docs_dir/docs-<i % num_shards>.jsonl for the
  wanted shards (buffered, so any number of shards works), then writes DOCS_DONE."""
  os.makedirs(docs_dir, exist_ok=True)
  if os.path.exists(done := os.path.join(docs_dir, DOCS_DONE)):
    os.remove(done)  # an earlier distribution's record no longer holds
  buf = {j: [] for j in wanted}
  for j in wanted:
    open(_docs_path(docs_dir, j), "w").close()
  size = 0

  def flush():
    for j, lines in buf.items():
      if lines:
        with open(_docs_path(docs_dir, j), "a", encoding="utf-8") as f:
          f.writelines(lines)
        lines.clear()

  for i, doc in enumerate(docs):
    if (j := i % num_shards) in buf:
      buf[j].append(json.dumps(doc, ensure_ascii=False) + "\n")
      size += len(buf[j][-1])
      if size > _FLUSH_BYTES:
        flush()
        size = 0
    bar.update(1)
  flush()
  with open(done, "w") as f:
    json.dump(wanted, f)


def _distributed(docs_dir: str, todo: list[int]) -> bool:
  """An earlier run distributed the documents of every shard in `todo` (and was killed while
  packing): they can be packed without reading the corpus again."""
  try:
    with open(os.path.join(docs_dir, DOCS_DONE)) as f:
      have = set(json.load(f))
  except (OSError, ValueError, TypeError):
    return False
  return all(j in have and os.path.isfile(_docs_path(docs_dir, j)) for j in todo)


def _read_docs(path: str) -> Iterator[str]:
  with open(path, encoding="utf-8") as f:
    for line in f:
      yield json.loads(line)


def _document_total(corpus, split, data_dir, corpus_dir, limit) -> int | None:
  """Documents in a split as TFDS records them (the progress bar's total); None if unknown."""
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


def prepare(out_dir: str, *, corpus: str = "text_corpus/paragraphs", corpus_dir: str = "",
            data_dir: str | None = None, splits: Iterable[str] = ("train", "validation"),
            num_shards: int = 64, max_len: int = 128, seed: int = 0, vocab: str | None = None,
            limit: int = 0, overwrite: bool = False, progress: bool = False,
            documents: Callable[[str], Iterable[str]] | None = None) -> dict:
  """Prepares `splits` of `corpus` into `out_dir` (see the module docstring) and returns the
  manifest, with this_run = {seconds, shards_written}. Shards the manifest lists whose file is
  present at its recorded size are kept; only the others are written.

  documents: split -> documents, instead of text_corpus.load_documents (tests, other sources;
  `corpus` then only names the source). limit > 0: the first `limit` documents of each split."""
  t_start = time.time()
  splits = tuple(dict.fromkeys(splits))
  _check_inputs(corpus if documents is None else "", corpus_dir, splits, num_shards, max_len,
                limit)
  tokenizer = tokenization.load_tokenizer(vocab)
  settings = {"corpus": corpus, "corpus_dir": os.path.abspath(corpus_dir) if corpus_dir else "",
              "vocab_size": tokenizer.get_vocab_size(), "vocab_sha1": vocab_sha1(vocab),
              "lowercase": True, "packing": "albert-sop", "max_len": max_len, "seed": seed,
              "num_shards": num_shards, "limit": limit}
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise NotADirectoryError(f"--out {out_dir} is a file, not a directory")
  os.makedirs(out_dir, exist_ok=True)
  try:
    lock = workdir_lib.WorkdirLock(out_dir).__enter__()
  except RuntimeError as e:
    raise RuntimeError(f"{out_dir} is being prepared by another process: {e}") from None
  written = 0
  try:
    m = _open_manifest(out_dir, settings, overwrite)
    vocab_copy = os.path.join(out_dir, VOCAB_FILE)
    if not os.path.isfile(vocab_copy):
      shutil.copyfile(tokenization.resolve_vocab(vocab), vocab_copy + ".tmp")
      os.replace(vocab_copy + ".tmp", vocab_copy)
    base_wall = m["wall_seconds"]

    def save():
      m["wall_seconds"] = round(base_wall + time.time() - t_start, 2)
      _write_manifest(m)

    for split in splits:
      entry = m["splits"].setdefault(split, {"shards": [None] * num_shards})
      todo = [j for j, e in enumerate(entry["shards"]) if not _shard_done(out_dir, e)]
      if not todo:
        continue
      for j in todo:
        entry["shards"][j] = None
      save()
      docs_dir = os.path.join(out_dir, split, DOCS_DIR)
      if not _distributed(docs_dir, todo):
        if documents is None:
          total = _document_total(corpus, split, data_dir, corpus_dir, limit) if progress else None
          docs = text_corpus.load_documents(corpus, split, data_dir=data_dir,
                                            corpus_dir=corpus_dir, limit=limit)
        else:
          total, docs = None, documents(split)
          docs = itertools.islice(docs, limit) if limit else docs
        with tqdm(total=total, desc=f"{split}: reading documents", unit="doc", unit_scale=True,
                  disable=not progress, file=sys.stderr) as bar:
          _distribute(docs, docs_dir, num_shards, todo, bar)
      with tqdm(todo, desc=f"{split}: packing shards", unit="shard", disable=not progress,
                file=sys.stderr) as bar:
        for j in bar:
          docs_path = _docs_path(docs_dir, j)
          a = pretraining.pack_sop(_read_docs(docs_path), tokenizer, max_len,
                                   shard_seed(seed, split, j))
          a["doc"] = a["doc"] * num_shards + j  # the document's number in the split
          with open(docs_path, "rb") as f:
            n_docs = sum(1 for _ in f)
          name = os.path.join(split, shard_name(j, num_shards))
          path = os.path.join(out_dir, name)
          np.savez(path + ".tmp.npz", **a)
          os.replace(path + ".tmp.npz", path)
          entry["shards"][j] = {"file": name, "documents": n_docs,
                                "sequences": len(a["lengths"]), "tokens": len(a["tokens"]),
                                "bytes": os.path.getsize(path)}
          written += 1
          save()
          os.remove(docs_path)
          bar.set_postfix(sequences=f"{sum(e['sequences'] for e in entry['shards'] if e):,}")
      shutil.rmtree(docs_dir, ignore_errors=True)
    if written:
      save()
  finally:
    lock.__exit__(None, None, None)
  m["this_run"] = {"seconds": round(time.time() - t_start, 2), "shards_written": written}
  return m


def summary(m: dict) -> str:
  """One line: sequences, tokens, size and preparation time of prepared data."""
  s, t, run = m["settings"], m["totals"], m["this_run"]
  per_split = ", ".join(f"{name} {e['sequences']:,}" for name, e in m["splits"].items())
  this = (f"; this run {run['seconds']:.0f} s, {run['shards_written']} shards written"
          if run["shards_written"] else "; nothing to do: every shard was already prepared")
  return (f"prepared {t['sequences']:,} sequences ({per_split}), {t['tokens']:,} tokens "
          f"(<= {s['max_len']} per sequence), {s['num_shards']} shards per split, "
          f"{t['bytes'] / 1e6:.1f} MB in {m['out_dir']}; {m['wall_seconds']:.0f} s of "
          f"preparation{this}")


# ------------------------------------------------------------------ command line
def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """The command's flags (defined by the command, never at import)."""
  flags.DEFINE_string("corpus", "text_corpus/paragraphs", "TFDS text dataset (wikipedia/"
                      "20230601.en, c4/en) or text_corpus/paragraphs|wikitext", flag_values=fv)
  flags.DEFINE_string("corpus_dir", "", "local directory of text files for text_corpus/*",
                      flag_values=fv)
  flags.DEFINE_string("data_dir", None, "TFDS data dir (default $TFDS_DATA_DIR)", flag_values=fv)
  flags.DEFINE_string("out", None, "output directory (manifest.json, vocab.txt, "
                      "<split>/shard-*.npz)", flag_values=fv)
  flags.DEFINE_list("splits", ["train", "validation"], "splits to prepare", flag_values=fv)
  flags.DEFINE_integer("num_shards", 64, "shards per split (a multiple of the processes "
                       "that will read it)", flag_values=fv)
  flags.DEFINE_integer("max_len", 128, "sequence length the text is packed to (the run's "
                       "config.data.max_len)", flag_values=fv)
  flags.DEFINE_integer("seed", 0, "packing seed (segment cuts, SOP swaps)", flag_values=fv)
  flags.DEFINE_string("vocab", None, "WordPiece vocab.txt (default: bert-base-uncased's)",
                      flag_values=fv)
  flags.DEFINE_integer("limit", 0, "the first N documents of each split (0: all)",
                       flag_values=fv)
  flags.DEFINE_bool("overwrite", False, "replace data prepared with other settings in --out",
                    flag_values=fv)
  flags.DEFINE_bool("progress", True, "show progress bars", flag_values=fv)
  flags.DEFINE_bool("verbose", False, "on an error, print the full traceback", flag_values=fv)


def main(argv, fv: flags.FlagValues = flags.FLAGS) -> int:
  """Runs the command; user errors are one `error: ...` line and exit status 1."""
  try:
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not fv.out:
      raise ValueError("--out is required: the directory to write the prepared shards to")
    m = prepare(fv.out, corpus=fv.corpus, corpus_dir=fv.corpus_dir,
                data_dir=fv.data_dir or os.environ.get("TFDS_DATA_DIR") or None,
                splits=fv.splits, num_shards=fv.num_shards, max_len=fv.max_len, seed=fv.seed,
                vocab=fv.vocab, limit=fv.limit, overwrite=fv.overwrite, progress=fv.progress)
  except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, RuntimeError) as e:
    if fv.verbose:
      raise
    print(f"error: {e}\n(--verbose shows the traceback)", file=sys.stderr)
    return 1
  print(summary(m), flush=True)
  return 0


class _QuietLibraries(py_logging.Filter):
  """Drops TFDS / etils info lines (TFDS's own progress bars stay)."""

  def filter(self, record):
    lib = any(p in (record.pathname or "") for p in ("/tensorflow_datasets/", "/etils/"))
    return record.levelno >= py_logging.WARNING or not lib


def _cli() -> None:
  define_flags(flags.FLAGS)

  def run(argv):
    for handler in py_logging.getLogger().handlers:
      handler.addFilter(_QuietLibraries())
    sys.exit(main(argv))

  app.run(run)


if __name__ == "__main__":
  _cli()
