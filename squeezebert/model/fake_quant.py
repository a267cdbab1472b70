"""Symmetric absmax fake quantization with a straight-through estimator (the numerics of
qwix 0.1.8's `qarray.quantize` with 'absmax' calibration; squeezebert.quant.fake explains
them). Part of the model: the Embeddings fake-quantize their output under QAT."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def bound(bits: int) -> float:
  """The symmetric bound: the largest |x / scale| (qmax + 1/2, as qwix)."""
  return 2.0 ** (bits - 1) - 0.5


def quantize(x: jax.Array, bits: int, axes: Sequence[int]) -> tuple[jax.Array, jax.Array]:
  """(q, scale): integer values (in x's float dtype) and scales reduced over `axes` (kept as
  size-1 dims); per-channel along every other axis."""
  axes = tuple(a % x.ndim for a in axes)
  absmax = jnp.max(jnp.abs(x), axis=axes, keepdims=True)
  scale = absmax / bound(bits)
  scale = jnp.where(scale < jnp.sqrt(jnp.finfo(scale.dtype).tiny), jnp.ones_like(scale), scale)
  lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
  return jnp.clip(jnp.round(x / scale), lo, hi), scale


def fake_quant(x: jax.Array, bits: int, axes: Sequence[int]) -> jax.Array:
  """Quantize-dequantize `x` to `bits` bits with scales reduced over `axes`; straight-through
  gradient (d out / d x = 1)."""
  if not bits:
    return x
  q, scale = quantize(x, bits, axes)
  deq = (q * scale).astype(x.dtype)
  return x + jax.lax.stop_gradient(deq - x)
