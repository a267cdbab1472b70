"""Pretraining text through TFDS: public text datasets, or a directory of plain-text files.

`load_documents(spec, split, data_dir=..., corpus_dir=...)` yields documents (str, paragraphs
joined by "\\n") from either
  * a TFDS text dataset by name (`wikipedia/20230601.en`, `c4/en`, ...: any dataset with a
    "text" feature; downloaded and prepared by TFDS as usual), or
  * `text_corpus/<format>`: the TFDS builder below, which prepares a local directory of .txt
    files (given as TFDS's manual_dir) into a regular TFDS dataset in `data_dir`:
      - format "paragraphs": one paragraph per line, a blank line between documents
        (e.g. a folder of books or documentation dumps);
      - format "wikitext": WikiText `wiki.{train,valid,test}.tokens` files, split into articles
        at their ` = Title = ` headings (WikiText-103 where downloaded, WikiText-2 here).
    A directory's files go to the train split except a deterministic 1-in-200 sample of documents
    (by hash) held out as `validation`; WikiText keeps its own train/valid/test files.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from typing import Iterator

FORMATS = ("paragraphs", "wikitext")
HOLDOUT_EVERY = 200  # 1 in 200 documents of a plain-text directory is held out as validation
_WIKI_SPLITS = {"train": "wiki.train.tokens", "validation": "wiki.valid.tokens",
                "test": "wiki.test.tokens"}
_WIKI_TITLE = re.compile(r"^ = [^=].* = $")


def _held_out(source: str, index: int) -> bool:
  h = hashlib.sha1(f"{source}:{index}".encode()).digest()
  return int.from_bytes(h[:4], "little") % HOLDOUT_EVERY == 0


def paragraph_documents(path: str) -> Iterator[tuple[int, str]]:
  """(index, document) of a paragraphs-format file: blank lines separate documents."""
  with open(path, encoding="utf-8") as f:
    doc, i = [], 0
    for line in f:
      line = line.strip()
      if line:
        doc.append(line)
      elif doc:
        yield i, "\n".join(doc)
        doc, i = [], i + 1
    if doc:
      yield i, "\n".join(doc)


def wikitext_documents(path: str) -> Iterator[tuple[int, str]]:
  """(index, article) of a WikiText .tokens file; the ` = Title = ` line starts an article."""
  with open(path, encoding="utf-8") as f:
    doc, i = [], 0
    for line in f:
      if _WIKI_TITLE.match(line.rstrip("\n")) and doc:
        yield i, "\n".join(doc)
        doc, i = [], i + 1
      line = line.strip()
      if line and not line.startswith("= "):  # section headings are not prose
        doc.append(line)
    if doc:
      yield i, "\n".join(doc)


@functools.cache
def text_corpus_builder_class():
  """The TFDS builder `text_corpus` (defined on first use: TFDS / TensorFlow load only when a
  corpus is read, so the package imports without them)."""
  import tensorflow_datasets as tfds  # lazy: importing TensorFlow costs seconds

  class TextCorpus(tfds.core.GeneratorBasedBuilder):
    """A directory of plain-text files as a TFDS dataset (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=f, description=f"{f} text files")
                       for f in FORMATS]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Pass the directory of .txt files (format 'paragraphs') or of wiki.*.tokens files (format "
        "'wikitext') as the manual dir: config.data.corpus_dir.")

    def _info(self):
      return self.dataset_info_from_configs(
          features=tfds.features.FeaturesDict({"text": tfds.features.Text(),
                                               "source": tfds.features.Text()}),
          supervised_keys=None)

    def _split_generators(self, dl_manager):
      root = str(dl_manager.manual_dir)
      if self.builder_config.name == "wikitext":
        present = {s: os.path.join(root, f) for s, f in _WIKI_SPLITS.items()
                   if os.path.exists(os.path.join(root, f))}
        if not present:
          raise FileNotFoundError(f"no wiki.{{train,valid,test}}.tokens files in {root}")
        return {s: self._generate_examples([p], held_out=None) for s, p in present.items()}
      files = sorted(f for f in os.listdir(root) if f.endswith(".txt")
                     and os.path.isfile(os.path.join(root, f)))
      if not files:
        raise FileNotFoundError(f"no .txt files in corpus directory {root}")
      paths = [os.path.join(root, f) for f in files]
      return {"train": self._generate_examples(paths, held_out=False),
              "validation": self._generate_examples(paths, held_out=True)}

    def _generate_examples(self, paths, held_out: bool | None):
      """held_out None: every document (WikiText files are whole splits)."""
      read = wikitext_documents if held_out is None else paragraph_documents
      for path in paths:
        name = os.path.basename(path)
        for i, doc in read(path):
          if held_out is None or _held_out(name, i) == held_out:
            yield f"{name}:{i}", {"text": doc, "source": name}

  return TextCorpus


def corpus_builder(fmt: str, data_dir: str | None, corpus_dir: str):
  """The prepared `text_corpus/<fmt>` builder for `corpus_dir` (prepared on first use)."""
  import tensorflow_datasets as tfds  # lazy: importing TensorFlow costs seconds
  if fmt not in FORMATS:
    raise ValueError(f"unknown corpus format {fmt!r}; known: {FORMATS}")
  if not corpus_dir or not os.path.isdir(corpus_dir):
    raise FileNotFoundError(f"corpus directory {corpus_dir!r} does not exist: set "
                            "config.data.corpus_dir to a directory of text files")
  names = os.listdir(corpus_dir)
  wanted = (lambda f: f in _WIKI_SPLITS.values()) if fmt == "wikitext" else (
      lambda f: f.endswith(".txt"))
  if not any(wanted(f) for f in names):
    raise FileNotFoundError(
        f"no {'wiki.{train,valid,test}.tokens' if fmt == 'wikitext' else '.txt'} files in "
        f"corpus directory {corpus_dir} (format {fmt!r})")
  # One prepared copy per source directory: the directory's name and a hash of its path
  # go into the data dir, so two corpora never overwrite each other.
  tag = hashlib.sha1(os.path.abspath(corpus_dir).encode()).hexdigest()[:8]
  root = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
  builder = text_corpus_builder_class()(config=fmt, data_dir=os.path.join(
      root, "text_corpus_dirs", f"{os.path.basename(os.path.normpath(corpus_dir))}-{tag}"))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=corpus_dir))
  return builder


def load_documents(spec: str, split: str, *, data_dir: str | None = None,
                   corpus_dir: str = "", limit: int = 0) -> Iterator[str]:
  """Documents of `split` from `spec` ("text_corpus/paragraphs", "wikipedia/20230601.en", ...).

  limit > 0 stops after that many documents."""
  import tensorflow_datasets as tfds  # lazy: importing TensorFlow costs seconds
  if spec.startswith("text_corpus/"):
    builder = corpus_builder(spec.split("/", 1)[1], data_dir, corpus_dir)
    if split not in builder.info.splits:
      raise ValueError(f"{spec} at {corpus_dir} has no split {split!r}; it has "
                       f"{sorted(builder.info.splits)}")
    ds = builder.as_dataset(split=split, shuffle_files=False)
  else:
    ds = tfds.load(spec, split=split, data_dir=data_dir or None, shuffle_files=False)
  if limit:
    ds = ds.take(limit)
  # Batched: TensorFlow's per-element overhead made one-by-one reading ~4x slower.
  for batch in ds.map(lambda ex: ex["text"]).batch(1024).as_numpy_iterator():
    for text in batch:
      yield text.decode("utf-8")
