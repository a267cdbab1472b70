"""What travels with a model besides its weights: the label names and the tokenizer.

`of(path)` reads them from a training workdir (run.json labels, train_config.json's vocab and
max_len), one of our model directories or an HF directory (config.json id2label, the
tokenizer files written beside the weights). Every export (HF dir, our dir, int8 dir,
jax.export) writes `files` and the labels, so `transformers.AutoTokenizer.from_pretrained`
and `pipeline(...)` on an HF export, and `squeezebert.predict` on any of them, tokenize and
name labels exactly as the run did.
"""

from __future__ import annotations

import dataclasses
import json
import os

from squeezebert import workdir as workdir_lib
from squeezebert.convert import ours
from squeezebert.data import tokenizer as tokenization
from squeezebert.quant import core as quant_core
from squeezebert.tasks import get_task

DEFAULT_MAX_LEN = 128


@dataclasses.dataclass
class Assets:
  labels: tuple | None          # class names by id (classification and token heads)
  vocab: str | None             # vocab.txt path (None: the bert-base-uncased one we ship)
  max_len: int = DEFAULT_MAX_LEN
  lowercase: bool = True

  @property
  def id2label(self) -> dict | None:
    return {i: name for i, name in enumerate(self.labels)} if self.labels else None

  def files(self) -> dict:
    """{name: text} of the tokenizer files an export writes."""
    return tokenization.tokenizer_files(self.vocab, self.max_len, self.lowercase)

  def tokenizer(self):
    return tokenization.load_tokenizer(self.vocab, self.lowercase)


def of(path: str) -> Assets:
  """The assets of a workdir or a model directory (any format squeezebert loads)."""
  if workdir_lib.is_workdir(path) and not _is_model_dir(path):
    return _of_workdir(path)
  return _of_model_dir(path)


def _is_model_dir(path: str) -> bool:
  return any(os.path.exists(os.path.join(path, f))
             for f in ("config.json", ours.OURS_CONFIG, quant_core.INT8_CONFIG))


def _of_workdir(workdir: str) -> Assets:
  run = workdir_lib.read_run_file(workdir)
  try:
    config = workdir_lib.read_train_config(workdir)
  except FileNotFoundError:
    config = None
  labels = run.get("labels")
  if labels is None and config is not None and run.get("head") in ("classification", "token"):
    labels = get_task(config).label_names  # workdirs written before run.json had labels
  vocab = (config.data.get("vocab") or None) if config is not None else None
  max_len = int(config.data.max_len) if config is not None else DEFAULT_MAX_LEN
  return Assets(tuple(labels) if labels else None, vocab, max_len)


def _of_model_dir(path: str) -> Assets:
  labels = None
  for meta_file in (ours.OURS_CONFIG, quant_core.INT8_CONFIG):
    meta_path = os.path.join(path, meta_file)
    if os.path.exists(meta_path):
      with open(meta_path) as f:
        labels = json.load(f).get("labels")
  hf_config = os.path.join(path, "config.json")
  if labels is None and os.path.exists(hf_config):
    with open(hf_config) as f:
      id2label = json.load(f).get("id2label") or {}
    names = [id2label[k] for k in sorted(id2label, key=int)]
    if names and not all(n == f"LABEL_{i}" for i, n in enumerate(names)):
      labels = names
  vocab = os.path.join(path, "vocab.txt")
  tok = tokenization.read_tokenizer_config(path)
  return Assets(tuple(labels) if labels else None,
                vocab if os.path.exists(vocab) else None,
                int(tok.get("model_max_length", DEFAULT_MAX_LEN)),
                bool(tok.get("do_lower_case", True)))
