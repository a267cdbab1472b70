"""Documents -> packed sentence-order-prediction (SOP) sequences for MLM pretraining.

ALBERT's recipe (create_instances_from_document), which the SqueezeBERT paper follows:
sentences of one document are accumulated up to the target length (max_len - 3 tokens, with a
10% chance of a shorter random target), cut at a random sentence boundary into segments A and B
of consecutive text, and A/B are swapped for half of the pairs: `labels` is 1 when swapped
(HF's sentence_order_label convention). Filling each sequence up to the target length with
whole sentences is the packing. Masking is NOT done here: it runs inside the jitted train step
(squeezebert/train/masking.py), so every step of every epoch draws fresh masks.

pack_sop streams documents into compact ragged arrays (what prepared shards hold, see
squeezebert/data/prepare.py); build_sop_split makes them an EncodedSplit, optionally cached
as padded arrays.
"""

from __future__ import annotations

import array
import hashlib
import itertools
import json
import os
import re
from collections.abc import Iterable

import numpy as np
from absl import logging

from squeezebert.data.batching import EncodedSplit

DOCS_PER_ENCODE = 256  # documents tokenized per encode_batch call
# Split after . ! ? (optionally followed by closing quotes/brackets) before an uppercase letter,
# a digit or an opening quote: good enough for SOP on prose; paragraphs are boundaries too.
_SENT_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(document: str) -> list[str]:
  out = []
  for para in document.split("\n"):
    out.extend(s.strip() for s in _SENT_END.split(para) if s.strip())
  return out


def continuation_table(tokenizer_or_vocab) -> np.ndarray:
  """bool[vocab]: True for WordPiece continuation pieces ('##...'). Takes a tokenizer or its
  vocab as {piece: id}."""
  vocab = (tokenizer_or_vocab if isinstance(tokenizer_or_vocab, dict)
           else tokenizer_or_vocab.get_vocab())
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


def pack_sop(documents: Iterable[str], tokenizer, max_len: int, seed) -> dict:
  """Packs documents into [CLS] A [SEP] B [SEP] sequences with SOP labels (create_sop_pairs),
  streamed: documents are tokenized in batches of DOCS_PER_ENCODE and no token lists are kept.
  Ragged arrays (to_padded makes the batch layout):
    tokens     every sequence's ids back to back (uint16 when the vocab fits, else int32)
    lengths    int32 [N]: tokens per sequence, specials included
    a_lengths  int32 [N]: tokens of the first segment (type-0 part is [CLS] A [SEP])
    labels     int8 [N]: 1 when A and B were swapped
    doc        int32 [N]: the sequence's document, numbered in `documents` (empty ones counted)
  """
  cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
  wide = tokenizer.get_vocab_size() > 65536
  tokens = array.array("i" if wide else "H")
  lengths, a_lengths, labels, docs = (array.array("i") for _ in range(4))
  current = 0

  def tokenized():
    nonlocal current
    it = enumerate(documents)
    while chunk := [(i, split_sentences(d)) for i, d in itertools.islice(it, DOCS_PER_ENCODE)]:
      flat = [s for _, sents in chunk for s in sents]
      enc = tokenizer.encode_batch(flat, add_special_tokens=False) if flat else []
      pos = 0
      for i, sents in chunk:
        if sents:
          current = i
          yield [e.ids for e in enc[pos:pos + len(sents)]]
          pos += len(sents)

  for a, b, swapped in create_sop_pairs(tokenized(), max_len, seed):
    tokens.append(cls_id)
    tokens.extend(a)
    tokens.append(sep_id)
    tokens.extend(b)
    tokens.append(sep_id)
    lengths.append(len(a) + len(b) + 3)
    a_lengths.append(len(a))
    labels.append(int(swapped))
    docs.append(current)
  return dict(tokens=np.array(tokens, np.int32 if wide else np.uint16),
              lengths=np.array(lengths, np.int32), a_lengths=np.array(a_lengths, np.int32),
              labels=np.array(labels, np.int8), doc=np.array(docs, np.int32))


def to_padded(a: dict, max_len: int, continuation: np.ndarray) -> dict:
  """pack_sop's ragged arrays -> input_ids (int32, pad 0), token_type_ids and word_start
  (int8; 1 where a token starts a word: not a '##' piece; `continuation`: continuation_table)
  as [N, max_len] arrays."""
  lengths = a["lengths"]
  pos = np.arange(max_len)
  inside = pos[None] < lengths[:, None]
  ids = np.zeros((len(lengths), max_len), np.int32)
  ids[inside] = a["tokens"]
  types = (inside & (pos[None] >= a["a_lengths"][:, None] + 2)).astype(np.int8)
  return dict(input_ids=ids, token_type_ids=types, word_start=(~continuation[ids]).astype(np.int8))


def build_sop_split(documents, tokenizer, max_len: int, seed, *,
                    cache_dir: str | None = None, cache_key: dict | None = None) -> EncodedSplit:
  """pack_sop's sequences as an EncodedSplit: labels = SOP label, idx = the sequence's number,
  token_extras["word_start"] for whole-word masking. With cache_dir, the padded arrays are kept
  as .npz (input_ids, token_type_ids, lengths, labels, word_start: what embed_init --packed
  reads) keyed by `cache_key` and every other input that affects them."""
  path = None
  if cache_dir:
    key = json.dumps(dict(cache_key or {}, max_len=max_len, seed=seed,
                          vocab=tokenizer.get_vocab_size(), v=1), sort_keys=True)
    path = os.path.join(cache_dir, f"sop-{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz")
    if os.path.exists(path):
      with np.load(path) as z:
        logging.info("loaded packed pretraining data from %s", path)
        return _from_arrays(dict(z))
  a = pack_sop(documents, tokenizer, max_len, seed)
  n = len(a["lengths"])
  if not n:
    raise ValueError("no non-empty documents to pretrain on (check the corpus and split)")
  logging.info("packed %d documents into %d sequences of <= %d tokens (%.1f%% fill)",
               len(np.unique(a["doc"])), n, max_len, 100.0 * a["lengths"].sum() / (n * max_len))
  arrays = dict(to_padded(a, max_len, continuation_table(tokenizer)), lengths=a["lengths"],
                labels=a["labels"].astype(np.int32))
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
