"""Lowering for accelerators this machine lacks: `jax.export` of the train step and the
inference forward for CUDA and TPU, so a CPU-only op or a shape bug that would break a GPU/TPU
run fails here. (cuDNN flash attention itself cannot be lowered without a GPU: jax checks
the cuDNN version while lowering; the device check runs it, experiments/accelerator_check.py.)"""

import jax
import jax.numpy as jnp
import pytest
from jax import export
from flax import nnx

from squeezebert.bench import train as train_bench
from squeezebert.model import SqueezeBert, get_config

PLATFORMS = ("cuda", "tpu")
# The real widths, heads and vocab, with 2 of the 12 layers: the layers are one code path, and
# lowering time grows with their number.
LAYERS = 2


@pytest.mark.parametrize("variant,head,kw", [
    ("squeezebert-base", "classification", {}),
    ("bert-base", "classification", dict(fused_qkv=True, rng_impl="unsafe_rbg", remat="full")),
    ("squeezebert-base", "pretraining", dict(optimizer="lamb", grad_accum=2,
                                             remat="dots_saveable", attention_impl="xla",
                                             attention_dropout=0.0)),
])
def test_train_step_lowers_for_gpu_and_tpu(variant, head, kw):
  config = train_bench.bench_config(variant, head, batch=8, seq=128, dtype="bfloat16",
                                    layers=LAYERS, **kw)
  step, args = train_bench.abstract_train_step(config)
  exp = export.export(step, platforms=PLATFORMS)(*args)
  assert exp.platforms == PLATFORMS
  text = exp.mlir_module()
  assert "stablehlo.dot_general" in text and "custom_call @cu" not in text
  # The new state comes back leaf for leaf with the input's shapes and dtypes (what lets the
  # donated buffers be reused), followed by the scalar metrics.
  state = jax.tree.leaves(args[0])
  assert [(a.shape, a.dtype) for a in exp.out_avals[:len(state)]] == [
      (x.shape, x.dtype) for x in state]
  assert all(a.shape == () for a in exp.out_avals[len(state):])


@pytest.mark.parametrize("variant", ["squeezebert-base", "bert-base"])
def test_forward_lowers_for_gpu_and_tpu(variant):
  cfg = get_config(variant, dtype="bfloat16", num_hidden_layers=LAYERS)
  abstract = nnx.eval_shape(lambda: SqueezeBert(cfg, head="classification",
                                                rngs=nnx.Rngs(params=0)))
  graphdef, state = nnx.split(abstract)

  @jax.jit
  def forward(state, ids, mask, types):
    return nnx.merge(graphdef, state)(ids, mask, types, deterministic=True).logits

  ids = jax.ShapeDtypeStruct((8, 128), jnp.int32)
  exp = export.export(forward, platforms=PLATFORMS)(state, ids, ids, ids)
  assert exp.out_avals[0].shape == (8, 2) and exp.platforms == PLATFORMS
