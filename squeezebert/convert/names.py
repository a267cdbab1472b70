"""HF <-> ours weight-name table and array transforms (no torch needed).

Our paths are tuples into `nnx.to_pure_dict(nnx.state(model, nnx.Param))`.
Grouped projection kernel [G, Cin/G, Cout/G] <-> HF Conv1d weight [Cout, Cin/G, 1]
(SqueezeBERT) or Linear weight [Cout, Cin] (BERT, G = 1).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from squeezebert.model.config import ModelConfig

# Keys HF checkpoints may hold that carry no information of ours.
IGNORED_HF_KEYS = ("embeddings.position_ids", "cls.predictions.decoder.weight",
                   "cls.predictions.decoder.bias")
HEAD_PREFIXES = ("cls.", "classifier.", "qa_outputs.")


@dataclasses.dataclass(frozen=True)
class Entry:
  hf: str                       # key without the base-model prefix for encoder keys
  ours: tuple
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]
  is_head: bool = False
  optional: bool = False        # encoder key that HF checkpoints may lack (BERT pooler)


def _same(x):
  return x


def _linear_to_ours(w):  # torch Linear [out, in] -> nnx.Linear [in, out]
  return w.T


def _conv_to_ours(groups):
  def f(w):  # [Cout, Cin/G, 1] -> [G, Cin/G, Cout/G]
    cout, cin_g = w.shape[0], w.shape[1]
    return w[..., 0].reshape(groups, cout // groups, cin_g).transpose(0, 2, 1)
  return f


def _conv_to_hf(k):  # [G, Cin/G, Cout/G] -> [Cout, Cin/G, 1]
    g, cin_g, cout_g = k.shape
    return k.transpose(0, 2, 1).reshape(g * cout_g, cin_g)[..., None]


def _dense_to_grouped(w):  # BERT Linear [out, in] -> [1, in, out]
  return w.T[None]


def _grouped_to_dense(k):
  if k.shape[0] != 1:
    raise ValueError("a BERT-named checkpoint needs groups=1 projections; this model has "
                     f"{k.shape[0]} groups (export it with family='squeezebert')")
  return k[0].T


def _ln(hf_prefix, ours_prefix, head=False):
  return [Entry(f"{hf_prefix}.weight", ours_prefix + ("scale",), _same, _same, head),
          Entry(f"{hf_prefix}.bias", ours_prefix + ("bias",), _same, _same, head)]


def _linear(hf_prefix, ours_prefix, head=False):
  return [Entry(f"{hf_prefix}.weight", ours_prefix + ("kernel",), _linear_to_ours,
                _linear_to_ours, head),
          Entry(f"{hf_prefix}.bias", ours_prefix + ("bias",), _same, _same, head)]


def _proj(cfg, hf_prefix, ours_prefix, groups):
  if cfg.family == "squeezebert":
    k = Entry(f"{hf_prefix}.weight", ours_prefix + ("kernel",), _conv_to_ours(groups),
              _conv_to_hf)
  else:
    k = Entry(f"{hf_prefix}.weight", ours_prefix + ("kernel",), _dense_to_grouped,
              _grouped_to_dense)
  return [k, Entry(f"{hf_prefix}.bias", ours_prefix + ("bias",), _same, _same)]


def _layer_names(cfg: ModelConfig, i: int) -> dict[str, str]:
  if cfg.family == "squeezebert":
    p = f"encoder.layers.{i}"
    return dict(q=f"{p}.attention.query", k=f"{p}.attention.key", v=f"{p}.attention.value",
                post=f"{p}.post_attention.conv1d", post_ln=f"{p}.post_attention.layernorm",
                inter=f"{p}.intermediate.conv1d", out=f"{p}.output.conv1d",
                out_ln=f"{p}.output.layernorm")
  p = f"encoder.layer.{i}"
  return dict(q=f"{p}.attention.self.query", k=f"{p}.attention.self.key",
              v=f"{p}.attention.self.value", post=f"{p}.attention.output.dense",
              post_ln=f"{p}.attention.output.LayerNorm", inter=f"{p}.intermediate.dense",
              out=f"{p}.output.dense", out_ln=f"{p}.output.LayerNorm")


def encoder_entries(cfg: ModelConfig) -> list[Entry]:
  t = ("transformer",)
  e = t + ("embeddings",)
  out = [Entry("embeddings.word_embeddings.weight", e + ("word_embeddings",), _same, _same),
         Entry("embeddings.position_embeddings.weight", e + ("position_embeddings",), _same,
               _same),
         Entry("embeddings.token_type_embeddings.weight", e + ("token_type_embeddings",),
               _same, _same)]
  out += _ln("embeddings.LayerNorm", e + ("layer_norm",))
  for i in range(cfg.num_hidden_layers):
    n, o = _layer_names(cfg, i), t + ("layers", i)
    out += _proj(cfg, n["q"], o + ("attention", "query"), cfg.q_groups)
    out += _proj(cfg, n["k"], o + ("attention", "key"), cfg.k_groups)
    out += _proj(cfg, n["v"], o + ("attention", "value"), cfg.v_groups)
    out += _proj(cfg, n["post"], o + ("post_attention", "proj"), cfg.post_attention_groups)
    out += _ln(n["post_ln"], o + ("post_attention", "layer_norm"))
    out += _proj(cfg, n["inter"], o + ("intermediate", "proj"), cfg.intermediate_groups)
    out += _proj(cfg, n["out"], o + ("output", "proj"), cfg.output_groups)
    out += _ln(n["out_ln"], o + ("output", "layer_norm"))
  # Optional: HF BertForMaskedLM / ForTokenClassification / ForQuestionAnswering build
  # BertModel(add_pooling_layer=False), so their checkpoints have no pooler.
  out += [dataclasses.replace(x, optional=True) for x in _linear("pooler.dense", t + ("pooler",))]
  return out


def hf_has_pooler(cfg: ModelConfig, head: str) -> bool:
  """Whether the HF class for (family, head) has a pooler (SqueezeBERT always does)."""
  return not (cfg.family == "bert" and head in ("mlm", "token", "qa"))


def head_entries(head: str) -> list[Entry]:
  out = []
  if head in ("mlm", "pretraining"):
    out += _linear("cls.predictions.transform.dense", ("cls", "transform_dense"), True)
    out += _ln("cls.predictions.transform.LayerNorm", ("cls", "transform_layer_norm"), True)
    out.append(Entry("cls.predictions.bias", ("cls", "bias"), _same, _same, True))
  if head == "pretraining":
    out += _linear("cls.seq_relationship", ("seq_relationship",), True)
  if head in ("classification", "regression", "token", "multiple_choice"):
    out += _linear("classifier", ("classifier",), True)
  if head == "qa":
    out += _linear("qa_outputs", ("qa_outputs",), True)
  return out


def base_prefix(cfg: ModelConfig) -> str:
  return "transformer." if cfg.family == "squeezebert" else "bert."


# HF architecture names per (family, head).
_ARCH = {"base": "Model", "mlm": "ForMaskedLM", "pretraining": "ForPreTraining",
         "classification": "ForSequenceClassification",
         "regression": "ForSequenceClassification", "token": "ForTokenClassification",
         "qa": "ForQuestionAnswering", "multiple_choice": "ForMultipleChoice"}


def hf_architecture(cfg: ModelConfig, head: str) -> str:
  stem = "SqueezeBert" if cfg.family == "squeezebert" else "Bert"
  if head == "pretraining" and cfg.family == "squeezebert":
    return "SqueezeBertForMaskedLM"  # HF has no SqueezeBERT pretraining class; SOP rides along.
  return stem + _ARCH[head]


def head_from_architecture(arch: str | None) -> str | None:
  if not arch:
    return None
  for head, suffix in (("pretraining", "ForPreTraining"), ("mlm", "ForMaskedLM"),
                       ("classification", "ForSequenceClassification"),
                       ("token", "ForTokenClassification"), ("qa", "ForQuestionAnswering"),
                       ("multiple_choice", "ForMultipleChoice")):
    if arch.endswith(suffix):
      return head
  return "base"
