"""CoNLL-2003 English NER: sentences from TFDS `conll2003` or the raw CoNLL files, and WordPiece
alignment of word-level tags to sub-tokens.

Sources (like squeezebert/data/glue.py): 'tfds' (TFDS `conll2003`, splits train/dev/test, from
`data_dir` or $TFDS_DATA_DIR), 'file' (the raw `token POS chunk NER` files train.txt /
valid.txt / test.txt in `conll_dir` or $CONLL2003_DIR; 'tsv' is accepted as a synonym, the name
the trainer's config check knows for "the non-TFDS fallback"), or 'auto' (TFDS if prepared,
else the raw files if a directory is known).

Tags: TFDS' `ner` ClassLabel names (LABEL_NAMES, IOB2). The local TFDS copy and the raw files
in common circulation are IOB2; the original eng.train/testa/testb releases are IOB1. With
tag_scheme='auto' a split whose entities start with I- is read as IOB1 and rewritten to IOB2
(the same entities, see squeezebert.metrics.ner.iob1_to_iob2), so training labels always use
B- for the first word of an entity.
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging

from squeezebert.data import tfds_util
from squeezebert.metrics import ner as metrics_ner

TFDS_NAME = "conll2003"
TFDS_DIR_ENV = "TFDS_DATA_DIR"
CONLL_DIR_ENV = "CONLL2003_DIR"
# Order of TFDS conll2003's `ner` ClassLabel (ner.labels.txt).
LABEL_NAMES = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
SPLITS = ("train", "dev", "test")
FILES = {"train": "train.txt", "dev": "valid.txt", "test": "test.txt"}
IGNORE = -100  # label of sub-tokens the loss and the metric skip


def tfds_data_dir(data_dir: str | None = None) -> str:
  return tfds_util.data_dir(data_dir)


def tfds_prepared(data_dir: str | None = None) -> bool:
  return tfds_util.prepared(TFDS_NAME, data_dir)


def read_conll_file(path: str) -> tuple[list[list[str]], list[list[str]]]:
  """Sentences of a CoNLL file: (words, NER tag strings); the tag is the last column.
  -DOCSTART- lines and blank lines end sentences (as TFDS' ConllDatasetBuilder reads them)."""
  words, tags, cur_w, cur_t = [], [], [], []

  def flush():
    if cur_w:
      words.append(list(cur_w))
      tags.append(list(cur_t))
      cur_w.clear()
      cur_t.clear()

  with open(path, "rb") as f:
    for n, raw in enumerate(f, 1):
      try:
        line = raw.decode("utf-8").rstrip("\r\n")
      except UnicodeDecodeError as e:
        raise ValueError(f"{path}:{n}: not valid UTF-8 ({e.reason} at byte {e.start} of the "
                         "line)") from None
      if not line.strip() or line.startswith("-DOCSTART-"):
        flush()
        continue
      cols = line.split()
      if len(cols) < 2:
        raise ValueError(f"{path}:{n}: expected 'token ... NER-tag' columns, got {line!r}")
      if cols[-1] not in LABEL_NAMES:
        raise ValueError(f"{path}:{n}: unknown NER tag {cols[-1]!r}; expected one of "
                         f"{LABEL_NAMES} (IOB1 or IOB2)")
      cur_w.append(cols[0])
      cur_t.append(cols[-1])
  flush()
  return words, tags


def _load_file(split: str, conll_dir: str) -> tuple[list, list]:
  if not os.path.isdir(conll_dir):
    raise FileNotFoundError(f"CoNLL-2003 directory does not exist: {conll_dir}")
  path = os.path.join(conll_dir, FILES[split])
  if not os.path.isfile(path):
    raise FileNotFoundError(f"CoNLL-2003 file for split {split!r} not found: {path}")
  return read_conll_file(path)


def _load_tfds(split: str, data_dir: str | None) -> tuple[list, list]:
  import tensorflow_datasets as tfds  # lazy: importing TensorFlow costs seconds

  if data_dir is not None and "://" not in data_dir and not os.path.isdir(data_dir):
    raise FileNotFoundError(f"TFDS data_dir does not exist: {data_dir}")
  if not tfds_prepared(data_dir):
    raise FileNotFoundError(f"TFDS dataset {TFDS_NAME} is not prepared under "
                            f"{tfds_data_dir(data_dir)} (source='tfds'; source='auto' would "
                            "download it)")
  data_dir = data_dir or os.environ.get(TFDS_DIR_ENV) or None
  builder = tfds.builder(TFDS_NAME, data_dir=data_dir)
  names = tuple(builder.info.features["ner"].feature.names)
  # Ragged batches: several times faster than iterating examples one by one.
  ds = builder.as_dataset(split=split, shuffle_files=False).ragged_batch(4096)
  words, tags = [], []
  for batch in ds:
    lens = batch["tokens"].row_lengths().numpy()
    cuts = np.cumsum(lens)[:-1]
    toks = np.split(batch["tokens"].flat_values.numpy(), cuts)
    ner = np.split(batch["ner"].flat_values.numpy(), cuts)
    for w, t in zip(toks, ner):
      if not len(w):  # TFDS' builder emits an empty example after the last sentence of a file
        continue
      words.append([x.decode("utf-8") for x in w.tolist()])
      tags.append([names[int(i)] for i in t])
  return words, tags


def resolve_source(data_dir: str | None = None, source: str = "auto",
                   conll_dir: str | None = None, download: bool = True) -> str:
  """'tfds' or 'file' for `source`="auto": a prepared TFDS copy, else the raw CoNLL files in
  conll_dir, else a TFDS download (download on), else DataNotFoundError."""
  if source == "tsv":
    source = "file"
  if source not in ("auto", "tfds", "file"):
    raise ValueError(f"source must be auto|tfds|file (tsv), got {source!r}")
  conll_dir = conll_dir or os.environ.get(CONLL_DIR_ENV) or None
  if source != "auto":
    return source
  to_set = (f"Set --config.data.tfds_data_dir=DIR (or ${TFDS_DIR_ENV}) to a TFDS data dir "
            f"holding {TFDS_NAME}, or --config.data.conll_dir=DIR (or ${CONLL_DIR_ENV}) to a "
            "dir with train.txt/valid.txt/test.txt.")
  return tfds_util.resolve_auto(TFDS_NAME, data_dir, conll_dir, "file", "raw-file dir", to_set,
                                download)


def load_sentences(split: str, data_dir: str | None = None, source: str = "auto",
                   conll_dir: str | None = None, tag_scheme: str = "auto",
                   download: bool = True) -> dict:
  """{'words': [[str]], 'tags': int32 arrays of LABEL_NAMES ids, 'idx': int32[N]}.

  Sentence order: file order for the raw files; TFDS' stored order for TFDS (the same sentences
  as a multiset). tag_scheme: 'iob2' (keep), 'iob1' (rewrite to IOB2), 'auto' (rewrite if the
  split has an entity starting with I-).
  """
  if split not in SPLITS:
    raise ValueError(f"conll2003 has no split {split!r}; splits: {SPLITS}")
  if tag_scheme not in ("auto", "iob1", "iob2"):
    raise ValueError(f"tag_scheme must be auto|iob1|iob2, got {tag_scheme!r}")
  conll_dir = conll_dir or os.environ.get(CONLL_DIR_ENV) or None
  source = resolve_source(data_dir, source, conll_dir, download)
  if source == "tfds":
    words, tags = _load_tfds(split, data_dir)
  elif source == "file":
    if not conll_dir:
      raise ValueError(f"source='file' needs config.data.conll_dir or ${CONLL_DIR_ENV}")
    words, tags = _load_file(split, conll_dir)
  if tag_scheme == "iob1" or (tag_scheme == "auto" and metrics_ner.is_iob1(tags)):
    logging.info("conll2003/%s: IOB1 tags rewritten to IOB2", split)
    tags = [metrics_ner.iob1_to_iob2(t) for t in tags]
  ids = {name: i for i, name in enumerate(LABEL_NAMES)}
  out_tags = []
  for n, sent in enumerate(tags):
    bad = [t for t in sent if t not in ids]
    if bad:
      raise ValueError(f"conll2003/{split}: sentence {n} has unknown NER tag {bad[0]!r}; "
                       f"expected one of {LABEL_NAMES}")
    out_tags.append(np.asarray([ids[t] for t in sent], np.int32))
  return {"words": words, "tags": out_tags, "idx": np.arange(len(words), dtype=np.int32)}


def align_words(tokenizer, sentences, tags, max_len: int) -> dict:
  """WordPiece-encodes pre-split words and aligns word tags to sub-tokens.

  Each word's first sub-token carries the word's tag; its other sub-tokens, [CLS], [SEP] and
  padding carry IGNORE. A sentence longer than max_len - 2 sub-tokens is truncated; words
  that lose their first sub-token, and words that produce no sub-token at all (e.g. only
  control or zero-width characters), have position -1 and are predicted 'O' by the task.

  Returns {'input_ids': [N, max_len] int32, 'labels': [N, max_len] int32, 'lengths': [N],
  'word_pos': list of int32 arrays (the first sub-token position of every word or -1),
  'num_truncated': sentences truncated, 'num_lost_words': words without a position}.
  """
  if max_len < 3:
    raise ValueError(f"max_len={max_len} is too small; need >= 3")
  cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
  sentences = [list(map(str, s)) for s in sentences]
  for n, (s, t) in enumerate(zip(sentences, tags)):
    if not s:
      raise ValueError(f"sentence {n} has no words")
    if len(s) != len(t):
      raise ValueError(f"sentence {n}: {len(s)} words but {len(t)} tags")
  if len(sentences) != len(tags):
    raise ValueError(f"{len(sentences)} sentences but {len(tags)} tag sequences")
  encs = tokenizer.encode_batch(sentences, is_pretokenized=True, add_special_tokens=False)
  n = len(encs)
  ids = np.zeros((n, max_len), np.int32)
  labels = np.full((n, max_len), IGNORE, np.int32)
  lengths = np.zeros((n,), np.int32)
  word_pos, truncated, lost = [], 0, 0
  room = max_len - 2
  for i, (e, t) in enumerate(zip(encs, tags)):
    toks, wids = e.ids, e.word_ids
    if len(toks) > room:
      truncated += 1
      toks, wids = toks[:room], wids[:room]
    L = len(toks) + 2
    ids[i, 0], ids[i, 1:L - 1], ids[i, L - 1] = cls_id, toks, sep_id
    lengths[i] = L
    pos = np.full((len(t),), -1, np.int32)
    prev = None
    for j, w in enumerate(wids):
      if w is not None and w != prev:
        pos[w] = j + 1
        labels[i, j + 1] = t[w]
      prev = w
    lost += int((pos < 0).sum())
    word_pos.append(pos)
  return {"input_ids": ids, "labels": labels, "lengths": lengths, "word_pos": word_pos,
          "num_truncated": truncated, "num_lost_words": lost}


def words_from_tokens(pred_ids: np.ndarray, word_pos: np.ndarray, fill: int = 0) -> np.ndarray:
  """Word-level predictions from one sentence's per-token predictions: the prediction at each
  word's first sub-token; `fill` (label 'O') for words without a position."""
  pred_ids = np.asarray(pred_ids)
  out = np.full(word_pos.shape, fill, np.int32)
  ok = word_pos >= 0
  out[ok] = pred_ids[word_pos[ok]]
  return out
