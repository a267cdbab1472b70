"""SQuAD v1.1: examples from TFDS `squad/v1.1` or the official JSON, a deterministic by-article
split, sliding-window featurisation with character offsets, and n-best span decoding.

Sources: 'tfds' (TFDS `squad/v1.1`, splits train/validation, from `data_dir` or $TFDS_DATA_DIR),
'file' (the official train-v1.1.json / dev-v1.1.json in `squad_dir` or $SQUAD_DIR; 'tsv' is
accepted as a synonym, the name the trainer's config check knows for "the non-TFDS fallback"),
or 'auto' (TFDS if prepared, else the JSON files if a directory is known). Both give the same
examples, sorted by question id.

Windows (BERT's run_squad.py scheme): the question (at most `max_query_len` WordPiece tokens)
is followed by a window of at most W = max_len - 3 - len(question) context tokens; windows
start at 0, s, 2s, ... with s = min(doc_stride, W) until one reaches the context's end, so
an answer of up to W - s + 1 tokens lies whole in some window. Context tokens keep the
tokenizer's character offsets, so predicted spans are cut from the original context string.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from squeezebert.data import tfds_util

TFDS_NAME = "squad/v1.1"
TFDS_DIR_ENV = "TFDS_DATA_DIR"
SQUAD_DIR_ENV = "SQUAD_DIR"
SPLITS = ("train", "validation")
FILES = {"train": "train-v1.1.json", "validation": "dev-v1.1.json"}
NEG = -1e9  # logit of positions that cannot be an answer


@dataclasses.dataclass
class Example:
  id: str
  title: str
  context: str
  question: str
  answers: list  # answer texts
  answer_starts: list  # their character offsets in `context`


def tfds_data_dir(data_dir: str | None = None) -> str:
  return tfds_util.data_dir(data_dir)


def tfds_prepared(data_dir: str | None = None) -> bool:
  return tfds_util.prepared(TFDS_NAME, data_dir)


def examples_from_json(obj: dict) -> list[Example]:
  """Examples of a parsed official SQuAD JSON file (its "data" list of articles)."""
  if not isinstance(obj, dict) or "data" not in obj:
    raise ValueError("not a SQuAD JSON file: no top-level 'data' list")
  out = []
  for article in obj["data"]:
    title = article.get("title", "")
    for paragraph in article["paragraphs"]:
      context = paragraph["context"]
      for qa in paragraph["qas"]:
        answers = qa.get("answers", [])
        out.append(Example(qa["id"], title, context, qa["question"],
                           [a["text"] for a in answers],
                           [int(a["answer_start"]) for a in answers]))
  return out


def examples_from_tfds_records(records) -> list[Example]:
  """Examples from TFDS squad records as tfds.as_numpy yields them (bytes strings)."""
  dec = lambda b: b.decode("utf-8") if isinstance(b, bytes) else str(b)
  out = []
  for r in records:
    ans = r["answers"]
    out.append(Example(dec(r["id"]), dec(r["title"]), dec(r["context"]), dec(r["question"]),
                       [dec(t) for t in list(ans["text"])],
                       [int(s) for s in list(ans["answer_start"])]))
  return out


def _load_tfds(split: str, data_dir: str | None) -> list[Example]:
  import tensorflow_datasets as tfds  # lazy: importing TensorFlow costs seconds

  if data_dir is not None and "://" not in data_dir and not os.path.isdir(data_dir):
    raise FileNotFoundError(f"TFDS data_dir does not exist: {data_dir}")
  if not tfds_prepared(data_dir):
    raise FileNotFoundError(f"TFDS dataset {TFDS_NAME} is not prepared under "
                            f"{tfds_data_dir(data_dir)} (source='tfds'; source='auto' would "
                            "download it)")
  data_dir = data_dir or os.environ.get(TFDS_DIR_ENV) or None
  ds = tfds.load(TFDS_NAME, split=split, data_dir=data_dir, shuffle_files=False,
                 download=False)
  return check_answers(examples_from_tfds_records(tfds.as_numpy(ds)),
                       f"TFDS {TFDS_NAME}/{split} under {data_dir}")


def _load_file(split: str, squad_dir: str) -> list[Example]:
  if not os.path.isdir(squad_dir):
    raise FileNotFoundError(f"SQuAD directory does not exist: {squad_dir}")
  path = os.path.join(squad_dir, FILES[split])
  if not os.path.isfile(path):
    raise FileNotFoundError(f"SQuAD v1.1 file for split {split!r} not found: {path}")
  try:
    with open(path, encoding="utf-8") as f:
      obj = json.load(f)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: not a valid UTF-8 JSON file ({e})") from None
  try:
    return check_answers(examples_from_json(obj), path)
  except (KeyError, TypeError) as e:
    raise ValueError(f"{path}: not in the SQuAD v1.1 format (missing or malformed {e})") from None


def check_answers(examples: list[Example], source: str) -> list[Example]:
  """Every gold answer is non-empty and found in its context at its answer_start."""
  for e in examples:
    for text, start in zip(e.answers, e.answer_starts):
      if not text.strip() or start < 0 or e.context[start:start + len(text)] != text:
        raise ValueError(f"{source}: question {e.id}: answer {text!r} is not in its context "
                         f"at character {start} (context there: "
                         f"{e.context[max(start, 0):start + len(text)]!r})")
  return examples


def resolve_source(data_dir: str | None = None, source: str = "auto",
                   squad_dir: str | None = None, download: bool = True) -> str:
  """'tfds' or 'file' for `source`="auto": a prepared TFDS copy, else the official JSON files
  in squad_dir, else a TFDS download (download on), else DataNotFoundError."""
  if source == "tsv":
    source = "file"
  if source not in ("auto", "tfds", "file"):
    raise ValueError(f"source must be auto|tfds|file (tsv), got {source!r}")
  squad_dir = squad_dir or os.environ.get(SQUAD_DIR_ENV) or None
  if source != "auto":
    return source
  to_set = (f"Set --config.data.tfds_data_dir=DIR (or ${TFDS_DIR_ENV}) to a TFDS data dir "
            f"holding {TFDS_NAME}, or --config.data.squad_dir=DIR (or ${SQUAD_DIR_ENV}) to a "
            f"dir with {FILES['train']} / {FILES['validation']}.")
  return tfds_util.resolve_auto(TFDS_NAME, data_dir, squad_dir, "file", "JSON dir", to_set,
                                download)


def load_examples(split: str, data_dir: str | None = None, source: str = "auto",
                  squad_dir: str | None = None, download: bool = True) -> list[Example]:
  """Examples of `split` ('train' | 'validation'), sorted by question id."""
  if split not in SPLITS:
    raise ValueError(f"squad has no split {split!r}; splits: {SPLITS}")
  squad_dir = squad_dir or os.environ.get(SQUAD_DIR_ENV) or None
  source = resolve_source(data_dir, source, squad_dir, download)
  if source == "tfds":
    ex = _load_tfds(split, data_dir)
  elif source == "file":
    if not squad_dir:
      raise ValueError(f"source='file' needs config.data.squad_dir or ${SQUAD_DIR_ENV}")
    ex = _load_file(split, squad_dir)
  ids = [e.id for e in ex]
  if len(set(ids)) != len(ids):
    raise ValueError(f"squad/{split}: duplicate question ids")
  return sorted(ex, key=lambda e: e.id)


def split_articles(examples: list[Example], train_articles: float, seed: int = 0
                   ) -> tuple[list[Example], list[Example], list[str]]:
  """Splits examples BY ARTICLE (no context is shared): titles are sorted, permuted with
  `seed`, and the first k go to training, k = round(train_articles * n) for a fraction in
  (0, 1), else int(train_articles). Returns (train, held-out, train titles)."""
  titles = sorted({e.title for e in examples})
  n = len(titles)
  k = int(round(train_articles * n)) if 0 < train_articles < 1 else int(train_articles)
  if not 1 <= k < n:
    raise ValueError(f"squad_train_articles={train_articles} gives {k} training articles of "
                     f"{n}; need at least one article on each side")
  perm = np.random.default_rng(seed).permutation(n)
  train_titles = sorted(titles[i] for i in perm[:k])
  chosen = set(train_titles)
  return ([e for e in examples if e.title in chosen],
          [e for e in examples if e.title not in chosen], train_titles)


def answer_token_span(offsets, char_start: int, text: str, context: str, qid: str = ""
                      ) -> tuple[int, int]:
  """First and last context token overlapping the answer's characters."""
  if not text.strip():
    raise ValueError(f"question {qid}: empty answer text")
  end = char_start + len(text)
  if char_start < 0 or context[char_start:end] != text:
    raise ValueError(f"question {qid}: answer {text!r} not found in its context at character "
                     f"{char_start} (context there: {context[max(char_start, 0):end]!r})")
  toks = [i for i, (s, e) in enumerate(offsets) if e > char_start and s < end and e > s]
  if not toks:
    raise ValueError(f"question {qid}: answer {text!r} at character {char_start} covers no "
                     "WordPiece token of the context")
  return toks[0], toks[-1]


@dataclasses.dataclass
class Features:
  """Model inputs of every window plus what decoding needs (host side)."""
  input_ids: np.ndarray        # [F, max_len] int32
  token_type_ids: np.ndarray   # [F, max_len] int8
  lengths: np.ndarray          # [F]
  start_positions: np.ndarray  # [F] gold span of the first answer, 0 ([CLS]) if not inside
  end_positions: np.ndarray    # [F]
  example: np.ndarray          # [F] index of the feature's example
  ctx_offset: np.ndarray       # [F] position of the window's first context token
  win_lo: np.ndarray           # [F] window = context tokens [win_lo, win_hi)
  win_hi: np.ndarray           # [F]
  offsets: list                # per example: [T, 2] int32 char offsets of the context tokens
  max_context_window: list     # per example: [T] feature index whose window best centres
  #                              each context token (BERT's token_is_max_context)
  answer_spans: list           # per example: [(first tok, last tok)] of every gold answer
  num_truncated_questions: int

  def __len__(self):
    return len(self.lengths)


def windows(num_tokens: int, room: int, doc_stride: int) -> list[tuple[int, int]]:
  if room < 1:
    raise ValueError(f"no room for context tokens ({room}); raise max_len or lower "
                     "max_query_len")
  if doc_stride < 1:
    raise ValueError(f"doc_stride must be >= 1, got {doc_stride}")
  step = min(doc_stride, room)
  out, start = [], 0
  while True:
    end = min(start + room, num_tokens)
    out.append((start, end))
    if end >= num_tokens:
      return out
    start += step


def featurize(tokenizer, examples: list[Example], max_len: int = 384, doc_stride: int = 128,
              max_query_len: int = 64) -> Features:
  """[CLS] question [SEP] context-window [SEP] features of every example."""
  cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
  for e in examples:
    if not e.question.strip():
      raise ValueError(f"question {e.id}: empty question")
    if not e.context.strip():
      raise ValueError(f"question {e.id}: empty context")
  contexts = sorted({e.context for e in examples})
  cenc = dict(zip(contexts, tokenizer.encode_batch(contexts, add_special_tokens=False)))
  qenc = tokenizer.encode_batch([e.question for e in examples], add_special_tokens=False)
  rows = {k: [] for k in ("ids", "types", "start", "end", "example", "ctx", "lo", "hi")}
  offsets_all, maxctx_all, spans_all = [], [], []
  q_trunc = 0
  for xi, (e, q) in enumerate(zip(examples, qenc)):
    c = cenc[e.context]
    offsets = np.asarray(c.offsets, np.int32).reshape(-1, 2)
    if len(c.ids) == 0:
      raise ValueError(f"question {e.id}: the context has no WordPiece tokens")
    q_ids = q.ids
    if not q_ids:
      raise ValueError(f"question {e.id}: the question has no WordPiece tokens")
    if len(q_ids) > max_query_len:
      q_ids, q_trunc = q_ids[:max_query_len], q_trunc + 1
    spans = [answer_token_span(c.offsets, s, t, e.context, e.id)
             for t, s in zip(e.answers, e.answer_starts)]
    room = max_len - 3 - len(q_ids)
    wins = windows(len(c.ids), room, doc_stride)
    first_feature = len(rows["ids"])
    best = np.full((len(c.ids),), -1, np.int64)
    best_score = np.full((len(c.ids),), -np.inf)
    ctx_off = len(q_ids) + 2
    for wi, (lo, hi) in enumerate(wins):
      ids = [cls_id, *q_ids, sep_id, *c.ids[lo:hi], sep_id]
      types = [0] * ctx_off + [1] * (hi - lo + 1)
      t = np.arange(lo, hi)
      score = np.minimum(t - lo, hi - 1 - t) + 0.01 * (hi - lo)
      better = score > best_score[lo:hi]  # ties: the earlier window, as BERT
      best[lo:hi][better], best_score[lo:hi][better] = first_feature + wi, score[better]
      sp = ep = 0
      if spans and lo <= spans[0][0] and spans[0][1] < hi:
        sp, ep = ctx_off + spans[0][0] - lo, ctx_off + spans[0][1] - lo
      for k, v in zip(("ids", "types", "start", "end", "example", "ctx", "lo", "hi"),
                      (ids, types, sp, ep, xi, ctx_off, lo, hi)):
        rows[k].append(v)
    offsets_all.append(offsets)
    maxctx_all.append(best)
    spans_all.append(spans)
  n = len(rows["ids"])
  input_ids = np.zeros((n, max_len), np.int32)
  types = np.zeros((n, max_len), np.int8)
  lengths = np.zeros((n,), np.int32)
  for i, (a, t) in enumerate(zip(rows["ids"], rows["types"])):
    input_ids[i, :len(a)], types[i, :len(t)], lengths[i] = a, t, len(a)
  as_int = lambda k: np.asarray(rows[k], np.int32).reshape(n)
  return Features(input_ids, types, lengths, as_int("start"), as_int("end"), as_int("example"),
                  as_int("ctx"), as_int("lo"), as_int("hi"), offsets_all, maxctx_all,
                  spans_all, q_trunc)


def decode(feats: Features, examples: list[Example], feature_ids, start_logits, end_logits,
           n_best_size: int = 20, max_answer_len: int = 30) -> dict:
  """{question id: answer text}: the best-scoring span (start + end logit) over all windows of
  each example, among the n_best_size best starts and ends of each window's context tokens,
  with end >= start, at most max_answer_len tokens, and a start token whose max-context window
  is this one. Examples without a feature in `feature_ids` get no prediction."""
  feature_ids = np.asarray(feature_ids)
  start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
  best: dict[int, tuple[float, int, int]] = {}
  for row, f in enumerate(feature_ids):
    xi = int(feats.example[f])
    lo, hi, off = int(feats.win_lo[f]), int(feats.win_hi[f]), int(feats.ctx_offset[f])
    s_log = start_logits[row, off:off + hi - lo].astype(np.float64)
    e_log = end_logits[row, off:off + hi - lo].astype(np.float64)
    k = min(n_best_size, hi - lo)
    starts = np.argsort(-s_log, kind="stable")[:k]
    ends = np.argsort(-e_log, kind="stable")[:k]
    maxctx = feats.max_context_window[xi]
    for s in starts:
      if maxctx[lo + s] != f:
        continue
      for e in ends:
        if e < s or e - s + 1 > max_answer_len:
          continue
        score = s_log[s] + e_log[e]
        if xi not in best or score > best[xi][0]:
          best[xi] = (score, lo + int(s), lo + int(e))
  out = {}
  for xi, (_, ts, te) in best.items():
    ex, offsets = examples[xi], feats.offsets[xi]
    out[ex.id] = ex.context[offsets[ts, 0]:offsets[te, 1]]
  for f in feature_ids:  # an example whose every window had no valid span answers ""
    out.setdefault(examples[int(feats.example[f])].id, "")
  return out
