"""Execution switches (ModelConfig.attention_impl / remat / fused_qkv, config.rng_impl /
finite_check): same function, same gradients as the default path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from squeezebert.model import build_model, get_config
from squeezebert.model.layers import resolve_attention_impl
from conftest import jitted
from squeezebert.bench import train as train_bench
from squeezebert.train import optim, steps as steps_lib, trainer

B, L = 4, 16


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(1, 100, (B, L)), jnp.int32)
  lengths = np.array([L, 11, 5, 13])  # right-padded rows, one full
  mask = jnp.asarray((np.arange(L)[None] < lengths[:, None]).astype(np.int32))
  types = jnp.asarray((np.arange(L)[None] >= lengths[:, None] // 2).astype(np.int32))
  return ids, mask, types


def _model(layout="einsum", **kw):
  return build_model(get_config("tiny", grouped_layout=layout, **kw), "classification", 3,
                     seed=0)


def _grads(model, inputs, key):
  ids, mask, types = inputs

  def loss(m, k):
    out = m(ids, mask, types, rngs=k)  # dropout on (hidden and attention, rate 0.1)
    return jnp.sum(out.logits ** 2) + jnp.sum(out.last_hidden_state[:, :3] ** 2)

  return jax.tree.leaves(jitted(lambda m, k: nnx.state(nnx.grad(loss)(m, k), nnx.Param),
                                model, key))


def _max_diff(a, b):
  """Largest |a - b| relative to the largest |a| of the same leaf (+1e-7: the key bias has a
  zero gradient in exact arithmetic, ~1e-14 in float; eager vs fused rounding
  is ~1e-6; a redrawn dropout mask or a wrong path is O(1))."""
  return max(float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(x)) + 1e-7))
             for x, y in zip(a, b))


@pytest.mark.parametrize("layout", ["einsum", "split"])
def test_attention_impls_agree(inputs, layout):
  ref = _model(layout)(*inputs, deterministic=True)
  for impl in ("xla", "auto"):
    out = _model(layout, attention_impl=impl)(*inputs, deterministic=True)
    # Padded positions too: every impl attends over the row's real keys only.
    np.testing.assert_allclose(out.last_hidden_state, ref.last_hidden_state, atol=2e-5)
    np.testing.assert_allclose(out.logits, ref.logits, atol=2e-5)


def test_attention_impl_gradients_without_dropout(inputs):
  kw = dict(attention_probs_dropout_prob=0.0)
  ref = _grads(_model(**kw), inputs, jax.random.key(1))
  got = _grads(_model(attention_impl="xla", **kw), inputs, jax.random.key(1))
  assert _max_diff(ref, got) < 1e-5


def test_attention_impl_rules(inputs):
  assert resolve_attention_impl("auto", dropout_active=False, dtype=jnp.bfloat16) == "manual"
  assert resolve_attention_impl("auto", dropout_active=True, dtype=jnp.float32) == "manual"
  with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
    _model(attention_impl="cudnn")(*inputs, deterministic=True)
  # An explicit flash-style kernel refuses to silently drop attention dropout.
  with pytest.raises(ValueError, match="no attention-probability dropout"):
    _model(attention_impl="xla")(*inputs, rngs=jax.random.key(0))
  with pytest.raises(ValueError, match="attention_impl must be one of"):
    get_config("tiny", attention_impl="flash")


@pytest.mark.parametrize("remat", ["full", "dots_saveable"])
def test_remat_same_gradients_with_dropout(inputs, remat):
  ref = _grads(_model(), inputs, jax.random.key(3))
  got = _grads(_model(remat=remat), inputs, jax.random.key(3))
  # The same dropout masks, recomputed: ~1e-3 (LayerNorm backward amplifies the rounding of
  # the recomputed forward); a redrawn mask gives ~1 (another key: 1.07).
  assert _max_diff(ref, got) < 1e-2
  assert _max_diff(ref, _grads(_model(), inputs, jax.random.key(4))) > 0.3


@pytest.mark.parametrize("groups", [1, 2])
def test_fused_qkv_same_values_and_gradients(inputs, groups):
  kw = dict(q_groups=groups, k_groups=groups, v_groups=groups)
  ref_m, fused_m = _model(**kw), _model(fused_qkv=True, **kw)
  np.testing.assert_allclose(fused_m(*inputs, deterministic=True).logits,
                             ref_m(*inputs, deterministic=True).logits, atol=1e-5)
  assert _max_diff(_grads(ref_m, inputs, jax.random.key(2)),
                   _grads(fused_m, inputs, jax.random.key(2))) < 1e-5


def _stepper(config, finite_check="cheap"):
  """step(batch) -> {loss, grad_norm, all_finite}: the trainer's jitted step on a tiny model."""
  task, model = train_bench.build(config)
  tx, sched = optim.make_tx(config, 10, 0)
  graphdef, state = nnx.split((model, optim.make_optimizer(model, tx)))
  step = steps_lib.make_train_step(graphdef, task, sched, finite_check=finite_check)
  rng, box = trainer.train_rng(config), {"state": state, "i": 0}

  def run(batch_fn):
    box["state"], m = step(box["state"], batch_fn(task, model), rng, box["i"])
    box["i"] += 1
    return {k: float(m[k]) for k in ("loss", "grad_norm", "all_finite")}
  return run


def test_rng_impl_and_finite_check():
  batch = lambda task, model: train_bench.synthetic_batch(task, model.config.vocab_size, 2, 8)
  nan_batch = lambda task, model: dict(batch(task, model),
                                       example_weight=np.full((2,), np.nan, np.float32))

  def config(impl, dropout):
    c = train_bench.bench_config("tiny", batch=2, seq=8, dtype="float32", rng_impl=impl)
    c.model.hidden_dropout_prob = c.model.attention_probs_dropout_prob = dropout
    return c

  # Without dropout the PRNG is unused: the implementations give the same steps.
  ref, fast = _stepper(config("threefry", 0.0)), _stepper(config("unsafe_rbg", 0.0))
  for _ in range(2):
    a, b = ref(batch), fast(batch)
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
  # With dropout unsafe_rbg trains; both finite checks flag a NaN (loss, or parameters).
  cheap = _stepper(config("unsafe_rbg", 0.1))
  assert all(np.isfinite(r["loss"]) and r["all_finite"] == 1.0 for r in (cheap(batch),))
  assert cheap(nan_batch)["all_finite"] == 0.0
  assert _stepper(config("threefry", 0.1), finite_check="params")(nan_batch)["all_finite"] == 0.0
  with pytest.raises(ValueError, match="finite_check"):
    steps_lib.make_train_step(None, None, None, finite_check="never")


def test_validate_refuses_unknown_switches():
  c = train_bench.bench_config("tiny")
  c.rng_impl = "philox"
  with pytest.raises(ValueError, match="rng_impl"):
    trainer.validate(c)
  c = train_bench.bench_config("tiny")
  c.finite_check = "never"
  with pytest.raises(ValueError, match="finite_check"):
    trainer.validate(c)
