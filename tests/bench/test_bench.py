"""squeezebert.bench: result schema, analytic FLOPs vs the paper, XLA cost analysis vs analytic."""

import json
import subprocess
import sys

import numpy as np
import pytest

from squeezebert import bench

KEYS = {"variant", "head", "batch", "seq", "dtype", "param_dtype", "num_layers", "params",
        "flops_analytic", "flops_xla", "lower_s", "compile_s", "warmup", "iters", "times_s",
        "cpu_times_s", "latency_s", "seq_per_s", "ms_per_seq", "gflops_per_s", "memory",
        "backend", "device", "device_kind", "jax_version", "load_avg"}


@pytest.fixture(scope="module")
def tiny():
  return bench.run_benchmark("tiny", batch=2, seq=16, warmup=1, iters=2)


def test_result_schema(tiny):
  assert KEYS <= set(tiny)
  json.dumps(tiny)  # JSON-able as written by --json
  assert tiny["params"] == 17248 and tiny["init"] == "fast" and tiny["dtype"] == "float32"
  assert len(tiny["times_s"]) == 2
  lat = tiny["latency_s"]
  assert 0 < lat["p10"] <= lat["median"] <= lat["p90"]
  assert tiny["ms_per_seq"] == pytest.approx(1e3 * lat["median"] / 2)
  assert tiny["seq_per_s"] == pytest.approx(2 / lat["median"])
  fa = tiny["flops_analytic"]
  assert fa["per_batch"] == pytest.approx(2 * fa["per_seq"])
  assert tiny["gflops_per_s"] == pytest.approx(fa["per_batch"] / lat["median"] / 1e9)
  mem = tiny["memory"]
  assert mem["peak_bytes"] > 0 and mem["peak_source"] in (
      "device_peak_bytes_in_use", "compiled_memory_analysis", "process_max_rss")


@pytest.mark.parametrize("variant,ref", [("squeezebert-base", 7.40e9), ("bert-base", 22.35e9)])
def test_analytic_flops_match_paper(variant, ref):
  f = bench.analytic_flops(bench.make_config(variant), 128)
  assert f["encoder"] == pytest.approx(ref, rel=0.01)
  assert f["total"] == f["encoder"] + f["pooler"] and f["pooler"] == 2 * 768 * 768


def test_analytic_flops_closed_form():
  # BERT-base layer at L=128: 12*L*D^2 + 2*L^2*D MACs.
  f = bench.analytic_flops(bench.make_config("bert-base"), 128)
  assert f["layer_total"] == 2 * (12 * 128 * 768**2 + 2 * 128**2 * 768)
  # Groups divide the projection FLOPs (SqueezeBERT: q/k/v/intermediate/output /4).
  s = bench.analytic_flops(bench.make_config("squeezebert-base"), 128)["per_layer"]
  b = f["per_layer"]
  for k in ("qkv", "intermediate", "output"):
    assert s[k] * 4 == pytest.approx(b[k])
  assert s["post_attention"] == b["post_attention"]
  assert s["attention_scores"] == b["attention_scores"]


def test_xla_flops_vs_analytic(tiny):
  # XLA counts every dot at 2 FLOPs/MAC plus ~1 FLOP per elementwise op; at hidden 32 the
  # elementwise part (softmax, LayerNorm, GELU) is ~0.9x the matmuls, at width 256 ~0.15x.
  ratio = tiny["flops_xla"]["per_batch"] / tiny["flops_analytic"]["per_batch"]
  assert 1.0 < ratio < 2.5, ratio
  r = bench.run_benchmark("squeezebert-small", batch=2, seq=64, layers=1, warmup=0, iters=1)
  ratio = r["flops_xla"]["per_batch"] / r["flops_analytic"]["per_batch"]
  assert 1.0 < ratio < 1.2, ratio


def test_bf16_and_compare():
  out = bench.compare(batch=1, seq=8, dtype="bf16", variants=("tiny", "tiny"), layers=1,
                      warmup=0, iters=1)
  r = out["results"]["tiny"]
  assert r["dtype"] == "bfloat16" and r["param_dtype"] == "bfloat16"
  assert out["latency_ratio"] > 0 and out["flops_ratio"] == 1.0
  assert bench.make_config("tiny", "bf16", "f32").param_dtype == "float32"
  # Interleaved timing: the ratio and the ms/seq target then come from its medians.
  out = bench.compare(batch=2, seq=8, variants=("tiny", "bert-small"), layers=1, warmup=0,
                      iters=1, rounds=3)
  inter = out["interleaved"]
  assert out["timing"] == "interleaved" and inter["rounds"] == 3
  assert all(len(v) == 3 and min(v) > 0 for v in inter["times"].values())
  assert out["ms_per_seq"] == inter["median"]["tiny"]
  assert out["latency_ratio"] == pytest.approx(inter["median"]["tiny"]
                                               / inter["median"]["bert-small"])
  assert out["results"]["bert-small"]["num_layers"] == 1


def test_cli_writes_json(tmp_path):
  path = tmp_path / "out.json"
  subprocess.run([sys.executable, "-m", "squeezebert.bench", "--variant", "tiny", "--batch", "1",
                  "--seq", "8", "--warmup", "0", "--iters", "1", "--layers", "1",
                  "--json", str(path)], check=True, capture_output=True, timeout=120)
  r = json.loads(path.read_text())
  assert r["variant"] == "tiny" and r["num_layers"] == 1 and r["batch"] == 1


def test_layout_and_batch_chunk_options():
  """--layout / --batch_chunk are recorded; a chunked run reports the XLA FLOPs of the whole
  batch (cost analysis would count the lax.map body once)."""
  whole = bench.run_benchmark("tiny", batch=8, seq=16, warmup=0, iters=1, batch_chunk=0,
                              layout="einsum")
  chunked = bench.run_benchmark("tiny", batch=8, seq=16, warmup=0, iters=1, batch_chunk=4,
                                layout="split")
  assert (whole["batch_chunk"], chunked["batch_chunk"]) == (0, 4)
  assert (whole["chunk_streams"], chunked["chunk_streams"]) == (None, 4)
  looped = bench.run_benchmark("tiny", batch=8, seq=16, warmup=0, iters=1, batch_chunk=2,
                               chunk_streams=2)  # 4 chunks: a lax.map of 2 steps x 2 chains
  assert looped["chunk_streams"] == 2
  assert looped["flops_xla"]["per_batch"] == pytest.approx(whole["flops_xla"]["per_batch"],
                                                          rel=0.05)
  assert (whole["grouped_layout"], chunked["grouped_layout"]) == (["einsum"], ["split"])
  assert chunked["flops_xla"]["per_batch"] == pytest.approx(whole["flops_xla"]["per_batch"],
                                                           rel=0.05)
  paths = bench.compare_paths("tiny", batch=8, seq=16, rounds=2)
  assert set(paths["median"]) == {"einsum/chunk0/streams1", "split/chunk0/streams1",
                                  "split/chunk8/streams1", "split/chunk8/streams4",
                                  "split/chunk4/streams4"}
  assert all(len(v) == 2 and min(v) > 0 for v in paths["times"].values())
  with pytest.raises(ValueError, match="rounds"):
    bench.compare_paths("tiny", rounds=0)


# ------------------------------------------------------------------ --mode train
@pytest.mark.heavy
def test_train_benchmark_schema_and_flops():
  r = bench.run_train_benchmark("tiny", batch=4, seq=16, dtype="float32", warmup=1, iters=2)
  json.dumps(r)
  assert r["mode"] == "train" and r["task"] == "sst2" and len(r["times_s"]) == 2
  med = r["step_s"]["median"]
  assert r["tokens_per_s"] == pytest.approx(4 * 16 / med)
  # 6 x forward matmul MACs: 3 x (encoder + pooler + classifier) forward FLOPs per sequence.
  cfg = bench.make_config("tiny")
  fwd = bench.analytic_flops(cfg, 16)["total"] + 2 * cfg.hidden_size * 2
  assert r["flops"]["per_step"] == 4 * 3 * fwd
  assert r["peak_source"].startswith("measured") and r["peak_flops"] > 1e9  # CPU: measured
  assert r["mfu"] == pytest.approx(r["flops"]["per_step"] / med / r["peak_flops"])
  assert r["memory"]["peak_bytes"] > 0 and np.isfinite(r["final_loss"])
  assert r["attention"] == {"train": "manual", "eval": "manual"}
  # The pretraining head: MLM on the masked positions only, SOP; LAMB.
  p = bench.run_train_benchmark("squeezebert-small", batch=2, seq=16, head="pretraining",
                                optimizer="lamb", layers=1, warmup=0, iters=1)
  assert p["masked_positions"] == 3 and p["task"] == "pretrain"  # ceil(16 * 0.15)
  with pytest.raises(ValueError, match="vocab"):
    bench.run_train_benchmark("tiny", batch=2, seq=16, head="pretraining", iters=1)


def test_peak_table():
  from squeezebert.bench import device
  assert device.table_peak("NVIDIA H200", "bfloat16") == 989e12
  assert device.table_peak("NVIDIA A100-SXM4-80GB", "float32") == 156e12
  assert device.table_peak("TPU v5 lite", "bfloat16") == 197e12
  assert device.table_peak("TPU v5", "bfloat16") == 459e12
  assert device.table_peak("TPU v6 lite", "bfloat16") == 918e12
  assert device.table_peak("Quadro", "bfloat16") is None


def test_train_compare_hf():
  pytest.importorskip("torch")
  out = bench.compare_hf(batch=2, seq=16, rounds=2, variants=("tiny",), warmup=0)
  assert set(out["median_s"]) == {"ours/tiny", "hf/tiny"}
  assert all(len(v) == 2 and min(v) > 0 for v in out["times_s"].values())
  assert out["speedup"]["tiny"] == pytest.approx(out["median_s"]["hf/tiny"]
                                                 / out["median_s"]["ours/tiny"])


@pytest.mark.heavy
def test_train_cli(tmp_path):
  path = tmp_path / "train.json"
  p = subprocess.run([sys.executable, "-m", "squeezebert.bench", "--mode", "train",
                      "--variant", "tiny", "--batch", "2", "--seq", "8", "--warmup", "0",
                      "--iters", "1", "--remat", "full", "--fused_qkv", "--json", str(path)],
                     capture_output=True, text=True, timeout=180)
  assert p.returncode == 0, p.stderr[-2000:]
  r = json.loads(path.read_text())
  assert (r["remat"], r["fused_qkv"], r["batch"]) == ("full", True, 2)
  assert "MFU" in p.stdout
  bad = subprocess.run([sys.executable, "-m", "squeezebert.bench", "--remat", "full"],
                       capture_output=True, text=True, timeout=120)
  assert bad.returncode != 0 and "--mode train" in bad.stderr
