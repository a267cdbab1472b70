"""Entity-level NER metrics, equal to `seqeval`'s default (conlleval.pl-compatible) mode.

Tags are strings `B-X`, `I-X`, `E-X`, `S-X` or `O` (prefix style). Chunks are read the way
conlleval.pl and seqeval (mode=None) read them, which handles both IOB2 and IOB1 (in IOB1 an
entity may start with `I-`; `B-` only separates two adjacent entities of the same type):
a chunk starts at B/S, at I/E after O or after a tag of another type, and at I/E right after an
E/S; it ends before O, before B/S, before a tag of another type and after E/S.

`seqeval` is a test-time reference only (tests/test_ner_qa.py compares against it); nothing here
imports it.
"""

from __future__ import annotations

import collections
from typing import Sequence

Entity = tuple[str, int, int]  # (type, first index, last index), both inclusive


def _split(tag: str) -> tuple[str, str]:
  """'B-PER' -> ('B', 'PER'); 'O' -> ('O', '_'); a bare 'B' -> ('B', '_') (as seqeval)."""
  prefix = tag[0] if tag else "O"
  type_ = tag[1:].split("-", maxsplit=1)[-1] or "_"
  return prefix, type_


def _end_of_chunk(prev_tag, tag, prev_type, type_) -> bool:
  if prev_tag in ("E", "S"):
    return True
  if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
    return True
  return prev_tag not in ("O", ".") and prev_type != type_


def _start_of_chunk(prev_tag, tag, prev_type, type_) -> bool:
  if tag in ("B", "S"):
    return True
  if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
    return True
  return tag not in ("O", ".") and prev_type != type_


def get_entities(seq: Sequence[str] | Sequence[Sequence[str]]) -> list[Entity]:
  """Chunks of a tag sequence as (type, start, end); a list of sentences is joined with an 'O'
  between sentences (indices then count over the joined sequence), as seqeval does."""
  seq = list(seq)
  if any(isinstance(s, (list, tuple)) for s in seq):
    seq = [t for sent in seq for t in list(sent) + ["O"]]
  prev_tag, prev_type, begin = "O", "", 0
  chunks = []
  for i, chunk in enumerate(seq + ["O"]):
    tag, type_ = _split(chunk)
    if _end_of_chunk(prev_tag, tag, prev_type, type_):
      chunks.append((prev_type, begin, i - 1))
    if _start_of_chunk(prev_tag, tag, prev_type, type_):
      begin = i
    prev_tag, prev_type = tag, type_
  return chunks


def iob1_to_iob2(tags: Sequence[str]) -> list[str]:
  """Rewrites one sentence's tags so every entity starts with B- (IOB2), keeping exactly the
  entities get_entities() reads: an I-X that starts a chunk becomes B-X. IOB2 input (and IOBES
  input without chunk-starting I-/E- tags) is returned unchanged."""
  out = list(tags)
  prev_tag, prev_type = "O", ""
  for i, t in enumerate(tags):
    tag, type_ = _split(t)
    if tag == "I" and _start_of_chunk(prev_tag, tag, prev_type, type_):
      out[i] = "B-" + type_
    prev_tag, prev_type = tag, type_
  return out


def is_iob1(sentences: Sequence[Sequence[str]]) -> bool:
  """True if some entity starts with I- (impossible in IOB2, the norm in IOB1)."""
  return any(a != b for s in sentences for a, b in zip(s, iob1_to_iob2(s)))


def _prf(tp: int, n_pred: int, n_true: int) -> tuple[float, float, float]:
  # Zero denominators give 0, seqeval's zero_division default (with its warning dropped).
  p = tp / n_pred if n_pred else 0.0
  r = tp / n_true if n_true else 0.0
  f = 2 * p * r / (p + r) if p + r else 0.0
  return p, r, f


def ner_scores(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]]) -> dict:
  """Micro-averaged entity precision / recall / F1 over all sentences (seqeval's
  precision_score / recall_score / f1_score with average='micro'), word-level tag accuracy
  (seqeval's accuracy_score), and per-type `f1_<TYPE>` (seqeval's classification_report).

  y_true, y_pred: one list of tag strings per sentence, of equal lengths.
  """
  if len(y_true) != len(y_pred):
    raise ValueError(f"{len(y_true)} gold sentences but {len(y_pred)} predicted")
  n_words = n_correct = 0
  for i, (t, p) in enumerate(zip(y_true, y_pred)):
    if len(t) != len(p):
      raise ValueError(f"sentence {i}: {len(t)} gold tags but {len(p)} predicted")
    n_words += len(t)
    n_correct += sum(a == b for a, b in zip(t, p))
  if n_words == 0:
    raise ValueError("no words to score")
  true = collections.defaultdict(set)
  pred = collections.defaultdict(set)
  for type_, s, e in get_entities(list(map(list, y_true))):
    true[type_].add((s, e))
  for type_, s, e in get_entities(list(map(list, y_pred))):
    pred[type_].add((s, e))
  types = sorted(set(true) | set(pred))
  tp = {k: len(true[k] & pred[k]) for k in types}
  p, r, f = _prf(sum(tp.values()), sum(len(pred[k]) for k in types),
                 sum(len(true[k]) for k in types))
  out = {"precision": p, "recall": r, "f1": f, "accuracy": n_correct / n_words,
         "num_gold_entities": float(sum(len(true[k]) for k in types))}
  for k in types:
    out[f"f1_{k}"] = _prf(tp[k], len(pred[k]), len(true[k]))[2]
  return out
