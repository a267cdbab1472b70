"""Quantization (squeezebert.quant): qwix QAT against the hand-written fake-quant oracle, rules
that match nothing, straight-through gradients, static-range calibration, the real int8 model
(integer dots, save/reload, size), the trainer's QAT switch + the PTQ/int8 CLI, bad configs,
and bench --quant.

Tiny models on CPU; the module shares test_train's fast-compile fixture.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import qwix
from flax import nnx
from conftest import jitted, needs_tfds, runlocal

from squeezebert import load
from squeezebert import bench, convert, quant
from squeezebert.model import SqueezeBert, get_config
from squeezebert.model.layers import GroupedProjection
from squeezebert.model import fake_quant as fake_quant_lib
from squeezebert.quant import QuantConfig, fake
from squeezebert.quant import core as quant_core
from squeezebert import workdir as ckpt_lib
from squeezebert.train import trainer

# Grouped (G=2) q/k/v and FFN projections and a dense (G=1) post-attention projection.
CFG = get_config("tiny", post_attention_groups=1)
OUT_KEYS = ("last_hidden_state", "pooler_output", "logits")


def make_model(head="classification", cfg=CFG, seed=0):
  return SqueezeBert(cfg, head=head, num_labels=3, rngs=nnx.Rngs(params=seed))


def make_inputs(batch=3, length=12, seed=0, vocab=CFG.vocab_size):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, vocab, size=(batch, length))
  mask = np.ones_like(ids)
  mask[1:, length // 2:] = 0  # padded rows
  types = (np.arange(length) >= length // 3).astype(np.int64)[None].repeat(batch, 0) * mask
  return jnp.asarray(ids * mask, jnp.int32), jnp.asarray(mask), jnp.asarray(types)


def outputs(model, inputs, jit=False):
  if jit:
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a, deterministic=True))
    out = fn(state, *inputs)
  else:
    out = model(*inputs, deterministic=True)
  return {k: np.asarray(getattr(out, k)) for k in OUT_KEYS if getattr(out, k) is not None}


def max_diff(a, b):
  return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)


def mean_diff(a, b):
  return max(float(np.mean(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)


# ------------------------------------------------------------------ rules that match nothing
@pytest.mark.parametrize("jit", [False, True])
def test_rule_matching_nothing_leaves_model_bit_identical(jit):
  model, x = make_model(), make_inputs()
  ref = outputs(model, x, jit)
  provider = qwix.QtProvider([qwix.QtRule(module_path=r"no/such/module", weight_qtype=jnp.int8,
                                          act_qtype=jnp.int8)])
  q = qwix.quantize_model(model, provider, *x, deterministic=True)
  assert [r.module_path for r in provider.get_unused_rules()] == ["no/such/module"]
  got = outputs(q, x, jit)
  for k in ref:
    assert np.array_equal(ref[k], got[k]), k
  # From a config: 'head' on a model without a head module generates no rule at all.
  base = make_model("base")
  qcfg = QuantConfig(mode="qat", modules="head")
  assert quant.rule_specs(qcfg, CFG, "base") == []
  # Quantized models run the einsum layout unchunked (quant.plain_compute): the reference too
  # (the split layout's sums may round differently, e.g. on AVX-512 hosts).
  ref = outputs(quant_core.plain_compute(base), x, jit)
  got = outputs(quant.quantize_for_training(base, qcfg), x, jit)
  for k in ref:
    assert np.array_equal(ref[k], got[k]), k


# ------------------------------------------------------------------ the fake-quant oracle
def test_fake_quant_numerics_and_straight_through_gradient():
  # (no -absmax entries: -127.5 exactly is a tie whose side depends on the division rounding)
  x = jnp.asarray([[0.0, 1.0, -1.7, 2.0], [3.0, -2.9, 0.01, 0.0]], jnp.float32)
  y = fake.fake_quant(x, 8, axes=(1,))
  # absmax / (qmax + 1/2) per row, in float32 as qwix (x / scale lands near, not on, +-127.5)
  scale = np.array([[2.0], [3.0]], np.float32) / np.float32(127.5)
  want = np.clip(np.round(np.asarray(x) / scale), -128, 127) * scale
  np.testing.assert_allclose(y, want, rtol=1e-6)
  assert np.all(np.abs(np.asarray(y) - np.asarray(x)) <= scale / 2 + 1e-7)
  g = jax.grad(lambda v: jnp.sum(fake.fake_quant(v, 4, axes=(1,)) * 3.0))(x)
  np.testing.assert_array_equal(g, np.full(x.shape, 3.0))  # straight-through
  q, s = fake.quantize(x, 4, axes=(1,))
  assert float(q.min()) >= -8 and float(q.max()) <= 7
  assert fake.fake_quant(jnp.zeros((2, 3)), 8, axes=(1,)).sum() == 0  # zero scale guarded


@pytest.mark.parametrize("groups", [1, 2])
def test_qwix_projection_matches_hand_formula(groups):
  """One grouped projection through qwix QAT = fake_quant(x per token and group) times
  fake_quant(kernel per output channel), written out by hand."""
  cfg = CFG.replace(post_attention_groups=groups)
  # einsum layout: what squeezebert.quant sets before handing a model to qwix.
  proj = GroupedProjection(32, 48, groups, cfg=cfg, rngs=nnx.Rngs(params=1), layout="einsum")
  x = jax.random.normal(jax.random.key(0), (3, 5, 32)) * jnp.linspace(0.1, 3.0, 32)
  rule = qwix.QtRule(module_path=".*", weight_qtype=jnp.int8, act_qtype=jnp.int8)
  got = qwix.quantize_model(proj, qwix.QtProvider([rule]), x)(x)
  k = proj.kernel[...]                                    # [G, I, O]
  xg = jnp.moveaxis(x.reshape(3, 5, groups, 32 // groups), -2, 0)  # [G, B, L, I]
  want = jnp.einsum("g...i,gio->...go", fake.fake_quant(xg, 8, axes=(-1,)),
                    fake.fake_quant(k, 8, axes=(1,))).reshape(3, 5, 48) + proj.bias[...]
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert float(jnp.max(jnp.abs(got - proj(x)))) > 1e-3  # it did quantize


# w8a8 runs by default; 4-bit weights (int8 reload [4], the QAT sweep) and weight-only QAT
# (test_sixteen_bit_activations_and_embeddings_output) are also covered there.
@pytest.mark.parametrize("weight_bits,act_bits", [
    (8, 8), pytest.param(4, 8, marks=pytest.mark.slow), pytest.param(8, 0, marks=pytest.mark.slow)])
def test_qat_forward_matches_fake_quant_oracle(weight_bits, act_bits, monkeypatch):
  model, x = make_model(), make_inputs()
  qcfg = QuantConfig(mode="qat", weight_bits=weight_bits, act_bits=act_bits)
  ref = outputs(model, x)

  def both(jit=False):
    return (outputs(quant.quantize_for_training(model, qcfg), x, jit),
            outputs(quant.quantize_for_training(model, qcfg, oracle=True), x, jit))

  # As shipped. qwix's bound is qmax + 1/2, so an element at -absmax sits on the tie -127.5:
  # its side follows the last bit of the float division, and values that differ by one ulp
  # upstream (qwix rescales an int32 dot, the oracle dots dequantized values) can round one
  # step apart. Weights never do (same float weights): weight-only is bit-identical.
  qat, oracle = both()
  if not act_bits:
    assert max_diff(qat, oracle) == 0.0
  assert max_diff(qat, oracle) < 1e-3
  assert mean_diff(qat, oracle) < 0.5 * mean_diff(qat, ref)
  # With a tie-free bound in both, they agree to float rounding (well below the
  # quantization error itself), eagerly and jitted.
  from qwix._src.core import numerics
  monkeypatch.setattr(numerics, "get_symmetric_bound",
                      lambda qtype: float(jnp.iinfo(qtype).max) - 0.25)
  monkeypatch.setattr(fake_quant_lib, "bound", lambda bits: 2.0 ** (bits - 1) - 1.25)
  for jit in (False, True):
    qat, oracle = both(jit)
    assert max_diff(qat, oracle) < 2e-6
    assert mean_diff(qat, ref) > 1000 * mean_diff(qat, oracle)


def test_qat_gradients_are_straight_through_and_match_oracle():
  model, x = make_model(), make_inputs()
  labels = jnp.asarray([0, 2, 1])
  qcfg = QuantConfig(mode="qat")

  def loss(m):
    logits = m(*x, deterministic=True).logits
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

  def grads(m):
    return jax.tree.map(np.asarray, jitted(lambda mm: nnx.grad(loss)(mm), m))

  g_qat = jax.tree.leaves(grads(quant.quantize_for_training(model, qcfg)))
  g_orc = jax.tree.leaves(grads(quant.quantize_for_training(model, qcfg, oracle=True)))
  g_fp = jax.tree.leaves(grads(model))
  assert len(g_qat) == len(g_fp)
  for a, b in zip(g_qat, g_orc):
    assert np.all(np.isfinite(a))
    # qwix's backward uses the float operands (STE with original residuals), the oracle the
    # fake-quantized ones: equal up to the quantization error.
    assert np.linalg.norm(a - b) <= 0.05 * np.linalg.norm(b) + 1e-7
  total = sum(float(np.linalg.norm(a)) for a in g_qat)
  assert total > 0 and np.allclose(total, sum(float(np.linalg.norm(b)) for b in g_fp), rtol=0.2)


def test_sixteen_bit_activations_and_embeddings_output():
  model, x = make_model(), make_inputs()
  mods = "qkv,attention_matmuls,post_attention,ffn,pooler,head,embeddings"
  q16 = quant.quantize_for_training(model, QuantConfig(mode="qat", act_bits=16, modules=mods))
  assert q16.transformer.embeddings.output_quant_bits == 16
  a16, a8 = outputs(q16, x), outputs(quant.quantize_for_training(
      model, QuantConfig(mode="qat", act_bits=8, modules=mods)), x)
  w8 = outputs(quant.quantize_for_training(model, QuantConfig(mode="qat", act_bits=0)), x)
  # 16-bit activations add almost nothing on top of the 8-bit weights.
  assert max_diff(a16, w8) < 0.2 * max_diff(a8, w8)


# ------------------------------------------------------------------ static ranges
def test_rules_from_config():
  specs = quant.rule_specs(QuantConfig(mode="qat"), CFG, "classification")
  layouts = {name: layout for name, _, layout in specs}
  assert layouts == {"qkv": "group_major", "attention_matmuls": "attention",
                     "post_attention": "tokens", "ffn": "group_major", "pooler": "pooled",
                     "head": "pooled"}
  # Mixed group counts within a family: one rule per sub-module (static ranges need the
  # layout); weights-only drops the weightless attention matmuls; heads by head kind.
  mixed = CFG.replace(q_groups=1, intermediate_groups=1)
  specs = quant.rule_specs(QuantConfig(modules="qkv,ffn,attention_matmuls,head",
                                       act_bits=0), mixed, "token")
  got = {(p, l) for _, p, l in specs}
  assert got == {(r"transformer/layers/\d+/attention/query", "tokens"),
                 (r"transformer/layers/\d+/attention/key", "group_major"),
                 (r"transformer/layers/\d+/attention/value", "group_major"),
                 (r"transformer/layers/\d+/intermediate/proj", "tokens"),
                 (r"transformer/layers/\d+/output/proj", "group_major"),
                 ("classifier", "tokens")}
  paths = [p for _, p, _ in quant.rule_specs(QuantConfig(modules="head"), CFG, "pretraining")]
  assert paths == ["seq_relationship", "cls/transform_dense"]


@pytest.mark.heavy
def test_static_ranges_calibrate_and_convert():
  # Mixed group counts: G=1 and G=2 projections side by side in each layer.
  model = make_model(cfg=CFG.replace(q_groups=1, intermediate_groups=1))
  x = make_inputs()
  qcfg = QuantConfig(mode="ptq", act_mode="static")
  qat = quant.quantize_for_training(model, qcfg)
  with pytest.raises(ValueError, match="no activation ranges"):
    quant.to_int8(model, qcfg)
  rng = np.random.default_rng(1)
  shapes = [(2, 8), (4, 16), (3, 12)]  # stats are shaped independently of batch and length
  batches = [dict(input_ids=rng.integers(1, 128, s), attention_mask=np.ones(s, int),
                  token_type_ids=np.zeros(s, int)) for s in shapes]
  assert quant.calibrate(qat, iter(batches), num_batches=10) == 3
  stats = nnx.to_pure_dict(nnx.state(qat, qwix.QuantStat))
  counts = [int(v) for p, v in jax.tree_util.tree_flatten_with_path(stats)[0]
            if p[-1].key == "count"]
  assert counts and set(counts) == {3}
  int8 = quant.to_int8(qat, qcfg)
  ref = outputs(model, x)
  err = max_diff(outputs(int8, x), ref)
  assert 0 < err < 0.05 * max(np.abs(v).max() for v in ref.values())
  # Training forward passes update the ranges through nnx.grad too (the trainer's QAT).
  def loss(m):
    return jnp.sum(m(*x, deterministic=True).logits)
  nnx.grad(loss)(qat)
  stats = nnx.to_pure_dict(nnx.state(qat, qwix.QuantStat))
  assert {int(v) for p, v in jax.tree_util.tree_flatten_with_path(stats)[0]
          if p[-1].key == "count"} == {4}


# ------------------------------------------------------------------ the int8 model
SIZE_CFG = get_config("tiny", vocab_size=2000, hidden_size=256, embedding_size=256,
                      intermediate_size=1024, num_attention_heads=4, max_position_embeddings=128,
                      q_groups=4, k_groups=4, v_groups=4, intermediate_groups=4,
                      output_groups=4)


@pytest.mark.parametrize("weight_bits", [8, 4])
def test_int8_model_reload_identical_and_small(tmp_path, weight_bits):
  model = make_model(cfg=SIZE_CFG)
  x = make_inputs(vocab=SIZE_CFG.vocab_size)
  qcfg = QuantConfig(mode="int8", weight_bits=weight_bits)
  int8 = quant.to_int8(model, qcfg)
  state = nnx.to_pure_dict(nnx.state(int8))
  qtype = jnp.int8 if weight_bits == 8 else jnp.int4
  layer = state["transformer"]["layers"][0]
  assert layer["attention"]["query"]["kernel"]["array"]["qvalue"].dtype == qtype
  assert layer["output"]["proj"]["kernel"]["array"]["scale"].shape == (4, 1, 64)  # per out ch.
  assert state["classifier"]["kernel"]["array"]["qvalue"].dtype == qtype
  assert state["transformer"]["embeddings"]["word_embeddings"]["qvalue"].dtype == jnp.int8
  out_dir = quant.save_int8(int8, str(tmp_path / "int8"), qcfg)
  fp32_dir = convert.save_pretrained(model, str(tmp_path / "fp32"))
  ratio = quant.dir_bytes(out_dir) / quant.dir_bytes(fp32_dir)
  assert ratio <= {8: 0.27, 4: 0.21}[weight_bits], ratio  # (int8 embedding tables in both)
  ref = outputs(int8, x, jit=True)
  for reloaded in (quant.load_int8(out_dir), load.from_pretrained(out_dir)):
    got = outputs(reloaded, x, jit=True)
    for k in ref:
      assert np.array_equal(ref[k], got[k]), k
    assert type(reloaded).__name__ == "SqueezeBert"
  # Called like the float model, and close to it.
  f = outputs(model, x)
  assert max_diff(ref, f) < 0.1 * max(np.abs(v).max() for v in f.values())
  with pytest.raises(ValueError, match="cannot get a fresh head"):
    quant.load_int8(out_dir, num_labels=5)


def test_int8_model_runs_integer_dots():
  """XLA gets s8 x s8 -> s32 dot_generals (and keeps them after compiling on CPU)."""
  int8 = quant.to_int8(make_model(), QuantConfig(mode="int8"))
  graphdef, state = nnx.split(int8)
  fn = jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a).logits)
  lowered = fn.lower(state, *make_inputs())
  mlir = lowered.as_text()
  int_dots = [l for l in mlir.splitlines() if "dot_general" in l and "xi8>" in l
              and "xi32>" in l.rsplit("->", 1)[-1]]
  # per layer: q, k, v, post-attention, intermediate, output, QK^T, PV; pooler; classifier
  assert len(int_dots) == 8 * CFG.num_hidden_layers + 2, int_dots
  assert not any("dot_general" in l and "xf32>" in l.split("->")[0] for l in mlir.splitlines()
                 if "stablehlo.dot_general" in l)  # no float matmul left
  hlo = lowered.compile().as_text()
  assert any(" dot(" in l and "= s32[" in l for l in hlo.splitlines())


# ------------------------------------------------------------------ bad configs
@pytest.mark.parametrize("kw,match", [
    (dict(mode="fp8"), "quant.mode must be one of"),
    (dict(weight_bits=3), "weight_bits must be one of"),
    (dict(act_bits=4), "act_bits must be one of"),
    (dict(act_mode="minmax"), "act_mode must be one of"),
    (dict(modules="qkv,mlp"), r"unknown quant.modules \['mlp'\]"),
    (dict(modules="qkv,qkv"), "lists a module twice"),
    (dict(mode="qat", modules=""), "nothing would be quantized"),
    (dict(act_mode="static", act_bits=16), "act_mode=static needs act_bits=8"),
    (dict(modules="embeddings", act_bits=0), "needs act_bits > 0"),
    (dict(calib_batches=0), "calib_batches must be"),
])
def test_bad_quant_config_is_a_clear_error(kw, match):
  with pytest.raises(ValueError, match=match):
    QuantConfig(**kw)


def test_bad_quant_config_in_trainer_and_cli():
  with pytest.raises(ValueError, match="unknown quantization config field"):
    QuantConfig.from_dict(dict(mode="qat", bits=8))
  with pytest.raises(ValueError, match="weight_bits must be one of"):
    trainer.validate(runlocal(quant__mode="qat", quant__weight_bits=2))
  with pytest.raises(ValueError, match="none|qat in the trainer"):
    trainer.validate(runlocal(quant__mode="ptq"))
  with pytest.raises(ValueError, match="gradient accumulation"):
    trainer.validate(runlocal(quant__mode="qat", quant__act_mode="static",
                               grad_accum_steps=2))
  trainer.validate(runlocal(quant__mode="qat", quant__act_bits=16))  # fine
  from squeezebert.quant import cli
  with pytest.raises(ValueError, match="--mode must be ptq or int8"):
    cli.run("/nonexistent", "qat", "/tmp/x")


# ------------------------------------------------------------------ trainer + CLI
@pytest.mark.heavy
@needs_tfds
def test_qat_training_then_int8_cli(tmp_path):
  """QAT is a config switch of the trainer; the CLI converts the run to the int8 model and
  evaluates both through the trainer's eval path: same accuracy on the tiny task."""
  from squeezebert.quant import cli
  workdir = str(tmp_path / "qat")
  cfg = runlocal(quant__mode="qat", quant__modules=(
      "qkv,attention_matmuls,post_attention,ffn,pooler,head,embeddings"))
  final = trainer.train_and_evaluate(cfg, workdir)
  run = ckpt_lib.read_run_file(workdir)
  assert run["quant"]["mode"] == "qat" and run["quant"]["weight_bits"] == 8
  assert ckpt_lib.read_train_config(workdir).quant.mode == "qat"
  # A QAT checkpoint (dynamic ranges) is an ordinary float checkpoint.
  float_model = load.from_pretrained(workdir)
  assert type(float_model) is SqueezeBert

  res = cli.run(workdir, "int8", str(tmp_path / "int8"))
  assert res["source_kind"] == "qat-w8a8" and res["tag"] == "w8a8"
  assert res["source"]["accuracy"] == pytest.approx(final["accuracy"], abs=1e-6)
  assert abs(res["int8"]["accuracy"] - res["source"]["accuracy"]) <= 2 / 32 + 1e-9
  assert json.load(open(tmp_path / "int8" / cli.RESULT_FILE))["int8"] == res["int8"]
  int8 = load.from_pretrained(str(tmp_path / "int8"))
  qat, _ = cli.load_workdir_model(workdir)
  x = make_inputs(batch=8, length=16, vocab=30522)
  a, b = outputs(qat, x, jit=True), outputs(int8, x, jit=True)
  # The int8 model also stores its embedding tables in int8 (QAT trains on float tables).
  for k in a:
    assert np.max(np.abs(a[k] - b[k])) < 0.05 * np.max(np.abs(a[k])), k
  assert np.mean(a["logits"].argmax(-1) == b["logits"].argmax(-1)) >= 0.75

  # PTQ with static ranges calibrated on training batches (from the same run's weights).
  res = cli.run(workdir, "ptq", str(tmp_path / "ptq"),
                dict(act_mode="static", calib_batches=2), eval_source=False)
  assert res["calibration_batches"] == 2 and res["tag"] == "w8a8-static"
  assert 0.0 <= res["int8"]["accuracy"] <= 1.0 and "source" not in res


# ------------------------------------------------------------------ bench --quant
def test_bench_quant_compares_fp32_bf16_int8():
  out = bench.compare_quant("tiny", batch=2, seq=16, warmup=0, iters=1)
  assert set(out["table"]) == {"float32", "bfloat16", "w8a8"}
  r = out["results"]["w8a8"]
  assert r["quant"] == "w8a8" and r["dtype"] == "float32" and r["latency_s"]["median"] > 0
  t = out["table"]
  assert t["float32"]["size_vs_fp32"] == 1.0
  assert t["w8a8"]["disk_bytes"] < t["bfloat16"]["disk_bytes"] < t["float32"]["disk_bytes"]
  json.dumps(out)
  assert "w8a8" in bench.quant_table(out)
  with pytest.raises(ValueError, match="converts a float32 model"):
    bench.run_benchmark("tiny", batch=2, seq=16, dtype="bfloat16", quant="int8")
