"""GLUE task table and example loading from TFDS or the official GLUE TSV files.

Both sources yield the same features: TSV rows are parsed exactly as TFDS' glue builder parses
them (csv.QUOTE_NONE, idx = data-row number, labels mapped to TFDS ClassLabel ids), so a run
gives the same examples whichever source is present.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np
from absl import logging

from squeezebert.data import tfds_util
from squeezebert.data.sharding import shard_range

TFDS_DIR_ENV = "TFDS_DATA_DIR"
GLUE_DIR_ENV = "GLUE_DIR"


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """One GLUE task. `label_names` follow TFDS' label.labels.txt order (empty for regression)."""
  name: str
  tsv_folder: str                    # folder in download_glue_data.py output
  text_keys: tuple[str, ...]         # TFDS feature names: (a,) or (a, b)
  tsv_columns: tuple[str, ...]       # matching TSV header columns
  tsv_label: str                     # TSV label column ("" if none)
  label_names: tuple[str, ...]
  metrics: tuple[str, ...]           # official GLUE metrics, names as in squeezebert.metrics
  main_metric: str                   # key of glue_metrics() used to pick the best checkpoint
  eval_splits: tuple[str, ...]
  test_splits: tuple[str, ...]
  submission_files: tuple[str, ...]  # one per test split
  submit_label_names: bool = False   # GLUE server wants label names (NLI tasks) vs 0/1
  train_split: str | None = "train"

  @property
  def tfds_name(self) -> str:
    return f"glue/{self.name}"

  @property
  def is_regression(self) -> bool:
    return not self.label_names

  @property
  def num_labels(self) -> int:
    return 1 if self.is_regression else len(self.label_names)

  @property
  def is_pair(self) -> bool:
    return len(self.text_keys) == 2

  def submission_file(self, split: str) -> str:
    if split not in self.test_splits:
      raise ValueError(f"{self.name}: {split!r} is not a test split; one of {self.test_splits}")
    return self.submission_files[self.test_splits.index(split)]


_ACC = ("accuracy",)
_NLI3 = ("entailment", "neutral", "contradiction")


def _spec(name, folder, keys, cols, label_col, labels, metrics, **kw) -> TaskSpec:
  main = metrics[0] if len(metrics) == 1 else "combined"  # GLUE's task score: mean of its metrics
  kw.setdefault("eval_splits", ("validation",))
  kw.setdefault("test_splits", ("test",))
  return TaskSpec(name, folder, keys, cols, label_col, labels, metrics, main, **kw)


TASKS: dict[str, TaskSpec] = {s.name: s for s in [
    _spec("cola", "CoLA", ("sentence",), ("sentence",), "is_acceptable",
          ("unacceptable", "acceptable"), ("matthews_corrcoef",), submission_files=("CoLA.tsv",)),
    _spec("sst2", "SST-2", ("sentence",), ("sentence",), "label", ("negative", "positive"), _ACC,
          submission_files=("SST-2.tsv",)),
    _spec("mrpc", "MRPC", ("sentence1", "sentence2"), ("#1 String", "#2 String"), "Quality",
          ("not_equivalent", "equivalent"), ("f1", "accuracy"), submission_files=("MRPC.tsv",)),
    _spec("stsb", "STS-B", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "score", (),
          ("pearson", "spearman"), submission_files=("STS-B.tsv",)),
    _spec("qqp", "QQP", ("question1", "question2"), ("question1", "question2"), "is_duplicate",
          ("not_duplicate", "duplicate"), ("f1", "accuracy"), submission_files=("QQP.tsv",)),
    _spec("mnli", "MNLI", ("premise", "hypothesis"), ("sentence1", "sentence2"), "gold_label",
          _NLI3, _ACC, eval_splits=("validation_matched", "validation_mismatched"),
          test_splits=("test_matched", "test_mismatched"),
          submission_files=("MNLI-m.tsv", "MNLI-mm.tsv"), submit_label_names=True),
    _spec("qnli", "QNLI", ("question", "sentence"), ("question", "sentence"), "label",
          ("entailment", "not_entailment"), _ACC, submission_files=("QNLI.tsv",),
          submit_label_names=True),
    _spec("rte", "RTE", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label",
          ("entailment", "not_entailment"), _ACC, submission_files=("RTE.tsv",),
          submit_label_names=True),
    _spec("wnli", "WNLI", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label",
          ("not_entailment", "entailment"), _ACC, submission_files=("WNLI.tsv",)),
    # Diagnostic set: unlabeled test only; predict it with an MNLI model. GLUE scores it with
    # the 3-class Matthews correlation (R3).
    _spec("ax", "diagnostic", ("premise", "hypothesis"), ("sentence1", "sentence2"), "", _NLI3,
          ("matthews_corrcoef",), eval_splits=(), submission_files=("AX.tsv",),
          submit_label_names=True, train_split=None),
]}


def get_task(name: str) -> TaskSpec:
  key = name.lower().replace("-", "")
  if key not in TASKS:
    raise ValueError(f"unknown GLUE task {name!r}; known tasks: {', '.join(TASKS)}")
  return TASKS[key]


def _splits(spec: TaskSpec) -> tuple[str, ...]:
  return ((spec.train_split,) if spec.train_split else ()) + spec.eval_splits + spec.test_splits


# ---------------------------------------------------------------------------------------------
# TFDS


def tfds_data_dir(data_dir: str | None = None) -> str:
  return tfds_util.data_dir(data_dir)


def tfds_prepared(spec: TaskSpec, data_dir: str | None = None) -> bool:
  return tfds_util.prepared(spec.tfds_name, data_dir)


def _load_tfds(spec: TaskSpec, split: str, data_dir: str | None) -> dict:
  if data_dir is not None and "://" not in data_dir and not os.path.isdir(data_dir):
    raise FileNotFoundError(f"TFDS data_dir does not exist: {data_dir}")
  return dict(_read_tfds(spec, split, data_dir or os.environ.get(TFDS_DIR_ENV) or None))


@functools.lru_cache(maxsize=16)
def _read_tfds(spec: TaskSpec, split: str, data_dir: str | None) -> dict:
  """One prepared split, read once per process (sweeps and tests train many runs on it; the
  examples are never modified downstream)."""
  import tensorflow_datasets as tfds  # lazy: importing TensorFlow costs seconds

  # batch_size=-1: the whole split as one batch of arrays (GLUE splits fit in memory easily);
  # several times faster than iterating examples.
  ds = tfds.load(spec.tfds_name, split=split, data_dir=data_dir, batch_size=-1)
  cols = tfds.as_numpy(ds)
  texts = [[t.decode("utf-8") for t in cols[k].tolist()] for k in spec.text_keys]
  if not split.startswith("test") and not spec.is_regression:
    bad = (cols["label"] < 0) | (cols["label"] >= spec.num_labels)
    if bad.any():
      i = int(np.argmax(bad))
      raise ValueError(f"TFDS {spec.tfds_name}/{split} under {data_dir}: example idx "
                       f"{int(cols['idx'][i])} has label {int(cols['label'][i])}, outside "
                       f"[0, {spec.num_labels})")
  return _pack(spec, cols["idx"], texts, cols["label"])


# ---------------------------------------------------------------------------------------------
# GLUE TSV (download_glue_data.py layout)


def tsv_path(spec: TaskSpec, split: str, tsv_dir: str) -> str:
  if spec.name == "ax":
    fname = "diagnostic.tsv"
  else:  # validation -> dev, validation_matched -> dev_matched, test_matched -> test_matched
    fname = split.replace("validation", "dev") + ".tsv"
  return os.path.join(tsv_dir, spec.tsv_folder, fname)


def _tsv_lines(path: str):
  """(line number, text) of a UTF-8 file; a clear error naming the file and line on bad
  bytes. utf-8-sig drops the BOM before MRPC's "Quality" header."""
  with open(path, "rb") as f:
    for n, raw in enumerate(f, 1):
      try:
        yield n, raw.decode("utf-8-sig" if n == 1 else "utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(f"{path}:{n}: not valid UTF-8 ({e.reason} at byte {e.start} of the "
                         "line)") from None


def _read_tsv_rows(spec: TaskSpec, path: str, split: str):
  """Yields (line number, row dict) like TFDS' glue builder (CoLA train/dev: headerless, 4
  columns). A header without the task's label column is an error."""
  lines = _tsv_lines(path)
  if spec.name == "cola" and split != "test":
    for n, line in lines:
      row = line.rstrip("\r\n").split("\t")
      yield n, ({"sentence": row[3], "is_acceptable": row[1]} if len(row) >= 4 else {})
    return
  try:
    _, header = next(lines)
  except StopIteration:
    raise ValueError(f"{path} is empty (expected a header row)") from None
  names = header.rstrip("\r\n").split("\t")
  missing = [c for c in spec.tsv_columns if c not in names]
  if not split.startswith("test") and spec.tsv_label and spec.tsv_label not in names:
    missing.append(spec.tsv_label)
  if missing:
    raise ValueError(f"{path}: header has no column {missing} (columns: {names})")
  for n, line in lines:
    values = line.rstrip("\r\n").split("\t")
    yield n, {k: v for k, v in zip(names, values)}


def _parse_label(spec: TaskSpec, value: str, where: str):
  """A TSV label -> float (regression) or class id; anything else is an error naming it."""
  if spec.is_regression:
    try:
      return float(value)
    except ValueError:
      raise ValueError(f"{where}: label {value!r} is not a number") from None
  if value in spec.label_names:
    return spec.label_names.index(value)
  try:
    label = int(value)  # 0/1 label columns (CoLA, SST-2, MRPC, QQP, WNLI)
  except ValueError:
    label = None
  if label is None or not 0 <= label < spec.num_labels:
    raise ValueError(f"{where}: label {value!r} is not one of the task's labels "
                     f"{list(range(spec.num_labels))} / {list(spec.label_names)}")
  return label


def _load_tsv(spec: TaskSpec, split: str, tsv_dir: str) -> dict:
  if not os.path.isdir(tsv_dir):
    raise FileNotFoundError(f"GLUE TSV directory does not exist: {tsv_dir}")
  path = tsv_path(spec, split, tsv_dir)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"GLUE TSV file for {spec.name}/{split} not found: {path} (the TSV "
                            "dir comes from config.data.tsv_dir or $GLUE_DIR)")
  idx, texts, labels, skipped = [], [[] for _ in spec.text_keys], [], []
  test = split.startswith("test")
  for n, (line, row) in enumerate(_read_tsv_rows(spec, path, split)):
    vals = [row.get(c) for c in spec.tsv_columns]
    # Like TFDS, skip malformed rows (missing text columns) but keep counting `n`.
    if any(v is None for v in vals):
      skipped.append(line)
      continue
    if test or not spec.tsv_label:
      label = -1
    elif row.get(spec.tsv_label) in (None, ""):
      raise ValueError(f"{path}:{line}: no {spec.tsv_label!r} value in this row")
    else:
      label = _parse_label(spec, row[spec.tsv_label], f"{path}:{line}")
    idx.append(n)
    labels.append(label)
    for t, v in zip(texts, vals):
      t.append(v)
  if skipped:
    logging.warning("%s: skipped %d malformed row(s) without all text columns (lines %s%s), "
                    "as TFDS does", path, len(skipped), skipped[:5],
                    " ..." if len(skipped) > 5 else "")
  return _pack(spec, idx, texts, labels)


# ---------------------------------------------------------------------------------------------


def _pack(spec: TaskSpec, idx, texts, labels) -> dict:
  # Sorted by idx: TFDS stores examples in hashed order; sorting makes both sources agree.
  order = np.argsort(np.asarray(idx, np.int64), kind="stable")
  texts = [[t[i] for i in order] for t in texts]
  return {
      "idx": np.asarray(idx, np.int32)[order],
      "text_a": texts[0],
      "text_b": texts[1] if spec.is_pair else None,
      "label": np.asarray(labels, np.float32 if spec.is_regression else np.int32)[order],
  }


def resolve_source(spec: TaskSpec, data_dir: str | None = None, source: str = "auto",
                   tsv_dir: str | None = None, download: bool = True) -> str:
  """'tfds' or 'tsv' for `source`="auto": a TFDS copy prepared under the data dir, else the
  GLUE TSVs when a TSV dir is set, else TFDS downloads and prepares the task (download on),
  else a DataNotFoundError naming what was tried and what to set."""
  if source not in ("auto", "tfds", "tsv"):
    raise ValueError(f"source must be 'auto', 'tfds' or 'tsv', got {source!r}")
  tsv_dir = tsv_dir or os.environ.get(GLUE_DIR_ENV) or None
  if source != "auto":
    return source
  to_set = (f"Set --config.data.tfds_data_dir=DIR (or ${TFDS_DIR_ENV}) to a TFDS data dir "
            f"holding {spec.tfds_name} (`tfds build {spec.tfds_name} --data_dir=DIR` where "
            f"there is internet), or --config.data.tsv_dir=DIR (or ${GLUE_DIR_ENV}) to the "
            "GLUE TSVs (download_glue_data.py output).")
  return tfds_util.resolve_auto(spec.tfds_name, data_dir, tsv_dir, "tsv", "GLUE TSV dir",
                                to_set, download)


def load_examples(
    task: str | TaskSpec,
    split: str,
    data_dir: str | None = None,
    source: str = "auto",
    tsv_dir: str | None = None,
    shard: tuple[int, int] | None = None,
    limit: int = 0,
) -> dict:
  """Loads one split: {'idx': int32[N], 'text_a': [str], 'text_b': [str] | None, 'label': [N]}.

  Examples are sorted by idx. label: int32 ClassLabel ids (float32 for stsb); -1 on test
  splits. idx is the data-row number; on test splits it is the GLUE submission index. For
  MRPC train/validation the sources number rows differently (TFDS counts rows of
  msr_paraphrase_train.txt); the examples themselves are the same.

  source: 'tfds' (data_dir, else $TFDS_DATA_DIR, else TFDS' default), 'tsv' (tsv_dir, else
  $GLUE_DIR), or 'auto' (resolve_source: prepared TFDS, else the TSVs, else a TFDS download).

  limit > 0: the first `limit` examples. shard=(index, count): only that contiguous part of
  them (sharding.shard_range). From TFDS a shard reads only its own records (a split slice
  `train[a:b]` in TFDS's record order, then sorted by idx); from TSV files the examples are
  sliced in idx order (reading a GLUE TSV is cheap; tokenizing is what sharding saves).
  """
  spec = task if isinstance(task, TaskSpec) else get_task(task)
  if split not in _splits(spec):
    raise ValueError(f"{spec.name} has no split {split!r}; splits: {_splits(spec)}")
  tsv_dir = tsv_dir or os.environ.get(GLUE_DIR_ENV) or None
  source = resolve_source(spec, data_dir, source, tsv_dir)
  if source == "tfds":
    if shard is not None and shard[1] > 1:
      n = _tfds_num_examples(spec, split, data_dir)
      a, b = shard_range(min(n, limit) if limit > 0 else n, *shard)
      return _load_tfds(spec, f"{split}[{a}:{b}]", data_dir)
    ex = _load_tfds(spec, split, data_dir)
  elif source == "tsv":
    if not tsv_dir:
      raise ValueError(f"source='tsv' needs tsv_dir or ${GLUE_DIR_ENV}")
    ex = _load_tsv(spec, split, tsv_dir)
  else:
    raise ValueError(f"source must be 'auto', 'tfds' or 'tsv', got {source!r}")
  n = len(ex["idx"])
  a, b = 0, (min(n, limit) if limit > 0 else n)
  if shard is not None:
    a, b = shard_range(b, *shard)
  if (a, b) != (0, n):
    ex = {k: (v[a:b] if v is not None else None) for k, v in ex.items()}
  return ex


def _tfds_num_examples(spec: TaskSpec, split: str, data_dir: str | None) -> int:
  import tensorflow_datasets as tfds  # lazy: importing TensorFlow costs seconds
  builder = tfds.builder(spec.tfds_name, data_dir=data_dir or os.environ.get(TFDS_DIR_ENV)
                         or None)
  return int(builder.info.splits[split].num_examples)
