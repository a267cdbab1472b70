"""Checkpoint conversion: HF safetensors / pytorch_model.bin (torch-free, no pickle code
execution), the real MiniLM checkpoint, export to HF, our own format, the CLI, and errors."""

import json
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from flax import nnx
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors.numpy import load_file, save_file

import squeezebert
from squeezebert import convert
from squeezebert.convert import CheckpointMismatchError, names
from squeezebert.convert.torch_zip import load_torch_bin
from squeezebert.model import build_model, get_config

ATOL = 1e-5
MIXED = dict(q_groups=1, k_groups=2, v_groups=4, post_attention_groups=2,
             intermediate_groups=4, output_groups=8)
_AUTO = {"base": "AutoModel", "mlm": "AutoModelForMaskedLM",
         "pretraining": "AutoModelForPreTraining",
         "classification": "AutoModelForSequenceClassification",
         "regression": "AutoModelForSequenceClassification",
         "token": "AutoModelForTokenClassification", "qa": "AutoModelForQuestionAnswering",
         "multiple_choice": "AutoModelForMultipleChoice"}


ALL_ONE = dict(q_groups=1, k_groups=1, v_groups=1, post_attention_groups=1,
               intermediate_groups=1, output_groups=1)


def _params(model):
  return convert.flat_params(model)


def randomize_ours(model, seed=0, std=0.05):
  """Random values for every parameter (numpy RNG: no per-shape JAX compiles)."""
  rng = np.random.default_rng(seed)
  state = nnx.state(model, nnx.Param)
  pure = nnx.to_pure_dict(state)
  flat = flatten_dict(pure)
  for k, v in flat.items():
    noise = rng.standard_normal(v.shape).astype(np.float32)
    if k[-1] == "scale":
      flat[k] = 1.0 + 0.1 * noise
    elif k[-1] == "bias":
      flat[k] = 0.1 * noise
    else:
      flat[k] = std * noise
  nnx.replace_by_pure_dict(state, unflatten_dict(flat))
  nnx.update(model, state)
  return model


def _small_hf(hfkit, family, head, seed=0, **kw):
  cfg = {**hfkit.SMALL_SQB, **MIXED} if family == "squeezebert" else dict(hfkit.SMALL_BERT)
  cfg.update(kw)
  return hfkit.make_hf(family, head, seed=seed, **cfg), cfg


# ------------------------------------------------------------------ pytorch_model.bin
@pytest.mark.parametrize("family,head", [("squeezebert", "mlm"), ("bert", "pretraining")])
def test_torch_bin_parity(hfkit, parity_log, tmp_path, family, head):
  import torch
  hf_model, cfg = _small_hf(hfkit, family, head, seed=7)
  hf_model.save_pretrained(tmp_path)
  os.remove(tmp_path / "model.safetensors")
  sd = hf_model.state_dict()  # tied decoder weight/bias included, sharing storage
  prefix = "transformer." if family == "squeezebert" else "bert."
  # old checkpoints carry the position_ids buffer (int64): read, then ignored
  sd[prefix + "embeddings.position_ids"] = torch.arange(cfg["max_position_embeddings"])[None]
  torch.save(sd, tmp_path / "pytorch_model.bin")
  raw = load_torch_bin(str(tmp_path / "pytorch_model.bin"))
  assert set(raw) == set(sd)
  for k, v in sd.items():
    np.testing.assert_array_equal(raw[k], v.numpy(), err_msg=k)
  ours = squeezebert.from_pretrained(str(tmp_path))
  assert ours.head == head
  ids, mask, tt = hfkit.make_inputs(3, 12, cfg["vocab_size"], seed=4)
  want = hfkit.hf_forward(hf_model, head, ids, mask, tt)
  err = hfkit.max_abs_err(want, hfkit.ours_forward(ours, ids, mask, tt, want.keys()))
  parity_log(f"{family}-{head}-pytorch_model.bin", err)
  assert err < ATOL


def test_torch_bin_reader_layouts(tmp_path):
  """Views, offsets, non-contiguous strides, scalars and every common dtype."""
  import torch
  base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
  sd = {"t": base.T, "view": base[2:4, 3:], "scalar": torch.tensor(3.5), "i64": torch.arange(5),
        "i32": torch.arange(4, dtype=torch.int32), "f16": torch.randn(3, 2).half(),
        "bf16": torch.randn(2, 3).bfloat16(), "bool": torch.tensor([True, False]),
        "f64": torch.randn(2, dtype=torch.float64), "u8": torch.arange(3, dtype=torch.uint8)}
  path = tmp_path / "pytorch_model.bin"
  torch.save(sd, path)
  got = load_torch_bin(str(path))
  assert set(got) == set(sd)
  for k, v in sd.items():
    want = v.float().numpy() if k == "bf16" else v.numpy()
    assert got[k].shape == tuple(v.shape), k
    np.testing.assert_array_equal(np.asarray(got[k], want.dtype), want, err_msg=k)


def test_torch_bin_reader_needs_no_torch(hfkit, tmp_path):
  import torch
  torch.save({"embeddings.word_embeddings.weight": torch.ones(3, 2)}, tmp_path / "w.bin")
  code = ("import sys; from squeezebert.convert.torch_zip import load_torch_bin; "
          f"sd = load_torch_bin({str(tmp_path / 'w.bin')!r}); "
          "assert sd['embeddings.word_embeddings.weight'].sum() == 6; "
          "assert 'torch' not in sys.modules and 'transformers' not in sys.modules; print('ok')")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


class _Reduce:
  """Pickles as `fn(*args)`: what a malicious checkpoint would do."""

  def __init__(self, fn, *args):
    self.fn, self.args = fn, args

  def __reduce__(self):
    return self.fn, self.args


class Innocent:  # a custom class: also refused (only tensors/storages/OrderedDict allowed)
  def __init__(self):
    self.x = 1


def _write_bin(path, payload_bytes):
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", payload_bytes)
    zf.writestr("archive/version", "3\n")


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "custom_class",
                                  "torch.save_custom_object"])
def test_malicious_pickle_refused(hfkit, tmp_path, kind):
  marker = tmp_path / "pwned"
  path = tmp_path / "pytorch_model.bin"
  if kind == "os.system":
    _write_bin(path, pickle.dumps({"w": _Reduce(os.system, f"touch {marker}")}, protocol=2))
  elif kind == "builtins.eval":
    _write_bin(path, pickle.dumps(
        {"w": _Reduce(eval, f"open({str(marker)!r}, 'w').write('x')")}, protocol=2))
  elif kind == "custom_class":
    _write_bin(path, pickle.dumps({"w": Innocent()}, protocol=2))
  else:
    import torch
    torch.save({"w": torch.ones(2), "obj": _Reduce(os.system, f"touch {marker}")}, path)
  with pytest.raises(pickle.UnpicklingError, match="refusing"):
    load_torch_bin(str(path))
  assert not marker.exists()
  # through from_pretrained too (an HF directory with config.json and the bad .bin)
  (tmp_path / "config.json").write_text(hfkit.hf_config("squeezebert", "base",
                                                       **hfkit.SMALL_SQB).to_json_string())
  with pytest.raises(pickle.UnpicklingError):
    squeezebert.from_pretrained(str(tmp_path))
  assert not marker.exists()


def test_torch_bin_legacy_format_refused(tmp_path):
  path = tmp_path / "pytorch_model.bin"
  path.write_bytes(pickle.dumps({"w": 1}))
  with pytest.raises(ValueError, match="zip"):
    load_torch_bin(str(path))


# ------------------------------------------------------------------ the real MiniLM checkpoint
SENTENCES = ["The quick brown fox jumps over the lazy dog.",
             "SqueezeBERT uses grouped convolutions.",
             "Hello!",
             "A considerably longer sentence, with punctuation, numbers like 1234 and rare "
             "words such as photosynthesis, to make the padding uneven."]


def test_minilm_parity(hfkit, minilm_dir, parity_log):
  import torch
  from transformers import BertModel, BertTokenizerFast
  tok = BertTokenizerFast.from_pretrained(minilm_dir)
  hf_model = BertModel.from_pretrained(minilm_dir).eval()
  ours = squeezebert.from_pretrained(minilm_dir)
  assert ours.head == "base" and ours.config.family == "bert"
  assert ours.config.hidden_size == 384 and ours.config.num_hidden_layers == 6
  batches = [tok(SENTENCES, padding=True, return_tensors="np"),
             tok(SENTENCES[:2], SENTENCES[2:], padding=True, return_tensors="np")]
  assert batches[0]["attention_mask"].min() == 0 and batches[1]["token_type_ids"].max() == 1
  for i, enc in enumerate(batches):
    with torch.no_grad():
      ref = hf_model(**{k: torch.as_tensor(v) for k, v in enc.items()})
    out = ours(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"],
               deterministic=True)
    m = enc["attention_mask"].astype(bool)
    want = dict(last_hidden_state=ref.last_hidden_state.numpy()[m],
                pooler_output=ref.pooler_output.numpy())
    got = dict(last_hidden_state=np.asarray(out.last_hidden_state)[m],
               pooler_output=np.asarray(out.pooler_output))
    err = hfkit.max_abs_err(want, got)
    name = f"minilm-l6-v2-real-{'single' if i == 0 else 'pairs'}"
    parity_log(name, err)
    assert err < ATOL
    # Padded positions (outputs nobody uses) are ill-conditioned in the trained model: there
    # HF fp32 itself is ~3.5e-5 away from an fp64 run of HF, so they get a looser bound.
    pad_err = float(np.abs(ref.last_hidden_state.numpy()[~m]
                           - np.asarray(out.last_hidden_state)[~m]).max(initial=0.0))
    parity_log(name + "-padded-positions", pad_err)
    assert pad_err < 2e-4


# ------------------------------------------------------------------ export to HF
EXPORT_CASES = [("squeezebert", "mlm"), ("squeezebert", "regression"),
                ("squeezebert", "multiple_choice"), ("bert", "classification"),
                ("bert", "mlm"), ("bert", "pretraining"), ("bert", "qa")]


@pytest.mark.parametrize("family,head", EXPORT_CASES, ids=[f"{f}-{h}" for f, h in EXPORT_CASES])
def test_export_hf_roundtrip(hfkit, parity_log, tmp_path, family, head):
  import transformers
  kw = {} if family == "squeezebert" else dict(family="bert", **ALL_ONE)
  cfg = get_config("tiny", **kw)
  ours = randomize_ours(build_model(cfg, head=head, num_labels=3, seed=1), seed=2)
  convert.export_hf(ours, str(tmp_path))
  hf_model, info = getattr(transformers, _AUTO[head]).from_pretrained(
      str(tmp_path), output_loading_info=True)
  hf_model.eval()
  assert type(hf_model).__name__ == names.hf_architecture(cfg, head)
  assert not info["missing_keys"], info
  assert not info["unexpected_keys"], info
  assert not info.get("mismatched_keys"), info
  assert not info.get("error_msgs"), info
  choices = 3 if head == "multiple_choice" else None
  ids, mask, tt = hfkit.make_inputs(2, 10, cfg.vocab_size, seed=5, choices=choices)
  want = hfkit.hf_forward(hf_model, head, ids, mask, tt)
  err = hfkit.max_abs_err(want, hfkit.ours_forward(ours, ids, mask, tt, want.keys()))
  parity_log(f"export-{family}-{head}", err)
  assert err < ATOL
  # and back: from_pretrained of the export gives exactly our parameters
  back = squeezebert.from_pretrained(str(tmp_path))
  assert back.head == head
  pb, po = _params(back), _params(ours)
  if not names.hf_has_pooler(cfg, head):  # BertForMaskedLM/QA have no pooler to carry
    po = {k: v for k, v in po.items() if "pooler" not in k}
  for k, v in po.items():
    np.testing.assert_array_equal(pb[k], v, err_msg=k)


def test_save_pretrained_roundtrip_bit_identical(tmp_path):
  ours = randomize_ours(build_model(get_config("tiny"), head="classification", num_labels=3,
                                    seed=0), seed=3)
  convert.save_pretrained(ours, str(tmp_path), extra=dict(note="x"))
  assert (tmp_path / convert.OURS_CONFIG).exists()
  back = squeezebert.from_pretrained(str(tmp_path))
  assert (back.head, back.num_labels, back.config) == ("classification", 3, ours.config)
  pb, po = _params(back), _params(ours)
  assert set(pb) == set(po)
  for k in po:
    np.testing.assert_array_equal(pb[k], po[k], err_msg=k)
  ids = np.array([[2, 7, 9, 11, 3, 0], [2, 5, 6, 3, 0, 0]])
  mask, tt = (ids > 0).astype(int), np.array([[0, 0, 0, 1, 1, 0], [0, 0, 1, 1, 0, 0]])
  a, b = ours(ids, mask, tt, deterministic=True), back(ids, mask, tt, deterministic=True)
  for k in ("last_hidden_state", "pooler_output", "logits"):
    np.testing.assert_array_equal(getattr(a, k), getattr(b, k))


def test_load_into_existing_model(hfkit, tmp_path):
  """The in-place loaders (used by training code on an already built, concrete model)."""
  src = randomize_ours(build_model(get_config("tiny"), head="mlm", seed=0), seed=4)
  dst = build_model(get_config("tiny"), head="mlm", seed=1)
  assert convert.load_params_into(dst, convert.flat_params(src)) == []
  for k, v in convert.flat_params(src).items():
    np.testing.assert_array_equal(convert.flat_params(dst)[k], v, err_msg=k)
  convert.export_hf(src, str(tmp_path))
  dst2 = build_model(get_config("tiny"), head="classification", num_labels=4, seed=1)
  fresh = convert.load_hf_state(dst2, load_file(str(tmp_path / "model.safetensors")))
  assert sorted(fresh) == ["classifier.bias", "classifier.weight"]
  np.testing.assert_array_equal(dst2.transformer.layers[1].output.proj.kernel[...],
                                src.transformer.layers[1].output.proj.kernel[...])


def _cli(*args):
  r = subprocess.run([sys.executable, "-m", "squeezebert.convert", *args], capture_output=True,
                     text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert r.returncode == 0, r.stderr[-3000:]
  return r.stdout


def test_cli_roundtrip(hfkit, parity_log, tmp_path):
  import transformers
  hf_model, cfg = _small_hf(hfkit, "squeezebert", "classification", seed=11)
  src, ours_dir, hf2 = tmp_path / "hf", tmp_path / "ours", tmp_path / "hf2"
  hf_model.save_pretrained(src)
  _cli("--from", str(src), "--to", str(ours_dir))
  assert (ours_dir / convert.OURS_CONFIG).exists()
  assert json.loads((ours_dir / convert.OURS_CONFIG).read_text())["head"] == "classification"
  _cli("--from", str(ours_dir), "--to", str(hf2))
  back, info = transformers.AutoModelForSequenceClassification.from_pretrained(
      str(hf2), output_loading_info=True)
  back.eval()
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert type(back) is type(hf_model)
  for k in ("q_groups", "k_groups", "v_groups", "post_attention_groups",
            "intermediate_groups", "output_groups", "num_labels"):
    assert getattr(back.config, k) == getattr(hf_model.config, k), k
  ids, mask, tt = hfkit.make_inputs(3, 12, cfg["vocab_size"], seed=6)
  want = hfkit.hf_forward(hf_model, "classification", ids, mask, tt)
  got = hfkit.hf_forward(back, "classification", ids, mask, tt)
  err = hfkit.max_abs_err(want, got)
  parity_log("cli-hf->ours->hf-squeezebert-classification", err)
  assert err < ATOL


# ------------------------------------------------------------------ clear errors
@pytest.fixture
def sqb_base_dir(hfkit, tmp_path):
  hf_model, _ = _small_hf(hfkit, "squeezebert", "base", seed=5)
  hf_model.save_pretrained(tmp_path)
  return tmp_path


def _edit(d, fn):
  sd = load_file(os.path.join(d, "model.safetensors"))
  fn(sd)
  save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})


def test_error_missing_encoder_keys(sqb_base_dir):
  gone = ["encoder.layers.1.attention.key.weight", "encoder.layers.0.output.layernorm.bias"]
  _edit(sqb_base_dir, lambda sd: [sd.pop(k) for k in gone])
  with pytest.raises(CheckpointMismatchError) as ei:
    squeezebert.from_pretrained(str(sqb_base_dir))
  assert "missing" in str(ei.value)
  for k in gone:
    assert k in str(ei.value)


def test_error_unexpected_key(sqb_base_dir):
  extra = "encoder.layers.0.attention.rotary.weight"
  _edit(sqb_base_dir, lambda sd: sd.update({extra: np.zeros((2, 2), np.float32)}))
  with pytest.raises(CheckpointMismatchError, match="unexpected") as ei:
    squeezebert.from_pretrained(str(sqb_base_dir))
  assert extra in str(ei.value)


def test_error_misshaped_keys(sqb_base_dir):
  bad = {"encoder.layers.0.intermediate.conv1d.weight": np.zeros((128, 17, 1), np.float32),
         "embeddings.word_embeddings.weight": np.zeros((100, 64), np.float32)}
  _edit(sqb_base_dir, lambda sd: sd.update(bad))
  with pytest.raises(CheckpointMismatchError, match="mis-shaped") as ei:
    squeezebert.from_pretrained(str(sqb_base_dir))
  for k in bad:
    assert k in str(ei.value)


def test_error_bert_checkpoint_missing_key(hfkit, tmp_path):
  hf_model, _ = _small_hf(hfkit, "bert", "classification")
  hf_model.save_pretrained(tmp_path)
  gone = "bert.encoder.layer.2.attention.self.value.bias"
  _edit(tmp_path, lambda sd: sd.pop(gone))
  with pytest.raises(CheckpointMismatchError) as ei:
    squeezebert.from_pretrained(str(tmp_path))
  assert gone[len("bert."):] in str(ei.value)


def test_error_ours_format(tmp_path):
  model = build_model(get_config("tiny"), head="base")
  convert.save_pretrained(model, str(tmp_path))
  gone, extra, bad = ("transformer/layers/1/output/proj/bias", "transformer/layers/0/extra",
                      "transformer/pooler/kernel")
  def fn(sd):
    sd.pop(gone)
    sd[extra] = np.zeros(3, np.float32)
    sd[bad] = np.zeros((3, 3), np.float32)
  sd = load_file(str(tmp_path / "model.safetensors"))
  fn(sd)
  save_file(sd, str(tmp_path / "model.safetensors"))
  with pytest.raises(CheckpointMismatchError) as ei:
    squeezebert.from_pretrained(str(tmp_path))
  for k in (gone, extra, bad):
    assert k in str(ei.value)


def test_not_a_checkpoint(tmp_path):
  with pytest.raises(FileNotFoundError):
    squeezebert.from_pretrained(str(tmp_path / "nope"))


def test_new_label_count_gives_fresh_head(hfkit, parity_log, tmp_path):
  import torch
  hf_model, cfg = _small_hf(hfkit, "squeezebert", "classification", seed=9)
  assert hf_model.config.num_labels == 3
  hf_model.save_pretrained(tmp_path)
  ours = squeezebert.from_pretrained(str(tmp_path), num_labels=5)
  assert ours.head == "classification" and ours.num_labels == 5
  assert ours.classifier.kernel.shape == (cfg["hidden_size"], 5)
  ids, mask, tt = hfkit.make_inputs(3, 12, cfg["vocab_size"], seed=8)
  with torch.no_grad():
    ref = hf_model.transformer(input_ids=torch.as_tensor(ids),
                               attention_mask=torch.as_tensor(mask),
                               token_type_ids=torch.as_tensor(tt))
  want = dict(last_hidden_state=ref.last_hidden_state.numpy(),
              pooler_output=ref.pooler_output.numpy())
  out = ours(ids, mask, tt, deterministic=True)
  assert out.logits.shape == (3, 5)
  err = hfkit.max_abs_err(want, {k: np.asarray(getattr(out, k)) for k in want})
  parity_log("new-label-count-encoder", err)
  assert err < ATOL
  # our format: same rule
  convert.save_pretrained(ours, str(tmp_path / "ours"))
  again = squeezebert.from_pretrained(str(tmp_path / "ours"), num_labels=2)
  assert again.classifier.kernel.shape == (cfg["hidden_size"], 2)
  np.testing.assert_array_equal(again(ids, mask, tt).last_hidden_state, out.last_hidden_state)
  # a different head on the same checkpoint: the classifier is ignored, not an error
  tok = squeezebert.from_pretrained(str(tmp_path), head="token", num_labels=4)
  assert tok(ids, mask, tt).logits.shape == (3, 12, 4)
