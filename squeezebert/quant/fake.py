"""Hand-written fake quantization with a straight-through estimator.

Two uses: (a) the test oracle for the qwix path (same numerics as qwix's symmetric absmax
int quantization, written out in a few lines), (b) what qwix cannot express: 16-bit
activations (qwix only has <= 8-bit integer qtypes) and the embeddings' output activations
(no matmul reads them inside the Embeddings module).

Numerics (qwix 0.1.8 `qarray.quantize` with calibration 'absmax'): scale = absmax / (2^(b-1) - 1/2)
over the reduced axes (a scale below sqrt(float32 tiny) becomes 1), q = round-half-even(x / scale)
saturated to [-2^(b-1), 2^(b-1) - 1], dequantized q * scale. The backward is the identity
(straight-through), as qwix's QAT with absmax calibration. Note the tie at -absmax: x / scale
is -(2^(b-1) - 1/2) up to the last bit of the float division, so it rounds to -2^(b-1) or to
one step above depending on that bit (+absmax saturates to 2^(b-1) - 1 either way). Two
computations that differ by one ulp upstream can therefore land one step apart; with a
tie-free bound this oracle and qwix agree to float rounding (tests/test_quant.py).

This module imports only jax at import time (the model's Embeddings use `fake_quant`).
"""

from __future__ import annotations

import dataclasses
import functools
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


# ------------------------------------------------------------------ as a qwix provider
# Imported lazily: qwix is only needed when a model is quantized.
def _qwix():
  import qwix  # noqa: PLC0415
  from qwix._src.utils import flax_util  # noqa: PLC0415 (pinned qwix: find_param)
  return qwix, flax_util


@functools.cache
def _rule_class():
  qwix, _ = _qwix()

  @dataclasses.dataclass(frozen=True, kw_only=True)
  class FakeQuantRule(qwix.QuantizationRule):
    weight_bits: int = 8
    act_bits: int = 0  # 0: activations stay float

  return FakeQuantRule


def make_rule(**kw):
  """A FakeQuantRule: a qwix QuantizationRule (module_path, op_names) with bit widths
  `weight_bits` / `act_bits` instead of qtypes."""
  return _rule_class()(**kw)


def provider(rules):
  """A qwix QuantizationProvider that fake-quantizes the operands of the matched modules'
  matmuls with `fake_quant` and runs them in float: qwix's interception and weight detection,
  our numerics. Weights (the module's own nnx.Param) get `weight_bits` per output channel,
  activations `act_bits` per token; both reduce over the contracting axes only."""
  return _provider_class()(rules)


@functools.cache
def _provider_class():
  qwix, flax_util = _qwix()

  class FakeQuantProvider(qwix.QuantizationProvider):
    def _operand(self, rule, x, contracting):
      bits = rule.weight_bits if flax_util.find_param(x) is not None else rule.act_bits
      return fake_quant(x, bits, contracting)

    def _dot(self, rule, lhs, rhs, dimension_numbers, **kw):
      (lc, rc), _ = dimension_numbers
      return jax.lax.dot_general(self._operand(rule, lhs, lc), self._operand(rule, rhs, rc),
                                 dimension_numbers, **kw)

    def dot_general(self, lhs, rhs, dimension_numbers, precision=None,
                    preferred_element_type=None, *, out_sharding=None):
      rule, _ = self._get_current_rule_and_op_id("dot_general")
      kw = dict(precision=precision, preferred_element_type=preferred_element_type,
                out_sharding=out_sharding)
      if rule is None:
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, **kw)
      return self._dot(rule, lhs, rhs, dimension_numbers, **kw)

    def einsum(self, einsum_str, *operands, precision=None, preferred_element_type=None,
               _dot_general=jax.lax.dot_general, out_sharding=None):
      rule, _ = self._get_current_rule_and_op_id("einsum")
      kw = dict(precision=precision, preferred_element_type=preferred_element_type,
                out_sharding=out_sharding)
      if rule is None or len(operands) != 2:
        return jnp.einsum(einsum_str, *operands, _dot_general=_dot_general, **kw)

      def dot(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **rest):
        return self._dot(rule, lhs, rhs, dimension_numbers, precision=precision,
                         preferred_element_type=preferred_element_type, **rest)

      # As qwix's QtProvider: without jit, einsum hands the dot the caller's own arrays (or
      # unary ops of them), so find_param can recognise the weight.
      with jax.disable_jit():
        return jnp.einsum(einsum_str, *operands, _dot_general=dot, **kw)

    def get_intercept_map(self):
      return super().get_intercept_map() | {"jax.lax.dot_general": self.dot_general,
                                             "jax.numpy.einsum": self.einsum}

  return FakeQuantProvider
