"""GLUE metrics (sklearn/scipy) and the GLUE benchmark submission writer.

Every metric takes an optional per-example `weights` mask: rows with weight 0 (batch padding)
are dropped; the remaining rows count equally.
"""

from __future__ import annotations

import os

import numpy as np
import scipy.stats
import sklearn.metrics

from squeezebert.data.glue import TaskSpec, get_task


def _masked(preds, labels, weights):
  preds, labels = np.asarray(preds), np.asarray(labels)
  if preds.shape != labels.shape:
    raise ValueError(f"predictions {preds.shape} and labels {labels.shape} differ in shape")
  if weights is not None:
    keep = np.asarray(weights).reshape(-1) > 0
    preds, labels = preds[keep], labels[keep]
  if preds.size == 0:
    raise ValueError("no examples with weight > 0")
  return preds, labels


def accuracy(preds, labels, weights=None) -> float:
  p, y = _masked(preds, labels, weights)
  return float(np.mean(p == y))


def f1(preds, labels, weights=None) -> float:
  """Binary F1 of the positive class 1 (MRPC 'equivalent', QQP 'duplicate')."""
  p, y = _masked(preds, labels, weights)
  return float(sklearn.metrics.f1_score(y, p, pos_label=1, average="binary", zero_division=0))


def matthews_corrcoef(preds, labels, weights=None) -> float:
  p, y = _masked(preds, labels, weights)
  return float(sklearn.metrics.matthews_corrcoef(y, p))


def _corr(fn, preds, labels, weights) -> float:
  p, y = _masked(preds, labels, weights)
  # Undefined for constant inputs; report 0 (sklearn's MCC convention) rather than NaN so
  # best-checkpoint comparisons stay meaningful.
  if p.size < 2 or np.all(p == p[0]) or np.all(y == y[0]):
    return 0.0
  return float(fn(p.astype(np.float64), y.astype(np.float64))[0])


def pearson(preds, labels, weights=None) -> float:
  return _corr(scipy.stats.pearsonr, preds, labels, weights)


def spearman(preds, labels, weights=None) -> float:
  return _corr(scipy.stats.spearmanr, preds, labels, weights)


METRICS = {"accuracy": accuracy, "f1": f1, "matthews_corrcoef": matthews_corrcoef,
           "pearson": pearson, "spearman": spearman}


def to_predictions(spec: TaskSpec, outputs) -> np.ndarray:
  """Model outputs -> predictions: argmax of [N, C] logits, squeeze of [N, 1] regression."""
  out = np.asarray(outputs)
  if spec.is_regression:
    return out.reshape(len(out)).astype(np.float32)
  return out.argmax(-1) if out.ndim == 2 else out.astype(np.int64)


def glue_metrics(task_name: str, predictions, labels, weights=None) -> dict[str, float]:
  """The task's official metrics plus 'combined' (their mean, the GLUE task score).

  predictions: class ids or [N, C] logits (classification), scores or [N, 1] (STS-B).
  """
  spec = get_task(task_name)
  preds = to_predictions(spec, predictions)
  labels = np.asarray(labels).reshape(len(preds))
  out = {name: METRICS[name](preds, labels, weights) for name in spec.metrics}
  out["combined"] = float(np.mean(list(out.values())))
  return out


def write_glue_submission(task_name: str, idx, predictions, out_dir: str,
                          split: str | None = None) -> str:
  """Writes the GLUE server's <TASK>.tsv (`index<TAB>prediction`, sorted by index); returns path.

  Predictions are label names for NLI tasks (MNLI, QNLI, RTE, AX), 0/1 for CoLA, SST-2, MRPC,
  QQP and WNLI, and scores with 3 decimals clipped to [0, 5] for STS-B. `split` picks the
  file for tasks with several test splits (MNLI: test_matched / test_mismatched).
  """
  spec = get_task(task_name)
  if split is None:
    if len(spec.test_splits) != 1:
      raise ValueError(f"{spec.name} has several test splits; pass split=, one of "
                       f"{spec.test_splits}")
    split = spec.test_splits[0]
  preds = to_predictions(spec, predictions)
  idx = np.asarray(idx).reshape(-1)
  if len(idx) != len(preds):
    raise ValueError(f"{len(idx)} indices but {len(preds)} predictions")
  if len(np.unique(idx)) != len(idx):
    raise ValueError("duplicate indices: was batch padding (idx -1) filtered out?")
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, spec.submission_file(split))
  with open(path, "w") as f:
    f.write("index\tprediction\n")
    for i in np.argsort(idx, kind="stable"):
      if spec.is_regression:
        value = f"{float(np.clip(preds[i], 0.0, 5.0)):.3f}"
      elif spec.submit_label_names:
        value = spec.label_names[int(preds[i])]
      else:
        value = str(int(preds[i]))
      f.write(f"{int(idx[i])}\t{value}\n")
  return path
