"""Predictions on ad-hoc text, from a run or any model directory.

  python -m squeezebert.predict --model RUN_OR_DIR "a sentence" "another one"
  python -m squeezebert.predict --model RUN_OR_DIR --input texts.tsv [--output preds.jsonl]

In Python:
  clf = squeezebert.pipeline("runs/sst2")
  clf(["a gripping film", ("A man sleeps.", "A person rests.")])
  # [{'label': 'positive', 'score': 0.93, 'scores': {'negative': 0.07, 'positive': 0.93}}, ...]

--model takes a training workdir (its best checkpoint, its tokenizer and label names), one of
our model directories, an int8 directory or an HF directory. A text is a sentence or a pair
(a tuple in Python; "first<TAB>second" on a --input line or {"text": .., "text_pair": ..} in
JSONL). Classification heads give the label and its softmax score, regression heads the value.
"""

from __future__ import annotations

import json

import jax
import numpy as np
from flax import nnx

from squeezebert import assets as assets_lib
from squeezebert.data import tokenizer as tokenization
from squeezebert.load import from_pretrained

HEADS = ("classification", "regression")
BUCKETS = (16, 32, 64, 128, 256, 512)  # padded lengths: few distinct shapes, few compiles


class Pipeline:
  """Tokenizer + model + label names: texts in, predictions out."""

  def __init__(self, model, assets: assets_lib.Assets, batch_size: int = 32):
    if model.head not in HEADS:
      raise ValueError(f"predict serves {HEADS} heads; this model has head {model.head!r} "
                       "(evaluate it with python -m squeezebert.main --mode=eval)")
    self.model, self.assets, self.batch_size = model, assets, batch_size
    self.max_len = min(assets.max_len, model.config.max_position_embeddings)
    self.tokenizer = assets.tokenizer()
    vocab = self.tokenizer.get_vocab_size()
    if vocab > model.config.vocab_size:
      raise ValueError(f"the tokenizer has {vocab} tokens, the model's vocab_size is "
                       f"{model.config.vocab_size}: not this model's tokenizer")
    graphdef, state = nnx.split(model)
    self._state = state
    self._forward = jax.jit(lambda s, ids, mask, types: nnx.merge(graphdef, s)(
        ids, mask, types, deterministic=True).logits)
    n = model.num_labels
    names = assets.labels if assets.labels and len(assets.labels) == n else None
    self.labels = tuple(names) if names else tuple(f"LABEL_{i}" for i in range(n))

  def logits(self, texts) -> np.ndarray:
    """[N, num_labels] logits of `texts` (sentences or (first, second) pairs)."""
    texts = [texts] if isinstance(texts, (str, tuple)) else list(texts)
    if not texts:
      return np.zeros((0, self.model.num_labels), np.float32)
    pairs = [t for t in texts if isinstance(t, (tuple, list))]
    if pairs and len(pairs) != len(texts):
      raise ValueError("mix of sentences and pairs: give all one or all the other")
    a = [t[0] if pairs else t for t in texts]
    b = [t[1] for t in texts] if pairs else None
    enc = tokenization.encode(self.tokenizer, a, b, self.max_len)
    out = []
    for i in range(0, len(texts), self.batch_size):
      ids = enc["input_ids"][i:i + self.batch_size]
      types = enc["token_type_ids"][i:i + self.batch_size]
      longest = max(len(x) for x in ids)
      length = next((L for L in BUCKETS if L >= longest and L <= self.max_len), self.max_len)
      rows = self.batch_size if len(texts) > self.batch_size else len(ids)
      batch = np.zeros((3, rows, length), np.int32)
      for r, (x, t) in enumerate(zip(ids, types)):
        batch[0, r, :len(x)], batch[1, r, :len(x)], batch[2, r, :len(x)] = x, 1, t
      logits = np.asarray(self._forward(self._state, *batch), np.float32)
      out.append(logits[:len(ids)])
    return np.concatenate(out)

  def __call__(self, texts) -> list[dict]:
    logits = self.logits(texts)
    if self.model.head == "regression":
      return [{"score": float(x[0])} for x in logits]
    z = logits - logits.max(-1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    return [{"label": self.labels[int(p.argmax())], "score": float(p.max()),
             "scores": {name: float(v) for name, v in zip(self.labels, p)}} for p in probs]


def pipeline(path: str, batch_size: int = 32) -> Pipeline:
  """A Pipeline for a workdir or model directory (its tokenizer and label names travel with
  it: squeezebert.assets)."""
  return Pipeline(from_pretrained(path), assets_lib.of(path), batch_size)


def read_inputs(path: str) -> list:
  """Texts of a .jsonl ({"text", "text_pair"?} per line) or text/TSV file (a sentence, or
  "first<TAB>second", per line)."""
  texts = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      line = line.rstrip("\r\n")
      if not line.strip():
        continue
      if path.endswith(".jsonl"):
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{n}: not JSON ({e})") from None
        if "text" not in row:
          raise ValueError(f"{path}:{n}: no 'text' field")
        texts.append((row["text"], row["text_pair"]) if "text_pair" in row else row["text"])
      else:
        cols = line.split("\t")
        texts.append(tuple(cols[:2]) if len(cols) > 1 else cols[0])
  if not texts:
    raise ValueError(f"{path}: no texts")
  return texts
