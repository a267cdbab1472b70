"""Building blocks: grouped 1x1 projection, embeddings, self-attention, post-LN block.

Layout is NWC throughout (x_BxLxD): HF SqueezeBERT's NCW permutes are a PyTorch Conv1d
artifact; a 1x1 grouped conv over channels is the same math on the last axis.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from squeezebert.model.config import GROUPED_LAYOUTS, ModelConfig, resolve_dtype
from squeezebert.model.fake_quant import fake_quant


def normal_init(std: float):
  return jax.nn.initializers.normal(stddev=std)


def exact_gelu(x):
  """x/2 (1 + erf(x/sqrt 2)): torch's GELU formula (HF ACT2FN["gelu"]). jax.nn.gelu's exact
  form goes through erfc(-x/sqrt 2), which XLA:CPU evaluates with both of its branches;
  erf is cheaper and the values agree with torch to float32 rounding."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(1.0 / math.sqrt(2.0), x.dtype)))


def activation(name: str):
  if name == "gelu":  # HF ACT2FN["gelu"] is the exact erf GELU, not the tanh approximation.
    return exact_gelu
  if name == "gelu_new":
    return lambda x: jax.nn.gelu(x, approximate=True)
  if name == "relu":
    return jax.nn.relu
  raise ValueError(f"unsupported activation {name!r}")


class GroupedProjection(nnx.Module):
  """A grouped 1x1 convolution written as a grouped einsum.

  kernel is [G, Cin/G, Cout/G]: output block j reads only input block j (contiguous groups,
  exactly PyTorch Conv1d/`lax.conv_general_dilated(feature_group_count=G)` semantics).
  G = 1 is a dense layer. The einsum is called on `self.kernel` inside this module's own
  `__call__`, so qwix recognises it as the weight operand.

  `layout` (ModelConfig.grouped_layout unless given) picks how G > 1 is computed (same values,
  bit for bit):
    einsum  one group-major batched einsum [G, ..., I] x [G, I, O] (what qwix quantizes;
            squeezebert.quant sets it on every projection it touches);
    split   G plain 2-D dots on the G input slices (XLA:CPU: each is one large GEMM;
            measured faster than the batched form on CPU, docs/performance.md);
    auto    split on the CPU backend, einsum elsewhere.
  """

  def __init__(self, cin: int, cout: int, groups: int, *, cfg: ModelConfig, rngs: nnx.Rngs,
               layout: str | None = None):
    layout = cfg.grouped_layout if layout is None else layout
    if cin % groups or cout % groups:
      raise ValueError(f"groups={groups} must divide cin={cin} and cout={cout}")
    if layout not in GROUPED_LAYOUTS:
      raise ValueError(f"unknown grouped layout {layout!r}; use one of {GROUPED_LAYOUTS}")
    self.groups, self.cin, self.cout, self.layout = groups, cin, cout, layout
    self.dtype = resolve_dtype(cfg.dtype)
    pdt = resolve_dtype(cfg.param_dtype)
    self.kernel = nnx.Param(normal_init(cfg.initializer_range)(
        rngs.params(), (groups, cin // groups, cout // groups), pdt))
    self.bias = nnx.Param(jnp.zeros((cout,), pdt))

  def resolved_layout(self) -> str:
    if self.groups == 1:
      return "einsum"
    if self.layout == "auto":
      return "split" if jax.default_backend() == "cpu" else "einsum"
    return self.layout

  def __call__(self, x, *, group_major_in: bool = False, group_major_out: bool = False):
    """x is [..., Cin], or group-major with group_major_in; the result is [..., Cout], or
    group-major with group_major_out (G > 1 only). Group-major is [G, ..., C/G] (einsum
    layout) or a tuple of G arrays [..., C/G] (split layout); either is accepted as input.
    Chaining two projections with equal groups group-major skips the transposes (einsum) or
    the slicing and concatenation (split) of the big FFN intermediate in between."""
    g = self.groups
    # The kernel goes into the einsum as the Param's own array (cast only when the dtypes
    # differ, never sliced): qwix finds its weight operand by identity with the module's
    # Param (eagerly, e.g. in quantize_model's first call) or by tracing a unary chain back
    # to it, and PTQ swaps the Param for an int8 array that cannot be sliced or cast.
    kernel = self.kernel[...]
    if kernel.dtype != self.dtype:
      kernel = kernel.astype(self.dtype)
    bias = self.bias[...].astype(self.dtype)
    if g == 1:
      if group_major_in or group_major_out:
        raise ValueError("group-major layout needs groups > 1")
      # The size-1 group axis of the kernel is a free output axis: the same dot (and the
      # same compiled HLO) as '...i,io->...o' with kernel[0].
      y = jnp.einsum("...i,gio->...go", x.astype(self.dtype), kernel)
      return y.reshape(*y.shape[:-2], self.cout) + bias
    if self.resolved_layout() == "split":
      return self._split(x, kernel, bias, group_major_in, group_major_out)
    # Group-major batched matmul: same math as '...gi,gio->...go', which XLA:CPU runs as
    # a transposed kernel @ x^T dot on its slow generic path; [G, ..., I] x [G, I, O]
    # hits the fast GEMM. x keeps its [B, L] axes so qwix's shape heuristic can never
    # mistake it for the kernel.
    if group_major_in:
      x_GxBxLxI = jnp.stack(x) if isinstance(x, (tuple, list)) else x
    else:
      x_GxBxLxI = jnp.moveaxis(x.reshape(*x.shape[:-1], g, self.cin // g), -2, 0)
    y_GxBxLxO = jnp.einsum("g...i,gio->g...o", x_GxBxLxI.astype(self.dtype), kernel)
    bias_GxO = bias.reshape(g, self.cout // g)
    if group_major_out:
      return y_GxBxLxO + bias_GxO.reshape(g, *([1] * (y_GxBxLxO.ndim - 2)), -1)
    lead = y_GxBxLxO.shape[1:-1]
    return jnp.moveaxis(y_GxBxLxO, 0, -2).reshape(*lead, self.cout) + bias_GxO.reshape(-1)

  def _split(self, x, kernel, bias, group_major_in, group_major_out):
    g, ci, co = self.groups, self.cin // self.groups, self.cout // self.groups
    if group_major_in:
      xs = tuple(x) if isinstance(x, (tuple, list)) else tuple(x[i] for i in range(g))
    else:
      xs = tuple(x[..., i * ci:(i + 1) * ci] for i in range(g))
    ys = tuple(jnp.dot(xs[i].astype(self.dtype), kernel[i]) + bias[i * co:(i + 1) * co]
               for i in range(g))
    return ys if group_major_out else jnp.concatenate(ys, axis=-1)


def layer_norm(dim: int, eps: float, cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
  # Flax defaults to eps 1e-6; HF uses 1e-12. Statistics in float32 even under bf16 compute.
  return nnx.LayerNorm(dim, epsilon=eps, dtype=jnp.float32,
                       param_dtype=resolve_dtype(cfg.param_dtype), rngs=rngs)


def dense(cin: int, cout: int, cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(cin, cout, kernel_init=normal_init(cfg.initializer_range),
                    dtype=resolve_dtype(cfg.dtype), param_dtype=resolve_dtype(cfg.param_dtype),
                    rngs=rngs)


class Dropout(nnx.Module):
  """Dropout whose RNG is passed at call time (never stored, so it is not checkpointed)."""

  def __init__(self, rate: float):
    self.rate = rate

  def __call__(self, x, *, deterministic: bool, rngs: nnx.Rngs | None):
    if deterministic or self.rate == 0.0:
      return x
    if rngs is None:
      raise ValueError("dropout needs rngs in train mode: call the model with rngs=... "
                       "or deterministic=True")
    keep = jax.random.bernoulli(rngs.dropout(), 1.0 - self.rate, x.shape)
    return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))


class Embeddings(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    pdt = resolve_dtype(cfg.param_dtype)
    init = normal_init(cfg.initializer_range)
    word = init(rngs.params(), (cfg.vocab_size, cfg.embedding_size), pdt)
    # HF: padding_idx row starts at zero.
    word = word.at[cfg.pad_token_id].set(0.0)
    self.word_embeddings = nnx.Param(word)
    self.position_embeddings = nnx.Param(
        init(rngs.params(), (cfg.max_position_embeddings, cfg.embedding_size), pdt))
    self.token_type_embeddings = nnx.Param(
        init(rngs.params(), (cfg.type_vocab_size, cfg.embedding_size), pdt))
    self.layer_norm = layer_norm(cfg.embedding_size, cfg.layer_norm_eps, cfg, rngs)
    self.dropout = Dropout(cfg.hidden_dropout_prob)
    self.dtype = resolve_dtype(cfg.dtype)
    # > 0: fake-quantize the output per token to this many bits (squeezebert.quant sets it).
    self.output_quant_bits = 0

  def __call__(self, ids_BxL, type_ids_BxL, *, deterministic, rngs, inputs_embeds=None):
    seq_len = ids_BxL.shape[-1]
    # inputs_embeds [B, L, E] replaces the word-embedding rows (HF's inputs_embeds): gradient
    # attacks differentiate through it.
    words = embedding_rows(self.word_embeddings, ids_BxL) if inputs_embeds is None else inputs_embeds
    x_BxLxD = (words
               + self.position_embeddings[...][:seq_len][None]
               + embedding_rows(self.token_type_embeddings, type_ids_BxL))
    x_BxLxD = self.layer_norm(x_BxLxD.astype(jnp.float32))
    if self.output_quant_bits:
      x_BxLxD = fake_quant(x_BxLxD, self.output_quant_bits, axes=(-1,))
    return self.dropout(x_BxLxD.astype(self.dtype), deterministic=deterministic, rngs=rngs)


def embedding_rows(table, ids):
  """Rows `ids` of an embedding table: an nnx.Param, or a table object with its own
  `lookup_rows` (the int8 model's quantized tables, squeezebert.quant)."""
  if hasattr(table, "lookup_rows"):
    return table.lookup_rows(ids)
  return jnp.take(table[...], ids, axis=0)


def on_cuda() -> bool:
  """True when the default backend is an NVIDIA GPU (where cuDNN attention exists)."""
  if jax.default_backend() != "gpu":
    return False
  return "cuda" in jax.devices()[0].client.platform_version.lower()


def resolve_attention_impl(impl: str, *, dropout_active: bool, dtype) -> str:
  """The attention kernel a call uses.

  manual  softmax(q k^T / sqrt(d) + mask) v written out (heads-major batched matmuls,
          float32 softmax); the only path with attention-probability dropout.
  xla     jax.nn.dot_product_attention(implementation="xla"): the same math as one op.
  cudnn   jax.nn.dot_product_attention(implementation="cudnn"): cuDNN flash attention
          (NVIDIA GPU, bf16/fp16; padding from the mask's row lengths, so masks must be
          right-padded (1...1 0...0), which every input pipeline here produces).
  auto    cudnn on an NVIDIA GPU for bf16/fp16 compute when this call draws no attention
          dropout (deterministic calls, or attention_probs_dropout_prob = 0); manual
          otherwise. Flash kernels have no dropout on the probabilities, so auto never
          silently drops it: set model.attention_probs_dropout_prob=0 to train on flash.
  xla and cudnn asked for explicitly refuse a call that would need attention dropout."""
  if impl == "auto":
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return "cudnn" if (half and not dropout_active and on_cuda()) else "manual"
  if impl in ("xla", "cudnn") and dropout_active:
    raise ValueError(
        f"attention_impl={impl!r} has no attention-probability dropout, but this call is in "
        "training mode with attention_probs_dropout_prob > 0: set "
        "model.attention_probs_dropout_prob=0, or use attention_impl=auto|manual")
  if impl == "cudnn" and not on_cuda():
    raise ValueError(f"attention_impl='cudnn' needs an NVIDIA GPU; the backend is "
                     f"{jax.default_backend()!r} (use auto, manual or xla)")
  return impl


class AttentionCore(nnx.Module):
  """softmax(q k^T / sqrt(d) + mask) v, in its own module so quantization rules can
  include or exclude the two activation x activation matmuls by module path.
  `impl` (ModelConfig.attention_impl) picks the kernel: resolve_attention_impl."""

  def __init__(self, cfg: ModelConfig):
    self.num_heads = cfg.num_attention_heads
    self.dropout = Dropout(cfg.attention_probs_dropout_prob)
    self.impl = cfg.attention_impl

  def resolved_impl(self, deterministic: bool, dtype) -> str:
    active = not deterministic and self.dropout.rate > 0
    return resolve_attention_impl(self.impl, dropout_active=active, dtype=dtype)

  def __call__(self, q_BxLxD, k_BxLxD, v_BxLxD, bias_Bx1x1xL, *, deterministic, rngs):
    b, l, d = q_BxLxD.shape
    h = self.num_heads
    impl = self.resolved_impl(deterministic, q_BxLxD.dtype)
    if impl != "manual":  # [B, L, H, D/H] is dot_product_attention's own layout: no transposes
      q, k, v = (t.reshape(b, l, h, d // h) for t in (q_BxLxD, k_BxLxD, v_BxLxD))
      return fused_attention(q, k, v, bias_Bx1x1xL, impl).reshape(b, l, d)
    # Heads-major [B, H, L, D/H] before the matmuls: same values as 'bqhd,bkhd->bhqk',
    # ~10% faster whole-model on XLA:CPU (plain batched GEMMs, no strided operands).
    q, k, v = (t.reshape(b, l, h, d // h).transpose(0, 2, 1, 3)
               for t in (q_BxLxD, k_BxLxD, v_BxLxD))
    ctx_BxHxLxDh = self.heads(q, k, v, bias_Bx1x1xL, deterministic=deterministic, rngs=rngs)
    return ctx_BxHxLxDh.transpose(0, 2, 1, 3).reshape(b, l, d)

  def heads(self, q_BxHxLxDh, k_BxHxLxDh, v_BxHxLxDh, bias_Bx1x1xL, *, deterministic, rngs):
    """Attention on heads-major q, k, v (any number of heads): [B, H, L, D/H] context."""
    dh = q_BxHxLxDh.shape[-1]
    s_BxHxLxL = jnp.einsum("bhqd,bhkd->bhqk", q_BxHxLxDh, k_BxHxLxDh) / math.sqrt(dh)
    # Softmax in float32 (exactly HF in fp32; stable under bf16 compute).
    s_BxHxLxL = s_BxHxLxL.astype(jnp.float32) + bias_Bx1x1xL
    p_BxHxLxL = jax.nn.softmax(s_BxHxLxL, axis=-1).astype(q_BxHxLxDh.dtype)
    p_BxHxLxL = self.dropout(p_BxHxLxL, deterministic=deterministic, rngs=rngs)
    return jnp.einsum("bhqk,bhkd->bhqd", p_BxHxLxL, v_BxHxLxDh)


def fused_attention(q_BxLxHxDh, k_BxLxHxDh, v_BxLxHxDh, bias_Bx1x1xL, impl: str):
  """jax.nn.dot_product_attention on [B, L, H, D/H] q, k, v (no dropout)."""
  keep_BxL = bias_Bx1x1xL[:, 0, 0, :] == 0
  if impl == "cudnn":
    # cuDNN's padding mask: key positions >= the row's length are masked (right padding).
    lengths_B = jnp.sum(keep_BxL, axis=-1, dtype=jnp.int32)
    return jax.nn.dot_product_attention(q_BxLxHxDh, k_BxLxHxDh, v_BxLxHxDh,
                                        key_value_seq_lengths=lengths_B,
                                        implementation="cudnn")
  return jax.nn.dot_product_attention(q_BxLxHxDh, k_BxLxHxDh, v_BxLxHxDh,
                                      mask=keep_BxL[:, None, None, :], implementation="xla")


class SelfAttention(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d = cfg.hidden_size
    self.query = GroupedProjection(d, d, cfg.q_groups, cfg=cfg, rngs=rngs)
    self.key = GroupedProjection(d, d, cfg.k_groups, cfg=cfg, rngs=rngs)
    self.value = GroupedProjection(d, d, cfg.v_groups, cfg=cfg, rngs=rngs)
    self.core = AttentionCore(cfg)
    self.fused_qkv = cfg.fused_qkv

  def __call__(self, x_BxLxD, bias_Bx1x1xL, *, deterministic, rngs):
    if (deterministic and self._fused_groups() and self.core.num_heads % self.query.groups == 0
        and self.core.resolved_impl(True, self.query.dtype) == "manual"):
      return self._per_group(x_BxLxD, bias_Bx1x1xL)
    q, k, v = self.project(x_BxLxD)
    return self.core(q, k, v, bias_Bx1x1xL, deterministic=deterministic, rngs=rngs)

  def _equal_groups(self) -> bool:
    return self.query.groups == self.key.groups == self.value.groups

  def _fused_groups(self) -> bool:
    """Split layout with equal q/k/v groups (> 1): one fused q/k/v dot per group."""
    projs = (self.query, self.key, self.value)
    g = self.query.groups
    return g > 1 and all(p.groups == g and p.resolved_layout() == "split" for p in projs)

  def _group_qkv(self, x_BxLxD) -> list:
    """[B, L, 3 D/G] per group: x's slice i times the three kernels' blocks side by side."""
    projs = (self.query, self.key, self.value)
    g = self.query.groups
    dt, ci, co = self.query.dtype, self.query.cin // g, self.query.cout // g
    kernel_GxIx3O = jnp.concatenate([p.kernel[...].astype(dt) for p in projs], axis=-1)
    bias_Gx3O = jnp.concatenate([p.bias[...].astype(dt).reshape(g, co) for p in projs], -1)
    x_BxLxD = x_BxLxD.astype(dt)
    return [jnp.dot(x_BxLxD[..., i * ci:(i + 1) * ci], kernel_GxIx3O[i]) + bias_Gx3O[i]
            for i in range(g)]

  def project(self, x_BxLxD):
    """(q, k, v). In the split layout with equal groups, group i of all three comes from ONE
    dot of x's slice i with the three kernels' blocks side by side ([Cin/G, 3 Cout/G]): the
    same products, in wider (faster) GEMMs; with fused_qkv (einsum layout) all groups of
    all three come from one grouped einsum. Otherwise one projection each (what qwix sees)."""
    if self._fused_groups():
      co = self.query.cout // self.query.groups
      ys = self._group_qkv(x_BxLxD)
      return tuple(jnp.concatenate([y[..., j * co:(j + 1) * co] for y in ys], axis=-1)
                   for j in range(3))
    if self.fused_qkv and self._equal_groups():
      return self._fused_einsum(x_BxLxD)
    return tuple(p(x_BxLxD) for p in (self.query, self.key, self.value))

  def _fused_einsum(self, x_BxLxD):
    """q, k, v from one [G, ..., Cin/G] x [G, Cin/G, 3 Cout/G] einsum (G = 1: one dense
    [D, 3D] GEMM): the three kernels side by side, so one wide GEMM replaces three."""
    projs = (self.query, self.key, self.value)
    g, dt = self.query.groups, self.query.dtype
    co = self.query.cout // g
    kernel_GxIx3O = jnp.concatenate([p.kernel[...].astype(dt) for p in projs], axis=-1)
    bias_Gx3O = jnp.concatenate([p.bias[...].astype(dt).reshape(g, co) for p in projs], -1)
    x = x_BxLxD.astype(dt)
    lead = x.shape[:-1]
    x_GxBxLxI = jnp.moveaxis(x.reshape(*lead, g, x.shape[-1] // g), -2, 0)
    y_GxBxLx3O = (jnp.einsum("g...i,gio->g...o", x_GxBxLxI, kernel_GxIx3O)
                  + bias_Gx3O.reshape(g, *([1] * len(lead)), 3 * co))
    return tuple(jnp.moveaxis(y_GxBxLx3O[..., j * co:(j + 1) * co], 0, -2).reshape(*lead, g * co)
                 for j in range(3))

  def _per_group(self, x_BxLxD, bias_Bx1x1xL):
    """Deterministic split-layout attention, group by group: group i's q/k/v blocks hold
    exactly heads [i H/G, (i+1) H/G), so each group's dot output goes straight to
    heads-major [B, H/G, L, D/H] q, k and v (no concatenation of the groups) and only the
    contexts are joined. Same products and sums as the whole-head path."""
    b, l, d = x_BxLxD.shape
    g, h = self.query.groups, self.core.num_heads
    dh = d // h
    co = d // g
    ctx = []
    for y in self._group_qkv(x_BxLxD):
      # One slice-and-transpose copy each for q, k and v.
      q, k, v = (y[..., j * co:(j + 1) * co].reshape(b, l, h // g, dh).transpose(0, 2, 1, 3)
                 for j in range(3))
      ctx.append(self.core.heads(q, k, v, bias_Bx1x1xL, deterministic=True, rngs=None))
    return jnp.concatenate(ctx, axis=1).transpose(0, 2, 1, 3).reshape(b, l, d)


class ProjDropoutNorm(nnx.Module):
  """LN(residual + Dropout(proj(x))): HF's ConvDropoutLayerNorm / BertSelfOutput."""

  def __init__(self, cin: int, cout: int, groups: int, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.proj = GroupedProjection(cin, cout, groups, cfg=cfg, rngs=rngs)
    self.layer_norm = layer_norm(cout, cfg.layer_ln_eps, cfg, rngs)
    self.dropout = Dropout(cfg.hidden_dropout_prob)

  def __call__(self, x, residual, *, deterministic, rngs, group_major_in=False):
    y = self.proj(x, group_major_in=group_major_in)
    y = self.dropout(y, deterministic=deterministic, rngs=rngs)
    y = self.layer_norm(y.astype(jnp.float32) + residual.astype(jnp.float32))
    return y.astype(residual.dtype)


class ProjActivation(nnx.Module):
  def __init__(self, cin: int, cout: int, groups: int, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.proj = GroupedProjection(cin, cout, groups, cfg=cfg, rngs=rngs)
    self.act = cfg.hidden_act  # a name, not a function: keeps the graphdef hashable/comparable

  def __call__(self, x, *, group_major_out=False):
    y = self.proj(x, group_major_out=group_major_out)
    act = activation(self.act)
    return tuple(map(act, y)) if isinstance(y, tuple) else act(y)


class SeqConv(nnx.Module):
  """Depthwise convolution over the sequence: out[b, t, c] = sum_k w[k, c] x[b, t+k-K//2, c]
  + bias[c]. Each channel mixes only with itself, only along the sequence (the token mixer
  of hybrid layers, and the depthwise half of a depthwise-separable FFN). Padded positions
  are zeroed first, so they never leak into real tokens (padding invariance)."""

  def __init__(self, dim: int, kernel_size: int, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.kernel_size = kernel_size
    self.dtype = resolve_dtype(cfg.dtype)
    pdt = resolve_dtype(cfg.param_dtype)
    self.kernel = nnx.Param(normal_init(cfg.initializer_range)(rngs.params(),
                                                               (kernel_size, dim), pdt))
    self.bias = nnx.Param(jnp.zeros((dim,), pdt))

  def __call__(self, x_BxLxD, bias_Bx1x1xL):
    keep_BxLx1 = (bias_Bx1x1xL[:, 0, 0, :] == 0)[..., None]
    x_BxLxD = jnp.where(keep_BxLx1, x_BxLxD, 0).astype(self.dtype)
    d = x_BxLxD.shape[-1]
    y = jax.lax.conv_general_dilated(
        x_BxLxD, self.kernel[...].astype(self.dtype)[:, None, :], window_strides=(1,),
        padding="SAME", dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=d)
    return y + self.bias[...].astype(self.dtype)


class ConvMixer(nnx.Module):
  """Hybrid layers' replacement for self-attention: a depthwise sequence convolution.
  Called like SelfAttention (the block's post-attention projection + LN follow)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.conv = SeqConv(cfg.hidden_size, cfg.conv_kernel, cfg, rngs=rngs)

  def __call__(self, x_BxLxD, bias_Bx1x1xL, *, deterministic, rngs):
    del deterministic, rngs
    return self.conv(x_BxLxD, bias_Bx1x1xL)


class Block(nnx.Module):
  """One post-LN encoder layer, exactly HF's SqueezeBertModule / BertLayer by default.
  Variants (ModelConfig): `index in cfg.conv_layers` swaps self-attention for a depthwise
  sequence conv (hybrid); `cfg.separable_kernel` puts a depthwise sequence conv before the
  grouped FFN expand (squeeze-and-expand / depthwise-separable)."""

  def __init__(self, cfg: ModelConfig, index: int = 0, *, rngs: nnx.Rngs):
    d, f = cfg.hidden_size, cfg.intermediate_size
    if index in cfg.conv_layers:
      self.attention = ConvMixer(cfg, rngs=rngs)
    else:
      self.attention = SelfAttention(cfg, rngs=rngs)
    self.post_attention = ProjDropoutNorm(d, d, cfg.post_attention_groups, cfg, rngs=rngs)
    self.ffn_depthwise = (SeqConv(d, cfg.separable_kernel, cfg, rngs=rngs)
                          if cfg.separable_kernel else None)
    self.intermediate = ProjActivation(d, f, cfg.intermediate_groups, cfg, rngs=rngs)
    self.output = ProjDropoutNorm(f, d, cfg.output_groups, cfg, rngs=rngs)

  def __call__(self, x_BxLxD, bias_Bx1x1xL, *, deterministic, rngs):
    att = self.attention(x_BxLxD, bias_Bx1x1xL, deterministic=deterministic, rngs=rngs)
    h1 = self.post_attention(att, x_BxLxD, deterministic=deterministic, rngs=rngs)
    ffn_in = h1 if self.ffn_depthwise is None else self.ffn_depthwise(h1, bias_Bx1x1xL)
    # Equal FFN groups (SqueezeBERT: 4 and 4): keep the [B, L, 4D] intermediate group-major,
    # since output group j reads exactly intermediate group j. Same math, fewer transposes.
    gm = self.intermediate.proj.groups == self.output.proj.groups > 1
    inter = self.intermediate(ffn_in, group_major_out=gm)
    return self.output(inter, h1, deterministic=deterministic, rngs=rngs, group_major_in=gm)
