"""Documents -> packed sentence-order-prediction (SOP) sequences for MLM pretraining.

ALBERT's recipe (create_instances_from_document), which the SqueezeBERT paper follows:
sentences of one document are accumulated up to the target length (max_len - 3 tokens, with a
10% chance of a shorter random target), cut at a random sentence boundary into segments A and B
of consecutive text, and A/B are swapped for half of the pairs: `labels` is 1 when swapped
(HF's sentence_order_label convention). Filling each sequence up to the target length with
whole sentences is the packing. Masking is NOT done here: it runs inside the jitted train step
(squeezebert/train/masking.py), so every step of every epoch draws fresh masks.

The tokenized result is cached as .npz under `cache_dir` keyed by every input that affects it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

import numpy as np
from absl import logging

from squeezebert.data.batching import EncodedSplit

# Split after . ! ? (optionally followed by closing quotes/brackets) before an uppercase letter,
# a digit or an opening quote: good enough for SOP on prose; paragraphs are boundaries too.
_SENT_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(document: str) -> list[str]:
  out = []
  for para in document.split("\n"):
    out.extend(s.strip() for s in _SENT_END.split(para) if s.strip())
  return out


def continuation_table(tokenizer) -> np.ndarray:
  """bool[vocab]: True for WordPiece continuation pieces ('##...')."""
  vocab = tokenizer.get_vocab()
  table = np.zeros(max(vocab.values()) + 1, bool)
  for tok, i in vocab.items():
    table[i] = tok.startswith("##")
  return table


def create_sop_pairs(doc_sentences: list[list[list[int]]], max_len: int, seed: int,
                     short_seq_prob: float = 0.1):
  """Yields (tokens_a, tokens_b, swapped) over all documents (lists of tokenized sentences)."""
  rng = np.random.default_rng(seed)
  max_tokens = max_len - 3  # [CLS] A [SEP] B [SEP]
  if max_tokens < 2:
    raise ValueError(f"max_len={max_len} leaves no room for two segments")
  for sentences in doc_sentences:
    target = max_tokens
    if rng.random() < short_seq_prob:
      target = int(rng.integers(2, max_tokens + 1))
    chunk, length = [], 0
    for i, sent in enumerate(sentences):
      if not sent:
        continue
      chunk.append(sent)
      length += len(sent)
      if i == len(sentences) - 1 or length >= target:
        if len(chunk) >= 2:
          a_end = int(rng.integers(1, len(chunk)))
        else:  # one long sentence: cut it in two so SOP still has two segments
          a_end = 1
          s = chunk[0]
          cut = int(rng.integers(1, len(s))) if len(s) > 1 else 1
          chunk = [s[:cut], s[cut:]]
        a = [t for c in chunk[:a_end] for t in c]
        b = [t for c in chunk[a_end:] for t in c]
        if a and b:
          a, b = _truncate_pair(a, b, max_tokens, rng)
          swapped = bool(rng.random() < 0.5)
          yield (b, a, True) if swapped else (a, b, False)
        chunk, length = [], 0
        target = max_tokens if rng.random() >= short_seq_prob else int(
            rng.integers(2, max_tokens + 1))


def _truncate_pair(a, b, max_tokens, rng):
  a, b = list(a), list(b)
  while len(a) + len(b) > max_tokens:
    longer = a if len(a) > len(b) else b
    if rng.random() < 0.5:  # trim the front or the back at random, as BERT does
      del longer[0]
    else:
      longer.pop()
  return a, b


def build_sop_split(documents, tokenizer, max_len: int, seed: int, *,
                    cache_dir: str | None = None, cache_key: dict | None = None) -> EncodedSplit:
  """Packs documents into [CLS] A [SEP] B [SEP] sequences with SOP labels.

  Returns an EncodedSplit with labels = SOP label and token_extras["word_start"] (1 where a
  token starts a word: not a '##' piece) for whole-word masking."""
  path = None
  if cache_dir:
    key = json.dumps(dict(cache_key or {}, max_len=max_len, seed=seed,
                          vocab=tokenizer.get_vocab_size(), v=1), sort_keys=True)
    path = os.path.join(cache_dir, f"sop-{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz")
    if os.path.exists(path):
      with np.load(path) as z:
        logging.info("loaded packed pretraining data from %s", path)
        return _from_arrays(dict(z))
  cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
  docs, n_docs = [], 0
  for doc in documents:
    sents = split_sentences(doc)
    if not sents:
      continue
    n_docs += 1
    enc = tokenizer.encode_batch(sents, add_special_tokens=False)
    docs.append([e.ids for e in enc])
  if not docs:
    raise ValueError("no non-empty documents to pretrain on (check the corpus and split)")
  rows = list(create_sop_pairs(docs, max_len, seed))
  n = len(rows)
  ids = np.zeros((n, max_len), np.int32)
  types = np.zeros((n, max_len), np.int8)
  lengths = np.zeros((n,), np.int32)
  labels = np.zeros((n,), np.int32)
  for i, (a, b, swapped) in enumerate(rows):
    seq = [cls_id, *a, sep_id, *b, sep_id]
    ids[i, :len(seq)] = seq
    types[i, len(a) + 2:len(seq)] = 1
    lengths[i], labels[i] = len(seq), int(swapped)
  cont = continuation_table(tokenizer)
  word_start = (~cont[ids]).astype(np.int8)
  arrays = dict(input_ids=ids, token_type_ids=types, lengths=lengths, labels=labels,
                word_start=word_start)
  logging.info("packed %d documents into %d sequences of <= %d tokens (%.1f%% fill)", n_docs, n,
               max_len, 100.0 * lengths.sum() / max(1, n * max_len))
  if path:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.npz"  # several processes may pack the same split
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
  return _from_arrays(arrays)


def _from_arrays(a: dict) -> EncodedSplit:
  n = len(a["lengths"])
  return EncodedSplit(a["input_ids"], a["token_type_ids"], a["lengths"], a["labels"],
                      np.arange(n, dtype=np.int32), 0,
                      token_extras={"word_start": a["word_start"]})
