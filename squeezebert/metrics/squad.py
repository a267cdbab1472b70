"""The official SQuAD v1.1 metrics (evaluate-v1.1.py), reimplemented line for line.

Answers are normalised by lower-casing, removing every `string.punctuation` character, removing
the words a/an/the and collapsing whitespace. Exact match and token F1 are taken against every
gold answer of a question and the best is kept; the totals are percentages over all questions of
the dataset (a question without a prediction scores 0, as in the official script).
"""

from __future__ import annotations

import collections
import re
import string

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
  """Lower text and remove punctuation, articles and extra whitespace (official order)."""
  s = s.lower()
  s = "".join(ch for ch in s if ch not in _PUNCT)
  s = _ARTICLES.sub(" ", s)
  return " ".join(s.split())


def f1_score(prediction: str, ground_truth: str) -> float:
  prediction_tokens = normalize_answer(prediction).split()
  ground_truth_tokens = normalize_answer(ground_truth).split()
  common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
  num_same = sum(common.values())
  if num_same == 0:
    return 0.0
  precision = 1.0 * num_same / len(prediction_tokens)
  recall = 1.0 * num_same / len(ground_truth_tokens)
  return (2 * precision * recall) / (precision + recall)


def exact_match_score(prediction: str, ground_truth: str) -> float:
  return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def metric_max_over_ground_truths(metric_fn, prediction: str, ground_truths) -> float:
  if not ground_truths:
    raise ValueError("a question without gold answers cannot be scored")
  return max(metric_fn(prediction, gt) for gt in ground_truths)


def squad_scores(gold: dict, predictions: dict) -> dict:
  """gold: {question id: [answer texts]}; predictions: {question id: text}.

  Returns {'exact_match': %, 'f1': %, 'num_questions': n, 'num_unanswered': k} over every
  question in `gold`; predictions for ids not in `gold` are ignored (as in the official script).
  """
  if not gold:
    raise ValueError("no questions to score")
  em = f1 = 0.0
  missing = 0
  for qid, answers in gold.items():
    if qid not in predictions:
      missing += 1
      continue
    em += metric_max_over_ground_truths(exact_match_score, predictions[qid], answers)
    f1 += metric_max_over_ground_truths(f1_score, predictions[qid], answers)
  n = len(gold)
  return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n, "num_questions": float(n),
          "num_unanswered": float(missing)}


def evaluate_official(dataset: list, predictions: dict) -> dict:
  """`evaluate(dataset, predictions)` of evaluate-v1.1.py: `dataset` is the JSON's "data" list."""
  gold = {qa["id"]: [a["text"] for a in qa["answers"]]
          for article in dataset for paragraph in article["paragraphs"]
          for qa in paragraph["qas"]}
  out = squad_scores(gold, predictions)
  return {"exact_match": out["exact_match"], "f1": out["f1"]}
