"""Plain-dataclass model config with named presets (ml-collections stays at the edges)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "fp32": jnp.float32, "bfloat16": jnp.bfloat16,
           "bf16": jnp.bfloat16, "float16": jnp.float16, "fp16": jnp.float16}


def resolve_dtype(d: Any):
  if isinstance(d, str):
    if d not in _DTYPES:
      raise ValueError(f"unknown dtype {d!r}; expected one of {sorted(_DTYPES)}")
    return _DTYPES[d]
  return jnp.dtype(d).type


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Every field of HF's SqueezeBertConfig / BertConfig, plus ours.

  `family` decides only checkpoint naming (HF "squeezebert" vs "bert" keys) and
  where LayerNorm eps comes from in the layers (HF SqueezeBERT hard-codes 1e-12 there;
  BERT reads `layer_norm_eps`). The compute graph is the same code for both.
  """
  vocab_size: int = 30528
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  embedding_size: int = 768
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  initializer_range: float = 0.02
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0
  q_groups: int = 4
  k_groups: int = 4
  v_groups: int = 4
  post_attention_groups: int = 1
  intermediate_groups: int = 4
  output_groups: int = 4
  # Variants beyond HF (experiments/variants.py); the defaults are HF's architecture.
  share_layers: bool = False    # ALBERT-like: one Block's parameters used by every layer
  separable_kernel: int = 0     # >0: squeeze-and-expand FFN: a depthwise conv over the
                                #   sequence (this width, odd) before the grouped expand
  conv_layers: tuple = ()       # hybrid: these layer indices replace self-attention with a
  conv_kernel: int = 7          #   depthwise sequence conv of this width (odd)
  family: str = "squeezebert"  # "squeezebert" | "bert": HF naming of the weights
  dtype: Any = "float32"        # compute dtype
  param_dtype: Any = "float32"  # storage dtype of the parameters
  # The execution plan: how the function is computed, never what it is (same parameters,
  # same values up to float rounding). Fixed when the model is built (`with_execution`
  # gives a model on another plan sharing the parameter arrays); saved model dirs and
  # run.json leave these fields out.
  attention_impl: str = "auto"  # auto | manual | xla | cudnn (layers.resolve_attention_impl)
  remat: str = "none"           # none | full | dots_saveable: recompute each layer's
                                #   activations in the backward pass (training memory)
  fused_qkv: bool = False       # one [G, Cin/G, 3 Cout/G] q/k/v projection per group in the
                                #   einsum layout (fewer, wider GEMMs; not with quantization)
  grouped_layout: str = "auto"  # auto | einsum | split: how G > 1 projections compute
                                #   (layers.GroupedProjection; auto: split on CPU)
  batch_chunk: Any = "auto"     # deterministic calls run the layer stack on chunks of this
                                #   many sequences: "auto" (8 on one CPU device) | 0 (off) | N
  chunk_streams: int = 4        # chunks per step of the chunk loop, each its own chain

  def __post_init__(self):
    layers = self.conv_layers
    if isinstance(layers, str):  # "1,3" from a config string
      layers = [int(x) for x in layers.replace(" ", "").split(",") if x]
    object.__setattr__(self, "conv_layers", tuple(int(i) for i in layers))  # hashable, JSON list
    if isinstance(self.batch_chunk, str) and self.batch_chunk.isdigit():  # "8" from a flag
      object.__setattr__(self, "batch_chunk", int(self.batch_chunk))
    self.validate()

  @property
  def is_hf_architecture(self) -> bool:
    """True when HF SqueezeBERT/BERT has this exact architecture (export to HF possible)."""
    return (self.embedding_size == self.hidden_size and not self.share_layers
            and not self.separable_kernel and not self.conv_layers)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def groups(self) -> dict[str, int]:
    return dict(q=self.q_groups, k=self.k_groups, v=self.v_groups,
                post_attention=self.post_attention_groups,
                intermediate=self.intermediate_groups, output=self.output_groups)

  @property
  def layer_ln_eps(self) -> float:
    return 1e-12 if self.family == "squeezebert" else self.layer_norm_eps

  def validate(self):
    pos = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
           "intermediate_size", "embedding_size", "max_position_embeddings", "type_vocab_size"]
    for name in pos + [f"{g}_groups" for g in ("q", "k", "v", "post_attention",
                                               "intermediate", "output")]:
      v = getattr(self, name)
      if not isinstance(v, int) or v <= 0:
        raise ValueError(f"ModelConfig.{name} must be a positive int, got {v!r}")
    if self.family not in ("squeezebert", "bert"):
      raise ValueError(f"ModelConfig.family must be 'squeezebert' or 'bert', got {self.family!r}")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                       f"num_attention_heads {self.num_attention_heads}")
    if self.embedding_size > self.hidden_size:
      raise ValueError(f"embedding_size {self.embedding_size} > hidden_size {self.hidden_size}: "
                       "a factorized embedding (ALBERT) is smaller than the hidden size")
    for name in ("separable_kernel", "conv_kernel"):
      k = getattr(self, name)
      if not isinstance(k, int) or k < 0 or (k and k % 2 == 0):
        raise ValueError(f"ModelConfig.{name} must be 0 (off) or an odd positive int, got {k!r}")
    if self.conv_layers:
      if not self.conv_kernel:
        raise ValueError("conv_layers needs conv_kernel > 0")
      bad = [i for i in self.conv_layers if not 0 <= i < self.num_hidden_layers]
      if bad or len(set(self.conv_layers)) != len(self.conv_layers):
        raise ValueError(f"ModelConfig.conv_layers {self.conv_layers}: indices must be distinct "
                         f"and in [0, {self.num_hidden_layers})")
      if self.share_layers:
        raise ValueError("share_layers with conv_layers: a shared block cannot be attention in "
                         "some layers and convolution in others")
    if self.hidden_act not in ("gelu", "gelu_new", "relu"):
      raise ValueError(f"unsupported hidden_act {self.hidden_act!r}")
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
      p = getattr(self, name)
      if not 0.0 <= p < 1.0:
        raise ValueError(f"ModelConfig.{name} must be in [0, 1), got {p}")
    io = {"q": (self.hidden_size, self.hidden_size), "k": (self.hidden_size, self.hidden_size),
          "v": (self.hidden_size, self.hidden_size),
          "post_attention": (self.hidden_size, self.hidden_size),
          "intermediate": (self.hidden_size, self.intermediate_size),
          "output": (self.intermediate_size, self.hidden_size)}
    for name, g in self.groups.items():
      cin, cout = io[name]
      if cin % g or cout % g:
        raise ValueError(f"{name}_groups={g} must divide both in ({cin}) and out ({cout}) channels")
    resolve_dtype(self.dtype), resolve_dtype(self.param_dtype)
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"ModelConfig.attention_impl must be one of {ATTENTION_IMPLS}, got "
                       f"{self.attention_impl!r}")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"ModelConfig.remat must be one of {REMAT_POLICIES}, got {self.remat!r}")
    if not isinstance(self.fused_qkv, bool):
      raise ValueError(f"ModelConfig.fused_qkv must be a bool, got {self.fused_qkv!r}")
    if self.grouped_layout not in GROUPED_LAYOUTS:
      raise ValueError(f"ModelConfig.grouped_layout must be one of {GROUPED_LAYOUTS}, got "
                       f"{self.grouped_layout!r}")
    c = self.batch_chunk
    if c != "auto" and (not isinstance(c, int) or isinstance(c, bool) or c < 0):
      raise ValueError(f"ModelConfig.batch_chunk must be 'auto' or an int >= 0, got {c!r}")
    if not isinstance(self.chunk_streams, int) or self.chunk_streams < 1:
      raise ValueError(f"ModelConfig.chunk_streams must be an int >= 1, got "
                       f"{self.chunk_streams!r}")

  def architecture_dict(self) -> dict:
    """to_dict() without the execution choices: what a saved model or a workdir records."""
    d = self.to_dict()
    for k in EXECUTION_FIELDS:
      d.pop(k)
    return d

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["conv_layers"] = list(self.conv_layers)  # the JSON form (run.json compares dicts)
    for k in ("dtype", "param_dtype"):
      d[k] = jnp.dtype(resolve_dtype(d[k])).name
    return d


# ModelConfig fields that choose how the function is computed, not what it is.
EXECUTION_FIELDS = ("attention_impl", "remat", "fused_qkv", "grouped_layout", "batch_chunk",
                    "chunk_streams")
GROUPED_LAYOUTS = ("auto", "einsum", "split")
ATTENTION_IMPLS = ("auto", "manual", "xla", "cudnn")
REMAT_POLICIES = ("none", "full", "dots_saveable")

_ALL_ONE = dict(q_groups=1, k_groups=1, v_groups=1, post_attention_groups=1,
                intermediate_groups=1, output_groups=1)

PRESETS: dict[str, dict] = {
    # HF SqueezeBertConfig defaults, vocab as in the released checkpoints.
    "squeezebert-base": dict(),
    # BERT-base: same code, every projection dense (groups 1), HF BERT weight names.
    "bert-base": dict(vocab_size=30522, family="bert", **_ALL_ONE),
    # MiniLM-L6-H384 (sentence-transformers/all-MiniLM-L6-v2 shape).
    "minilm-l6-h384": dict(vocab_size=30522, hidden_size=384, embedding_size=384,
                           num_hidden_layers=6, intermediate_size=1536, family="bert",
                           **_ALL_ONE),
    # Small SqueezeBERT for CPU runs (paper grouping, a quarter of the width, 4 layers).
    "squeezebert-small": dict(hidden_size=256, embedding_size=256, num_hidden_layers=4,
                              num_attention_heads=4, intermediate_size=1024),
    # Small BERT-like counterpart of squeezebert-small.
    "bert-small": dict(hidden_size=256, embedding_size=256, num_hidden_layers=4,
                       num_attention_heads=4, intermediate_size=1024, family="bert", **_ALL_ONE),
    # Unit tests.
    "tiny": dict(vocab_size=128, hidden_size=32, embedding_size=32, num_hidden_layers=2,
                 num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                 q_groups=2, k_groups=2, v_groups=2, intermediate_groups=2, output_groups=2),
}


def get_config(name: str, **overrides) -> ModelConfig:
  """A preset by name, with field overrides (unknown fields are an error)."""
  if name not in PRESETS:
    raise ValueError(f"unknown model variant {name!r}; known: {sorted(PRESETS)}")
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  bad = sorted(set(overrides) - fields)
  if bad:
    raise ValueError(f"unknown ModelConfig field(s) {bad}")
  return ModelConfig(**{**PRESETS[name], **overrides})
