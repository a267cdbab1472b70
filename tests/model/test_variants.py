"""Model-family variants (ALBERT-like, squeeze-and-expand, hybrid, DistilBERT-like surgery):
each one's defining property."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from squeezebert import load
from squeezebert import bench, convert
from squeezebert.model import SqueezeBert, get_config, surgery
from squeezebert.model.layers import ConvMixer, SelfAttention, SeqConv
from squeezebert.model.model import param_count


def make(head="classification", **kw):
  return SqueezeBert(get_config("tiny", **kw), head=head, rngs=nnx.Rngs(params=0))


IDS = jnp.array([[2, 5, 7, 9, 3, 0, 0], [2, 4, 8, 4, 6, 4, 3]])
MASK = (IDS > 0).astype(jnp.int32)


def test_shared_layers_are_one_array():
  m = make(share_layers=True, num_hidden_layers=3)
  assert len(m.transformer.layers) == 1
  state = nnx.to_pure_dict(nnx.state(m, nnx.Param))
  assert list(state["transformer"]["layers"].keys()) == [0]
  # Same params as a 1-layer model, but applied 3 times (different output than 1 layer).
  one = make(num_hidden_layers=1)
  assert param_count(m) == param_count(one)
  nnx.update(one, nnx.state(m))
  h3 = m(IDS, MASK, output_hidden_states=True).hidden_states
  assert len(h3) == 4
  np.testing.assert_allclose(h3[1], one(IDS, MASK).last_hidden_state, atol=1e-6)
  assert not np.allclose(h3[3], h3[1])
  # One array: its gradient sums the contributions of all three applications.
  graphdef, params, rest = nnx.split(m, nnx.Param, ...)

  def loss(p):
    return jnp.sum(nnx.merge(graphdef, p, rest)(IDS, MASK).last_hidden_state ** 2)

  g = jax.grad(loss)(params)
  assert np.abs(np.asarray(g["transformer"]["layers"][0]["attention"]["query"]["kernel"][...])).sum() > 0


def test_factorized_embedding_albert():
  m = make(head="mlm", embedding_size=16)  # hidden 32
  assert m.transformer.embeddings.word_embeddings.shape == (m.config.vocab_size, 16)
  assert m.transformer.embedding_projection.kernel.shape == (16, 32)
  out = m(IDS, MASK)
  assert out.last_hidden_state.shape == (2, 7, 32)
  assert out.logits.shape == (2, 7, m.config.vocab_size)  # tied [V, E] decoder
  assert param_count(m) < param_count(make(head="mlm"))


def test_seq_conv_mixes_only_along_the_sequence():
  cfg = get_config("tiny")
  conv = SeqConv(4, 3, cfg, rngs=nnx.Rngs(params=0))
  conv.kernel[...] = jax.random.normal(jax.random.key(1), (3, 4))
  bias = jnp.zeros((1, 1, 1, 6))
  x = jax.random.normal(jax.random.key(2), (1, 6, 4))
  jac = jax.jacobian(lambda x: conv(x, bias))(x)[0, :, :, 0]  # [t_out, c_out, t_in, c_in]
  for t in range(6):
    for c in range(4):
      for t2 in range(6):
        for c2 in range(4):
          v = float(jac[t, c, t2, c2])
          if c2 != c or abs(t2 - t) > 1:
            assert v == 0.0, (t, c, t2, c2)
          else:
            assert v == pytest.approx(float(conv.kernel[t2 - t + 1, c]), rel=1e-6)


@pytest.mark.parametrize("kw", [dict(separable_kernel=3), dict(conv_layers=(0,), conv_kernel=5),
                                dict(embedding_size=16, share_layers=True)])
def test_variants_are_padding_invariant(kw):
  m = make(**kw)
  a = m(IDS, MASK).last_hidden_state
  ids2 = IDS.at[0, 5:].set(jnp.array([11, 12]))  # change the padded positions' ids
  b = m(ids2, MASK).last_hidden_state
  np.testing.assert_allclose(a[0, :5], b[0, :5], atol=1e-6)
  np.testing.assert_allclose(a[1], b[1], atol=1e-6)


def test_hybrid_layers_replace_attention():
  m = make(num_hidden_layers=3, conv_layers=(0, 2), conv_kernel=5)
  kinds = [type(layer.attention) for layer in m.transformer.layers]
  assert kinds == [ConvMixer, SelfAttention, ConvMixer]
  full = bench.analytic_flops(get_config("tiny", num_hidden_layers=3), 32)["encoder"]
  hyb = bench.analytic_flops(m.config, 32)["encoder"]
  assert hyb < full
  assert m(IDS, MASK).logits.shape == (2, 2)


def test_separable_ffn_has_depthwise_conv():
  m = make(separable_kernel=3)
  for layer in m.transformer.layers:
    assert isinstance(layer.ffn_depthwise, SeqConv)
    assert layer.ffn_depthwise.kernel.shape == (3, 32)
  assert make().transformer.layers[0].ffn_depthwise is None


@pytest.mark.parametrize("kw, msg", [
    (dict(embedding_size=64), "embedding_size"),
    (dict(separable_kernel=4), "odd"),
    (dict(conv_layers=(5,)), "conv_layers"),
    (dict(conv_layers=(0,), share_layers=True), "share_layers"),
])
def test_variant_config_errors(kw, msg):
  with pytest.raises(ValueError, match=msg):
    get_config("tiny", **kw)


def test_conv_layers_from_string_and_json_roundtrip():
  cfg = get_config("tiny", conv_layers="0, 1")
  assert cfg.conv_layers == (0, 1)
  from squeezebert.model import ModelConfig
  assert ModelConfig(**cfg.to_dict()) == cfg


def test_variant_save_load_and_no_hf_export(tmp_path):
  m = make(embedding_size=16, share_layers=True)
  convert.save_pretrained(m, str(tmp_path / "ours"))
  m2 = load.from_pretrained(str(tmp_path / "ours"))
  np.testing.assert_allclose(m(IDS, MASK).logits, m2(IDS, MASK).logits, atol=1e-6)
  with pytest.raises(ValueError, match="save_pretrained"):
    convert.export_hf(m, str(tmp_path / "hf"))


def test_layer_indices():
  assert surgery.layer_indices("every_other", 12, 6) == [0, 2, 4, 7, 9, 11]  # DistilBERT
  assert surgery.layer_indices("first_k", 6, 3) == [0, 1, 2]
  assert surgery.layer_indices("1,3", 6, 2) == [1, 3]
  for spec, n in (("every_other", 7), ("0,0", 2), ("x", 2), ("0,9", 2)):
    with pytest.raises(ValueError):
      surgery.layer_indices(spec, 6, n)


def test_select_layers_copies_exactly():
  m = make(num_hidden_layers=4, conv_layers=(3,))
  small = surgery.select_layers(m, [0, 3])
  assert small.config.num_hidden_layers == 2 and small.config.conv_layers == (1,)
  a, b = convert.flat_params(m), convert.flat_params(small)
  for k, v in b.items():
    src = k.replace("layers/1/", "layers/3/")
    np.testing.assert_array_equal(v, a[src])
  # Layer by layer: the small model's output is layers 0 and 3 of the big one applied in turn.
  big_h = m(IDS, MASK, output_hidden_states=True).hidden_states
  assert not np.allclose(big_h[2], small(IDS, MASK).last_hidden_state)


def test_reinit_resets_only_the_named_parameters():
  """reinit: paths containing a fragment take the seed's fresh init, all others are copied."""
  loaded = make(num_hidden_layers=2)
  nnx.update(loaded, jax.tree.map(lambda p: p + 1.0, nnx.state(loaded, nnx.Param)))  # "trained"
  out, hit = surgery.reinit(loaded, ("pooler", "layers/1/"), seed=3)
  fresh = convert.flat_params(SqueezeBert(loaded.config, head="classification", num_labels=2,
                                          rngs=nnx.Rngs(params=3)))
  old, new = convert.flat_params(loaded), convert.flat_params(out)
  assert hit and all("pooler" in k or "layers/1/" in k for k in hit)
  assert any("layers/1/attention" in k for k in hit) and not any("layers/0/" in k for k in hit)
  for k, v in new.items():
    np.testing.assert_array_equal(v, fresh[k] if k in hit else old[k], err_msg=k)
  with pytest.raises(ValueError, match=r"reinit_params: \['polar'\] match no parameter"):
    surgery.reinit(loaded, ("pooler", "polar"))


def test_run_file_accepts_older_workdirs_and_json_lists(tmp_path):
  import json as _json
  from squeezebert import workdir as ckpt_lib
  cfg = get_config("tiny", conv_layers=(1,))
  run = dict(task="sst2", model=cfg.to_dict(), head="classification", num_labels=2)
  ckpt_lib.write_run_file(str(tmp_path), run)
  ckpt_lib.write_run_file(str(tmp_path), dict(run, model={**cfg.to_dict(), "conv_layers": (1,)}))
  # A workdir written before the variant fields existed resumes with their defaults.
  old = get_config("tiny").to_dict()
  for k in ("share_layers", "separable_kernel", "conv_layers", "conv_kernel"):
    old.pop(k)
  d = tmp_path / "old"
  (d / "checkpoints" / "10").mkdir(parents=True)  # the run.json of a workdir with checkpoints
  (d / "run.json").write_text(_json.dumps(dict(run, model=old)))
  ckpt_lib.write_run_file(str(d), dict(run, model=get_config("tiny").to_dict()))
  with pytest.raises(ValueError, match="different model"):
    ckpt_lib.write_run_file(str(d), dict(run, model=get_config("tiny", share_layers=True).to_dict()))
  # Without checkpoints (a run that failed early) the workdir is simply taken.
  ckpt_lib.write_run_file(str(tmp_path), dict(run, model=get_config("tiny", share_layers=True)
                                                   .to_dict()))
