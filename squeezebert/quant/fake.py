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

The quantize / fake_quant functions live with the model (squeezebert.model.fake_quant: the
Embeddings use them); this module turns them into a qwix provider.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import qwix
from qwix._src.utils import flax_util  # pinned qwix: find_param

from squeezebert.model.fake_quant import bound, fake_quant, quantize  # noqa: F401 (re-export)


# ------------------------------------------------------------------ as a qwix provider
@functools.cache
def _rule_class():
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
