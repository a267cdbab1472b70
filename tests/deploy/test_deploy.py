"""squeezebert.deploy: the ONNX graph vs our JAX model, int8 in ORT's kernels, the export CLI,
the README's device snippet (run exactly as written, without JAX or TF), the deploy bench."""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the export extra: pip install -e '.[export]'")
pytest.importorskip("onnx", reason="the export extra: pip install -e '.[export]'")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

import squeezebert  # noqa: E402
from squeezebert import quant  # noqa: E402
from squeezebert.assets import Assets  # noqa: E402
from squeezebert.convert import save_pretrained  # noqa: E402
from squeezebert.data import tokenizer as tokenization  # noqa: E402
from squeezebert.deploy import bench as deploy_bench  # noqa: E402
from squeezebert.deploy import check, deps, onnx_export, onnx_graph  # noqa: E402
from squeezebert.model.params import flat_params  # noqa: E402
from squeezebert.quant import core as quant_core  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
LABELS = ("negative", "positive")


def inputs(vocab: int, batch: int = 3, length: int = 20, seed: int = 0):
  """Random ids, one padded row, both token types."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, vocab, (batch, length))
  mask = np.ones_like(ids)
  mask[1, length // 2:] = 0
  types = np.zeros_like(ids)
  types[:, 5:] = 1
  return ids, mask, types


def ort_outputs(proto_or_path, ids, mask, types) -> dict:
  path = proto_or_path
  if isinstance(proto_or_path, onnx.ModelProto):
    sess = ort.InferenceSession(proto_or_path.SerializeToString(),
                                providers=["CPUExecutionProvider"])
  else:
    sess = onnx_export.session(path)
  return onnx_export.run(sess, ids, mask, types)


@pytest.mark.parametrize("variant,overrides,heads", [
    ("tiny", {}, ("base", "classification", "regression", "token", "qa")),
    # BERT-like (every group 1), factorized embedding, shared layers, tanh GELU, unequal groups
    ("tiny", dict(q_groups=1, k_groups=1, v_groups=1, intermediate_groups=1, output_groups=1,
                  embedding_size=16, share_layers=True, hidden_act="gelu_new"), ("qa",)),
    ("tiny", dict(k_groups=1, intermediate_groups=4, output_groups=2, post_attention_groups=2,
                  hidden_act="relu"), ("token",)),
])
def test_float_graph_matches_jax(variant, overrides, heads):
  cfg = squeezebert.get_config(variant, **overrides)
  ids, mask, types = inputs(cfg.vocab_size)
  for head in heads:
    model = squeezebert.build_model(cfg, head=head, num_labels=3, seed=1)
    proto = onnx_graph.build_onnx(cfg, flat_params(model), head, 3)
    got = ort_outputs(proto, ids, mask, types)
    ref = model(ids, mask, types)
    assert set(got) == set(onnx_graph.head_outputs(head))
    for name, value in got.items():
      want = np.asarray(getattr(ref, name))
      assert value.shape == want.shape, (head, name)
      np.testing.assert_allclose(value, want, atol=2e-5, err_msg=f"{head}/{name}")


def test_graph_is_real_matmuls_that_ort_turns_into_int8_gemms(tmp_path):
  """Every projection is a MatMul with a constant weight (no Expand/Einsum); with --quant int8
  none is left float, their int8 weights are the integers of our own int8 model (qwix), the
  tables are int8 per row, and ORT fuses every int8 matmul into DynamicQuantizeMatMul."""
  cfg = squeezebert.get_config("tiny")
  model = squeezebert.build_model(cfg, head="classification")
  meta = onnx_export.export_onnx(model, str(tmp_path / "int8"), "int8")
  assert meta["quant"] == "int8" and meta["outputs"] == ["logits"]
  float_ops = {n.op_type for n in onnx_graph.build_onnx(cfg, flat_params(model),
                                                        "classification").graph.node}
  assert "MatMul" in float_ops and not float_ops & {"Einsum", "Expand", "ReduceSum"}
  g = onnx.load(str(tmp_path / "int8" / onnx_export.MODEL)).graph
  consts = {i.name: onnx.numpy_helper.to_array(i) for i in g.initializer}
  const_matmuls = [n for n in g.node if n.op_type == "MatMul" and n.input[1] in consts]
  assert not const_matmuls, "float MatMuls with constant weights left after quantization"
  # 2 layers x (2 q/k/v groups + 1 post-attention + 2 + 2 FFN groups) + pooler + classifier
  assert sum(n.op_type == "MatMulInteger" for n in g.node) == 2 * 7 + 2
  ours = quant_core.flat_state(quant_core.to_int8(model, quant.QuantConfig(mode="int8")))
  want = ours["transformer/layers/1/intermediate/proj/kernel/array/qvalue"][1]
  got = [v for k, v in consts.items() if "layers/1/intermediate/proj/g1/kernel.int8" in k]
  assert len(got) == 1 and np.array_equal(got[0], want) and want.min() == -128
  so = ort.SessionOptions()
  so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
  ort.InferenceSession(str(tmp_path / "int8" / onnx_export.MODEL), so,
                       providers=["CPUExecutionProvider"])
  fused = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
  assert fused.count("DynamicQuantizeMatMul") == 2 * 7 + 2 and "MatMulInteger" not in fused
  tables = [v for k, v in consts.items() if "word_embeddings" in k and v.dtype == np.int8]
  assert len(tables) == 1 and np.array_equal(
      tables[0], ours["transformer/embeddings/word_embeddings/qvalue"])


def test_int8_export_close_to_our_int8_model_and_from_an_int8_dir(tmp_path):
  """The int8 export's logits are near our int8 model's (same weights, ORT's activation
  scales); exporting that int8 model itself gives the same graph."""
  cfg = squeezebert.get_config("tiny")
  model = squeezebert.build_model(cfg, head="classification", seed=3)
  int8 = quant_core.to_int8(model, quant.QuantConfig(mode="int8"))
  ids, mask, types = inputs(cfg.vocab_size, batch=8, length=24)
  onnx_export.export_onnx(model, str(tmp_path / "a"), "int8")
  onnx_export.export_onnx(int8, str(tmp_path / "b"), "int8")
  a = ort_outputs(str(tmp_path / "a"), ids, mask, types)["logits"]
  b = ort_outputs(str(tmp_path / "b"), ids, mask, types)["logits"]
  ref = np.asarray(int8(ids, mask, types).logits)
  scale = np.max(np.abs(ref))
  assert np.max(np.abs(a - ref)) < 0.05 * scale
  np.testing.assert_array_equal(a, b)


def test_clear_errors(tmp_path, monkeypatch):
  cfg = squeezebert.get_config("tiny")
  with pytest.raises(ValueError, match="supports heads"):
    onnx_graph.build_onnx(cfg, {}, "mlm")
  with pytest.raises(ValueError, match="separable_kernel"):
    onnx_graph.build_onnx(cfg.replace(separable_kernel=3), {}, "base")
  with pytest.raises(ValueError, match="quant must be one of"):
    onnx_export.export_onnx(squeezebert.build_model(cfg), str(tmp_path), "int4")
  with pytest.raises(FileNotFoundError, match="squeezebert.export --format onnx"):
    onnx_export.session(str(tmp_path))
  real_import = deps.importlib.import_module
  monkeypatch.setattr(deps.importlib, "import_module",
                      lambda m: (_ for _ in ()).throw(ImportError(f"No module named {m!r}"))
                      if m.startswith("onnxruntime") else real_import(m))
  with pytest.raises(deps.MissingDependency, match=re.escape('pip install -e ".[export]"')):
    onnx_export.session(str(tmp_path))
  assert not deps.available()


def readme_snippet() -> str:
  text = (REPO / "README.md").read_text()
  m = re.search(r"<!-- deploy-snippet -->\s*```python\n(.*?)```\s*<!-- /deploy-snippet -->", text,
                re.S)
  assert m, "README.md lost its deploy snippet markers"
  return m.group(1)


@pytest.mark.heavy
def test_export_cli_then_the_readme_snippet_classifies_without_jax(tmp_path):
  """python -m squeezebert.export --format onnx [--quant int8], then README's snippet, exactly as
  written (only its directory replaced), in a fresh interpreter: no JAX / TF / squeezebert
  imported, and the label is our model's."""
  cfg = squeezebert.get_config("tiny", vocab_size=30522, max_position_embeddings=64)
  model = squeezebert.build_model(cfg, head="classification", seed=0)
  src = str(tmp_path / "model")
  save_pretrained(model, src, extra=dict(labels=list(LABELS)),
                  files=tokenization.tokenizer_files(None, 32))
  snippet = readme_snippet()
  assert 'DIR = "runs/sst2_onnx"' in snippet and "import jax" not in snippet
  sentence = re.search(r'tokenizer\.encode\("([^"]+)"\)', snippet).group(1)
  enc = tokenization.encode(Assets(LABELS, None, 32).tokenizer(), [sentence], max_len=32)
  ids = enc["input_ids"][0][None]
  want = np.asarray(model(ids, np.ones_like(ids), np.zeros_like(ids)).logits)[0]
  assert abs(want[0] - want[1]) > 1e-4  # a decisive random model: the comparison means something
  probe = ("\nimport sys\nprint('IMPORTED', sorted(m for m in ('jax', 'jaxlib', 'tensorflow', "
           "'flax', 'torch', 'squeezebert') if m in sys.modules))\n")
  for quant_flag in ("none", "int8"):
    out = str(tmp_path / f"onnx_{quant_flag}")
    p = subprocess.run([sys.executable, "-m", "squeezebert.export", "--format", "onnx",
                        "--quant", quant_flag, "--model", src, "--out", out],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "check (" in p.stdout
    meta = json.load(open(os.path.join(out, onnx_export.META)))
    assert meta["labels"] == list(LABELS) and meta["max_len"] == 32
    assert {"tokenizer.json", "vocab.txt"} <= set(os.listdir(out))
    props = {e.key: e.value for e in onnx.load(os.path.join(out, onnx_export.MODEL)).metadata_props}
    props = {k: json.loads(props[k]) for k in ("labels", "quant")}
    assert props["labels"] == list(LABELS) and props["quant"] == quant_flag
    code = snippet.replace('"runs/sst2_onnx"', repr(out)) + probe
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    label, imported = run.stdout.strip().splitlines()
    assert imported == "IMPORTED []"
    if quant_flag == "int8":  # the label of the int8 logits this runtime computes in-process
      logits = onnx_export.run(onnx_export.session(out), ids)["logits"][0]
      assert np.max(np.abs(logits - want)) < 0.05 * np.max(np.abs(want)) + 1e-3
      want = logits
    assert label == LABELS[int(np.argmax(want))]


@pytest.mark.heavy
def test_cli_errors_name_the_problem(tmp_path):
  """One line each: --quant with jax.export, fixed shapes with ONNX, and a missing onnx package
  (hidden by a stub that fails to import) naming the pip command."""
  src = str(tmp_path / "model")
  save_pretrained(squeezebert.build_model(squeezebert.get_config("tiny"), head="base"), src)
  stub = tmp_path / "stub"
  stub.mkdir()
  (stub / "onnx.py").write_text("raise ImportError('No module named onnx')\n")
  hidden = {**os.environ, "PYTHONPATH": os.pathsep.join([str(stub), str(REPO)])}
  for extra, msg, env in (
      (["--quant", "int8"], "--quant int8 is an ONNX option", None),
      (["--format", "onnx", "--batch", "2"], "dynamic axes", None),
      (["--format", "onnx"], 'install it with:\n  pip install -e ".[export]"', hidden)):
    p = subprocess.run([sys.executable, "-m", "squeezebert.export", "--model", src, "--out",
                        str(tmp_path / "o"), *extra], capture_output=True, text=True, cwd=REPO,
                       timeout=300, env=env)
    assert p.returncode == 1 and msg in p.stderr and "Traceback" not in p.stderr, p.stderr[-800:]


def test_check_summary():
  labels = np.array([0, 1, 1, 0])
  logits = {"labels": labels,
            "jax_float": np.array([[1, 0], [0, 1], [0, 1], [1, 0]], np.float32),
            "jax_int8": np.array([[1, 0], [0, 1], [1, 0], [1, 0]], np.float32),
            "onnx_int8": np.array([[1, 0], [0, 1], [1, 0], [0, 1]], np.float32)}
  res = check.summarize(logits)
  assert res["examples"] == 4
  assert res["accuracy"] == {"jax_float": 1.0, "jax_int8": 0.75, "onnx_int8": 0.5}
  assert res["prediction_agreement"] == {"onnx_int8 vs jax_float": 0.5,
                                         "onnx_int8 vs jax_int8": 0.75}
  assert res["max_abs_logit_error_vs_jax_float"] == {"onnx_int8": 1.0}


def test_deploy_bench_rows_and_targets():
  """One pinned worker process, tiny model: every row timed at every batch size, speedups
  against jax_fp32 at the same (threads, batch), targets reported."""
  rows = ("jax_fp32", "onnx_float", "onnx_int8")
  out = deploy_bench.run("tiny", batches=(1, 2), threads=(1,), seq=16, rounds=2, warmup=1,
                         rows=rows)
  json.dumps(out)
  got = {(r["row"], r["batch"]) for r in out["results"]}
  assert got == {(r, b) for r in rows for b in (1, 2)}
  for r in out["results"]:
    assert r["threads"] == 1 and r["ms_per_seq"] > 0 and r["ms_per_seq_min"] <= r["ms_per_seq"]
    assert r["speedup_vs_torch_int8"] is None
  fp32 = {r["batch"]: r["ms_per_seq"] for r in out["results"] if r["row"] == "jax_fp32"}
  for r in out["results"]:
    assert r["speedup_vs_jax_fp32"] == pytest.approx(fp32[r["batch"]] / r["ms_per_seq"])
  assert set(out["targets"]) == {"threads1/batch1", "threads1/batch2"}
  assert "onnx_int8" in deploy_bench.table(out) and len(out["load_before"]) == 3
