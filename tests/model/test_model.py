"""Model numerics: parity with HF SqueezeBERT / BERT on every head, grouped projection
semantics, padding invariance, dropout, parameter counts and config validation.

HF models are random (every parameter, biases and LayerNorm affine included), saved with
`save_pretrained` (safetensors) and loaded through `squeezebert.from_pretrained`. Torch runs
in eval mode, ours with deterministic=True; tolerance 1e-5 max abs in fp32.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import squeezebert
from conftest import jitted
from squeezebert.convert import names
from squeezebert.model import (ModelConfig, SqueezeBert, build_model, get_config, param_count,
                               with_execution)
from squeezebert.model.layers import GroupedProjection

ATOL = 1e-5

GROUPS = {
    "g1": dict(q_groups=1, k_groups=1, v_groups=1, post_attention_groups=1,
               intermediate_groups=1, output_groups=1),
    "qkv2_ff8": dict(q_groups=2, k_groups=2, v_groups=2, post_attention_groups=1,
                     intermediate_groups=8, output_groups=8),
    "mixed": dict(q_groups=1, k_groups=2, v_groups=4, post_attention_groups=2,
                  intermediate_groups=4, output_groups=8),
}

_SQB_HEADS = ("base", "mlm", "classification", "regression", "token", "qa", "multiple_choice")
_BERT_HEADS = _SQB_HEADS + ("pretraining",)
CASES = ([("squeezebert", g, h) for g in GROUPS for h in _SQB_HEADS]
         + [("bert", "dense", h) for h in _BERT_HEADS])


def _check_parity(hfkit, parity_log, case, hf_model, family, head, tmp_path, ids, mask, tt,
                  **load_kw):
  hf_model.save_pretrained(tmp_path)
  assert (tmp_path / "model.safetensors").exists()
  ours = squeezebert.from_pretrained(str(tmp_path), **load_kw)
  assert ours.head == head and ours.config.family == family
  want = hfkit.hf_forward(hf_model, head, ids, mask, tt)
  out = ours(ids, mask, tt, deterministic=True)
  got = {k: np.asarray(getattr(out, k)) for k in want}
  err = hfkit.max_abs_err(want, got)
  parity_log(case, err)
  assert err < ATOL, f"{case}: max abs err {err:.3e}"
  return ours, want, out


@pytest.mark.parametrize("family,groups,head", CASES,
                         ids=[f"{f}-{g}-{h}" for f, g, h in CASES])
def test_hf_parity_small(hfkit, parity_log, tmp_path, family, groups, head):
  if family == "squeezebert":
    cfg_kw = {**hfkit.SMALL_SQB, **GROUPS[groups]}
  else:
    cfg_kw = dict(hfkit.SMALL_BERT)
  hf_model = hfkit.make_hf(family, head, seed=len(groups) + len(head), **cfg_kw)
  choices = 3 if head == "multiple_choice" else None
  ids, mask, tt = hfkit.make_inputs(3 if choices is None else 2, 12, cfg_kw["vocab_size"],
                                    seed=1, choices=choices)
  assert mask.min() == 0 and tt.max() == 1  # really padded, really two segments
  ours, _, _ = _check_parity(hfkit, parity_log, f"{family}-{groups}-{head}", hf_model, family,
                             head, tmp_path, ids, mask, tt)
  if family == "squeezebert":
    for k, v in GROUPS[groups].items():
      assert getattr(ours.config, k) == v


def test_hf_parity_squeezebert_default_config(hfkit, parity_log, tmp_path):
  """Full-size SqueezeBertConfig() (vocab 30528, 12 layers, groups 4/4/4/1/4/4), MLM head:
  one forward on a tiny padded batch (2 x 16)."""
  import transformers
  cfg = transformers.SqueezeBertConfig(vocab_size=30528)
  assert (cfg.q_groups, cfg.post_attention_groups, cfg.intermediate_groups,
          cfg.num_hidden_layers, cfg.hidden_size) == (4, 1, 4, 12, 768)
  # Weights at the config's initializer_range (HF's own init scale); biases and LN random.
  hf_model = hfkit.randomize_torch(transformers.SqueezeBertForMaskedLM(cfg), seed=3,
                                   std=cfg.initializer_range).eval()
  ids, mask, tt = hfkit.make_inputs(2, 16, 30528, seed=2)
  ours, want, out = _check_parity(hfkit, parity_log, "squeezebert-default-mlm", hf_model,
                                  "squeezebert", "mlm", tmp_path, ids, mask, tt)
  # the pooler too: HF's MLM model builds one, it just does not return its output
  import torch
  with torch.no_grad():
    want_pool = hf_model.transformer.pooler(torch.as_tensor(want["last_hidden_state"])).numpy()
  err = float(np.abs(want_pool - np.asarray(out.pooler_output)).max())
  parity_log("squeezebert-default-pooler", err)
  assert err < ATOL
  assert ours.config == get_config("squeezebert-base")


# ------------------------------------------------------------------ grouped projection
def _proj(cin, cout, g, seed=0):
  cfg = get_config("tiny")
  p = GroupedProjection(cin, cout, g, cfg=cfg, rngs=nnx.Rngs(params=seed))
  p.bias[...] = jax.random.normal(jax.random.key(seed + 1), (cout,))
  return p


def test_grouped_projection_groups1_is_dense():
  p = _proj(24, 40, 1)
  x = jax.random.normal(jax.random.key(2), (3, 5, 24))
  k, b = np.asarray(p.kernel[...][0]), np.asarray(p.bias[...])
  lin = nnx.Linear(24, 40, rngs=nnx.Rngs(0))
  lin.kernel[...], lin.bias[...] = jnp.asarray(k), jnp.asarray(b)
  np.testing.assert_allclose(p(x), lin(x), atol=1e-6, rtol=0)
  np.testing.assert_allclose(p(x), np.asarray(x) @ k + b, atol=1e-5, rtol=0)


def test_grouped_projection_matches_grouped_conv():
  import torch
  g, cin, cout = 4, 32, 48
  p = _proj(cin, cout, g, seed=3)
  x_BxLxC = jax.random.normal(jax.random.key(4), (2, 7, cin))
  y = np.asarray(p(x_BxLxC))
  # lax grouped conv, 1x1 kernel [W=1, Cin/G, Cout] in NWC / WIO layout.
  w_hf = names._conv_to_hf(np.asarray(p.kernel[...]))  # HF Conv1d weight [Cout, Cin/G, 1]
  assert w_hf.shape == (cout, cin // g, 1)
  kernel_WxIxO = jnp.asarray(w_hf.transpose(2, 1, 0))
  y_conv = jax.lax.conv_general_dilated(
      x_BxLxC, kernel_WxIxO, window_strides=(1,), padding="VALID",
      dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=g,
      precision=jax.lax.Precision.HIGHEST) + p.bias[...]
  np.testing.assert_allclose(y, y_conv, atol=1e-5, rtol=0)
  # torch Conv1d(groups=4) in NCW with the HF-layout weight.
  conv = torch.nn.Conv1d(cin, cout, 1, groups=g)
  with torch.no_grad():
    conv.weight.copy_(torch.from_numpy(w_hf))
    conv.bias.copy_(torch.from_numpy(np.array(p.bias[...])))
    y_t = conv(torch.from_numpy(np.array(x_BxLxC)).permute(0, 2, 1)).permute(0, 2, 1).numpy()
  np.testing.assert_allclose(y, y_t, atol=1e-5, rtol=0)
  # The name-table transforms are inverse to each other.
  np.testing.assert_array_equal(names._conv_to_ours(g)(w_hf), np.asarray(p.kernel[...]))


def test_grouped_projection_is_block_diagonal():
  """Output block j depends only on input block j (contiguous groups)."""
  p = _proj(16, 8, 4, seed=5)
  x = jax.random.normal(jax.random.key(6), (1, 1, 16))
  jac = np.asarray(jax.jacobian(lambda v: p(v)[0, 0])(x))[:, 0, 0, :]  # [out, in]
  for j in range(4):
    for i in range(4):
      block = jac[2 * j:2 * j + 2, 4 * i:4 * i + 4]
      assert (np.abs(block).max() > 0) == (i == j)


def test_grouped_layouts_agree():
  """split (G sliced 2-D dots, the CPU default) and einsum (one group-major batched einsum)
  are the same math: projections, the group-major FFN chain, a whole model and its
  gradients; the layout is part of the execution plan (static graph data, not a parameter)."""
  p = _proj(32, 48, 4, seed=3)
  x = jax.random.normal(jax.random.key(4), (2, 7, 32))
  ys = {}
  for layout in ("einsum", "split"):
    p.layout = layout
    ys[layout] = np.asarray(p(x))
    gm = p(x, group_major_out=True)
    assert isinstance(gm, tuple) == (layout == "split")
  np.testing.assert_allclose(ys["split"], ys["einsum"], atol=1e-6, rtol=0)
  with pytest.raises(ValueError, match="unknown grouped layout"):
    GroupedProjection(8, 8, 2, cfg=get_config("tiny"), rngs=nnx.Rngs(0), layout="conv")
  with pytest.raises(ValueError, match="grouped_layout must be one of"):
    get_config("tiny", grouped_layout="conv")
  cfg = get_config("tiny", num_hidden_layers=2, hidden_dropout_prob=0.0,
                   attention_probs_dropout_prob=0.0)
  model = SqueezeBert(cfg, head="classification", rngs=nnx.Rngs(params=0))
  ids = jax.random.randint(jax.random.key(1), (3, 9), 0, cfg.vocab_size)
  mask = jnp.ones_like(ids).at[0, 6:].set(0)
  outs, grads = {}, {}
  for layout in ("einsum", "split"):
    m = with_execution(model, grouped_layout=layout)
    assert m.config.grouped_layout == layout and model.config.grouped_layout == "auto"
    outs[layout] = jitted(lambda mm: mm(ids, mask, deterministic=True), m)
    grads[layout] = jitted(
        lambda mm: nnx.grad(lambda m3: m3(ids, mask, deterministic=True).logits.sum())(mm), m)
  for k in ("last_hidden_state", "pooler_output", "logits"):
    np.testing.assert_allclose(getattr(outs["split"], k), getattr(outs["einsum"], k),
                               atol=1e-5, rtol=0)
  for a, b in zip(jax.tree.leaves(grads["split"]), jax.tree.leaves(grads["einsum"])):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  # Deterministic split-layout attention runs group by group (each group's q/k/v blocks are
  # whole heads); it equals projecting all heads and attending over them.
  from squeezebert.model.model import attention_bias
  att = with_execution(model, grouped_layout="split").transformer.layers[0].attention
  x = jax.random.normal(jax.random.key(5), (3, 9, cfg.hidden_size))
  bias = attention_bias(mask)
  whole = att.core(*att.project(x), bias, deterministic=True, rngs=None)
  np.testing.assert_allclose(att(x, bias, deterministic=True, rngs=None), whole, atol=1e-6,
                             rtol=0)
  np.testing.assert_allclose(att._per_group(x, bias), whole, atol=1e-6, rtol=0)
  # Train mode keeps the all-heads path, so its dropout masks match the einsum layout's.
  drop = SqueezeBert(get_config("tiny", num_hidden_layers=1, attention_probs_dropout_prob=0.5),
                     head="classification", rngs=nnx.Rngs(params=0))
  train = {}
  for layout in ("einsum", "split"):
    m = with_execution(drop, grouped_layout=layout)
    train[layout] = m(ids, mask, rngs=jax.random.key(7), deterministic=False).logits
  np.testing.assert_allclose(train["split"], train["einsum"], atol=1e-5, rtol=0)
  with pytest.raises(ValueError, match="with_execution changes only"):
    with_execution(model, hidden_size=64)


# ------------------------------------------------------------------ padding and dropout
@pytest.fixture(scope="module")
def tiny_model():
  return build_model(get_config("tiny"), head="base", seed=0)


def _padded_batch():
  ids = np.array([[5, 6, 7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 0, 0, 0]], np.int32)
  mask = np.array([[1] * 8, [1] * 5 + [0] * 3], np.int32)
  tt = np.array([[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0, 0, 0]], np.int32)
  return ids, mask, tt


def test_padding_invariance(tiny_model):
  ids, mask, tt = _padded_batch()
  out = tiny_model(ids, mask, tt, deterministic=True)
  ids2 = np.where(mask > 0, ids, np.array([[100, 101, 102, 103, 104, 105, 106, 107]]))
  tt2 = np.where(mask > 0, tt, 1)
  out2 = tiny_model(ids2, mask, tt2, deterministic=True)
  m = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(out.last_hidden_state)[m],
                             np.asarray(out2.last_hidden_state)[m], atol=1e-6, rtol=0)
  np.testing.assert_allclose(out.pooler_output, out2.pooler_output, atol=1e-6, rtol=0)
  # and the padded positions did change (so the test is not vacuous)
  assert np.abs(np.asarray(out.last_hidden_state)[~m]
                - np.asarray(out2.last_hidden_state)[~m]).max() > 1e-3


def test_padding_gradient_is_zero(tiny_model):
  ids, mask, tt = _padded_batch()
  pad_ids = [120, 121, 122]  # used only at the padded positions of row 1
  ids = ids.copy()
  ids[1, 5:] = pad_ids
  m = jnp.asarray(mask, jnp.float32)

  def loss(model):
    out = model(ids, mask, tt, deterministic=True)
    return (jnp.sum(out.last_hidden_state * m[..., None] * jnp.cos(out.last_hidden_state))
            + jnp.sum(out.pooler_output))

  grads = jitted(lambda mm: nnx.grad(loss)(mm), tiny_model)
  g_word = np.asarray(grads["transformer"]["embeddings"]["word_embeddings"][...])
  assert np.abs(g_word[pad_ids]).max() < 1e-12
  assert np.abs(g_word[ids[1, :5]]).max() > 1e-4  # real tokens do get gradient


def test_dropout_determinism():
  model = build_model(get_config("tiny"), head="classification", num_labels=3, seed=0)
  ids, mask, tt = _padded_batch()
  d1 = model(ids, mask, tt, deterministic=True)
  d2 = model(ids, mask, tt)  # no rngs: deterministic by default
  np.testing.assert_array_equal(d1.logits, d2.logits)
  np.testing.assert_array_equal(d1.last_hidden_state, d2.last_hidden_state)
  a = model(ids, mask, tt, rngs=jax.random.key(1))
  a_again = model(ids, mask, tt, rngs=jax.random.key(1))
  b = model(ids, mask, tt, rngs=nnx.Rngs(dropout=2))
  np.testing.assert_array_equal(a.last_hidden_state, a_again.last_hidden_state)
  np.testing.assert_array_equal(a.logits, a_again.logits)
  assert np.abs(np.asarray(a.last_hidden_state) - np.asarray(b.last_hidden_state)).max() > 1e-3
  assert np.abs(np.asarray(a.last_hidden_state) - np.asarray(d1.last_hidden_state)).max() > 1e-3
  assert np.abs(np.asarray(a.logits) - np.asarray(d1.logits)).max() > 1e-6
  with pytest.raises(ValueError, match="rngs"):
    model(ids, mask, tt, deterministic=False)


# ------------------------------------------------------------------ sizes and config
@pytest.mark.parametrize("preset,expected", [("squeezebert-base", 51_094_272),
                                             ("bert-base", 109_482_240)])
def test_param_counts(preset, expected):
  cfg = get_config(preset)
  abstract = nnx.eval_shape(lambda: SqueezeBert(cfg, head="base", rngs=nnx.Rngs(0)))
  assert param_count(abstract) == expected


@pytest.mark.parametrize("kw,field", [
    (dict(q_groups=5), "q_groups"),
    (dict(intermediate_groups=7), "intermediate_groups"),
    (dict(output_groups=0), "output_groups"),
    (dict(hidden_size=100, embedding_size=100), "num_attention_heads"),
    (dict(hidden_dropout_prob=-0.1), "hidden_dropout_prob"),
    (dict(attention_probs_dropout_prob=1.5), "attention_probs_dropout_prob"),
    (dict(num_hidden_layers=0), "num_hidden_layers"),
    (dict(embedding_size=1024), "embedding_size"),  # larger than hidden (768)
    (dict(family="gpt"), "family"),
    (dict(hidden_act="swish"), "hidden_act"),
    (dict(dtype="float8"), "dtype"),
])
def test_config_validation(kw, field):
  with pytest.raises(ValueError, match=field):
    ModelConfig(**kw)
  with pytest.raises(ValueError, match=field):
    get_config("squeezebert-base", **kw)


def test_config_unknown_preset_field_head():
  with pytest.raises(ValueError, match="no-such-preset"):
    get_config("no-such-preset")
  with pytest.raises(ValueError, match="hiden_size"):
    get_config("tiny", hiden_size=32)
  with pytest.raises(ValueError, match="no-such-head"):
    build_model(get_config("tiny"), head="no-such-head")
  with pytest.raises(ValueError, match="no-such-head"):
    squeezebert.build_model(get_config("tiny"), head="no-such-head")


def test_config_presets_and_roundtrip():
  for name in squeezebert.PRESETS:
    cfg = get_config(name)
    assert ModelConfig(**cfg.to_dict()).to_dict() == cfg.to_dict()


def test_batch_chunked_inference_matches_whole_batch():
  """Deterministic calls on a single CPU device run the layers on chunks of sequences
  (independent chains, looped with lax.map when there are more chunks than chunk_streams);
  the values, hidden states and gradients equal the unchunked ones."""
  cfg = get_config("tiny", num_hidden_layers=2)
  model = SqueezeBert(cfg, head="classification", rngs=nnx.Rngs(params=0))
  plan = lambda **kw: with_execution(model, **kw)
  # "auto" chunks only on a single CPU device (the tests run with several).
  assert model.transformer.chunk_size(64) == (8 if jax.device_count() == 1 else 0)
  assert [plan(batch_chunk=8).transformer.chunk_size(b) for b in (4, 8, 16, 12, 7, 18)] == [
      0, 0, 8, 6, 0, 6]
  whole_model = plan(batch_chunk=0)
  assert whole_model.transformer.chunk_size(64) == 0
  ids = jax.random.randint(jax.random.key(0), (16, 9), 0, cfg.vocab_size)
  mask = jnp.ones_like(ids).at[3, 5:].set(0)
  call = lambda m: m(ids, mask, deterministic=True, output_hidden_states=True)
  fn = lambda m: jitted(call, m)
  grad = lambda m: jitted(lambda mm: nnx.grad(lambda m3: call(m3).logits.sum())(mm), m)
  whole, g_whole = fn(whole_model), grad(whole_model)
  chunked_model = plan(batch_chunk=8)
  chunked, g_chunked = fn(chunked_model), grad(chunked_model)
  np.testing.assert_allclose(chunked.logits, whole.logits, atol=1e-6, rtol=0)
  for a, b in zip(chunked.hidden_states, whole.hidden_states):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
  for a, b in zip(jax.tree.leaves(g_chunked), jax.tree.leaves(g_whole)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  # Chunks of 4 (4 chunks): a loop of 2 steps x 2 independent chains, 3 chains -> 2 (the
  # largest divisor of the chunk count), and all 4 chains in one step (no loop).
  for streams in (2, 3, 4):
    out = fn(plan(batch_chunk=4, chunk_streams=streams))
    np.testing.assert_allclose(out.logits, whole.logits, atol=1e-6, rtol=0)
    for a, b in zip(out.hidden_states, whole.hidden_states):
      np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
  with pytest.raises(ValueError, match="chunk_streams"):
    get_config("tiny", chunk_streams=0)
  with pytest.raises(ValueError, match="batch_chunk"):
    get_config("tiny", batch_chunk="many")
  assert get_config("tiny", batch_chunk="8").batch_chunk == 8  # a config-flag string
  # Dropout (train mode) never chunks: its RNG stream stays that of the whole batch.
  r1 = chunked_model(ids, mask, rngs=jax.random.key(3), deterministic=False).logits
  r2 = whole_model(ids, mask, rngs=jax.random.key(3), deterministic=False).logits
  np.testing.assert_array_equal(r1, r2)
