"""GLUE metrics (sklearn/scipy): the official metric of each task by name.

Every metric takes an optional per-example `weights` mask: rows with weight 0 (batch padding)
are dropped; the remaining rows count equally.
"""

from __future__ import annotations


import numpy as np
import scipy.stats
import sklearn.metrics



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


def to_predictions(outputs, regression: bool) -> np.ndarray:
  """Model outputs -> predictions: argmax of [N, C] logits, squeeze of [N, 1] regression."""
  out = np.asarray(outputs)
  if regression:
    return out.reshape(len(out)).astype(np.float32)
  return out.argmax(-1) if out.ndim == 2 else out.astype(np.int64)


def compute(metric_names, predictions, labels, weights=None, regression: bool = False
            ) -> dict[str, float]:
  """The named metrics (keys of METRICS) plus 'combined' (their mean, the GLUE task score).
  predictions: class ids or [N, C] logits (classification), scores or [N, 1] (regression)."""
  preds = to_predictions(predictions, regression)
  labels = np.asarray(labels).reshape(len(preds))
  out = {name: METRICS[name](preds, labels, weights) for name in metric_names}
  out["combined"] = float(np.mean(list(out.values())))
  return out
