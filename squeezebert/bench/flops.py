"""FLOPs: the analytic matmul count (the SqueezeBERT paper's rule) and XLA's cost analysis.

`analytic_flops` counts 2 FLOPs per multiply-accumulate of the matmuls only: per layer the
QKV, post-attention, intermediate and output projections (each divided by its group count)
and the two attention matmuls QK^T and AV (2 L^2 D MACs per sequence); the pooler is
reported apart. Embeddings (gathers), softmax, LayerNorm, GELU, biases and residual adds are
not counted. SqueezeBERT-base is then 7.40 GFLOPs/seq and BERT-base 22.35 at length 128
(encoder layers), the paper's figures. `train_flops` is the usual training convention:
6 x forward matmul MACs (forward 2, backward 4) per token, i.e. 3 x the forward FLOPs;
recomputation under remat is not counted (model FLOPs, not hardware FLOPs).
"""

from __future__ import annotations

from squeezebert.model.config import ModelConfig


def analytic_flops(cfg: ModelConfig, seq: int) -> dict:
  """Matmul FLOPs (2 per MAC) of one sequence of length `seq` through the encoder.

  Variants: a hybrid conv layer replaces QKV and both attention matmuls with a depthwise
  conv (L*D*K MACs); a separable FFN adds one (L*D*K); a factorized embedding adds its
  E -> H projection (L*E*H, counted in `encoder`). Shared layers cost the same FLOPs."""
  d, f, l = cfg.hidden_size, cfg.intermediate_size, seq
  g = cfg.groups
  mac = dict(
      qkv=l * d * d * (1 / g["q"] + 1 / g["k"] + 1 / g["v"]),
      post_attention=l * d * d / g["post_attention"],
      intermediate=l * d * f / g["intermediate"],
      output=l * f * d / g["output"],
      attention_scores=l * l * d,   # QK^T over all heads
      attention_context=l * l * d,  # AV over all heads
  )
  if cfg.separable_kernel:
    mac["ffn_depthwise"] = l * d * cfg.separable_kernel
  per_layer = {k: 2 * v for k, v in mac.items()}
  layer_total = sum(per_layer.values())
  conv_layer_total = (layer_total - per_layer["qkv"] - per_layer["attention_scores"]
                      - per_layer["attention_context"] + 2 * l * d * cfg.conv_kernel)
  n_conv = len(cfg.conv_layers)
  encoder = (cfg.num_hidden_layers - n_conv) * layer_total + n_conv * conv_layer_total
  if cfg.embedding_size != cfg.hidden_size:
    encoder += 2 * l * cfg.embedding_size * d
  pooler = 2 * d * d
  return dict(per_layer=per_layer, layer_total=layer_total, encoder=encoder, pooler=pooler,
              total=encoder + pooler, embeddings="excluded (gathers, no matmul)",
              rule="2 FLOPs per MAC, matmuls only; softmax/LN/GELU/bias excluded")


def xla_cost(compiled) -> dict:
  """`compiled.cost_analysis()` as a dict (older jax returns a one-element list)."""
  try:
    ca = compiled.cost_analysis()
  except Exception as e:  # some backends do not implement it
    return dict(error=repr(e))
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else {}
  ca = ca or {}
  pick = lambda k: float(ca[k]) if k in ca else None
  return dict(flops=pick("flops"), transcendentals=pick("transcendentals"),
              bytes_accessed=pick("bytes accessed"))


def head_flops(cfg: ModelConfig, head: str, seq: int, num_labels: int = 2,
               masked_positions: int = 0) -> int:
  """Forward matmul FLOPs of one sequence's task head (pooler excluded)."""
  d, e, v = cfg.hidden_size, cfg.embedding_size, cfg.vocab_size
  if head in ("classification", "regression", "multiple_choice"):
    return 2 * d * (num_labels if head == "classification" else 1)
  if head == "token":
    return 2 * seq * d * num_labels
  if head == "qa":
    return 2 * seq * d * 2
  if head in ("mlm", "pretraining"):
    p = masked_positions or seq  # the MLM head runs on the masked positions only
    sop = 2 * d * 2 if head == "pretraining" else 0
    return 2 * p * (d * e + e * v) + sop
  return 0


def train_flops(cfg: ModelConfig, head: str, seq: int, num_labels: int = 2,
                masked_positions: int = 0) -> dict:
  """Model FLOPs of one training step per sequence: 3 x the forward matmul FLOPs."""
  fwd = analytic_flops(cfg, seq)["total"] + head_flops(cfg, head, seq, num_labels,
                                                       masked_positions)
  return dict(forward_per_seq=fwd, train_per_seq=3 * fwd,
              rule="6 x forward matmul MACs per sequence (forward + backward = 3 x forward "
                   "FLOPs at 2 FLOPs/MAC); encoder + pooler + head; remat recompute not counted")
