"""GLUE metrics vs hand-computed values and sklearn/scipy; submission file format."""

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from squeezebert.metrics import glue as metrics
from squeezebert.tasks import glue as glue_task

# TP=3 (rows 0, 3, 5), FP=1 (row 2), FN=1 (row 4), TN=1 (row 1).
P = np.array([1, 0, 1, 1, 0, 1])
Y = np.array([1, 0, 0, 1, 1, 1])


def test_binary_metrics_by_hand():
  assert metrics.accuracy(P, Y) == pytest.approx(4 / 6)
  assert metrics.f1(P, Y) == pytest.approx(0.75)  # precision = recall = 3/4
  # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (3 - 1) / sqrt(4*4*2*2)
  assert metrics.matthews_corrcoef(P, Y) == pytest.approx(0.25)


def test_correlations_by_hand():
  x, y = np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0])
  assert metrics.pearson(x, y) == pytest.approx(9 / np.sqrt(84))
  assert metrics.spearman(x, y) == pytest.approx(1.0)
  assert metrics.pearson(np.ones(3), y) == 0.0  # constant predictions: defined as 0, not NaN


def test_against_sklearn_scipy_with_padding_weights():
  rng = np.random.default_rng(0)
  p, y = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
  s, t = rng.normal(size=200), rng.normal(size=200)
  ref = {"accuracy": sklearn.metrics.accuracy_score(y, p), "f1": sklearn.metrics.f1_score(y, p),
         "matthews_corrcoef": sklearn.metrics.matthews_corrcoef(y, p),
         "pearson": scipy.stats.pearsonr(s, t)[0], "spearman": scipy.stats.spearmanr(s, t)[0]}
  # Padding rows (weight 0) with adversarial contents must not change anything.
  w = np.r_[np.ones(200), np.zeros(24)].astype(np.float32)
  p_pad, y_pad = np.r_[p, np.ones(24, int)], np.r_[y, np.zeros(24, int)]
  s_pad, t_pad = np.r_[s, np.full(24, 9.0)], np.r_[t, np.full(24, -9.0)]
  for name in ("accuracy", "f1", "matthews_corrcoef"):
    fn = metrics.METRICS[name]
    assert fn(p, y) == pytest.approx(ref[name])
    assert fn(p_pad, y_pad, w) == pytest.approx(ref[name])
    assert fn(p_pad, y_pad) != pytest.approx(ref[name])
  for name in ("pearson", "spearman"):
    fn = metrics.METRICS[name]
    assert fn(s_pad, t_pad, w) == pytest.approx(ref[name])
    assert fn(s_pad, t_pad) != pytest.approx(ref[name])
  with pytest.raises(ValueError, match="weight > 0"):
    metrics.accuracy(p, y, np.zeros(200))


def test_glue_metrics():
  out = glue_task.glue_metrics("mrpc", P, Y)
  assert out == pytest.approx({"f1": 0.75, "accuracy": 4 / 6, "combined": (0.75 + 4 / 6) / 2})
  logits = np.stack([1 - P, P], -1).astype(np.float32)  # [N, 2] logits -> argmax
  assert glue_task.glue_metrics("mrpc", logits, Y) == out
  assert set(glue_task.glue_metrics("cola", P, Y)) == {"matthews_corrcoef", "combined"}
  assert set(glue_task.glue_metrics("sst2", P, Y)) == {"accuracy", "combined"}
  s = np.array([[0.5], [1.0], [4.0]])  # [N, 1] regression outputs
  out = glue_task.glue_metrics("stsb", s, [1.0, 2.0, 3.0], weights=[1, 1, 1])
  assert set(out) == {"pearson", "spearman", "combined"} and out["spearman"] == pytest.approx(1.0)
  mnli = glue_task.glue_metrics("mnli", [0, 1, 2, 2], [0, 1, 2, 0], weights=[1, 1, 1, 0])
  assert mnli == {"accuracy": 1.0, "combined": 1.0}


def _read(path):
  with open(path) as f:
    return [line.rstrip("\n").split("\t") for line in f]


def test_write_glue_submission(tmp_path):
  path = glue_task.write_glue_submission("rte", [2, 0, 1], [1, 0, 1], tmp_path)
  assert path.endswith("RTE.tsv")
  assert _read(path) == [["index", "prediction"], ["0", "entailment"], ["1", "not_entailment"],
                         ["2", "not_entailment"]]
  path = glue_task.write_glue_submission("cola", [1, 0], np.array([[0.1, 0.9], [0.8, 0.2]]), tmp_path)
  assert path.endswith("CoLA.tsv") and _read(path)[1:] == [["0", "0"], ["1", "1"]]
  path = glue_task.write_glue_submission("stsb", [0, 1, 2], [-0.3, 2.34567, 5.7], tmp_path)
  assert path.endswith("STS-B.tsv") and _read(path)[1:] == [["0", "0.000"], ["1", "2.346"],
                                                              ["2", "5.000"]]
  with pytest.raises(ValueError, match="test_matched"):
    glue_task.write_glue_submission("mnli", [0], [0], tmp_path)
  path = glue_task.write_glue_submission("mnli", [0, 1], [2, 1], tmp_path, split="test_mismatched")
  assert path.endswith("MNLI-mm.tsv") and _read(path)[1:] == [["0", "contradiction"],
                                                              ["1", "neutral"]]
  path = glue_task.write_glue_submission("ax", [0], [0], tmp_path)
  assert path.endswith("AX.tsv") and _read(path)[1] == ["0", "entailment"]
  assert _read(glue_task.write_glue_submission("wnli", [0], [1], tmp_path))[1] == ["0", "1"]
  with pytest.raises(ValueError, match="duplicate"):
    glue_task.write_glue_submission("sst2", [0, -1, -1], [1, 0, 0], tmp_path)
