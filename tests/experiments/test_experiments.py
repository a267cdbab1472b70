"""experiments/: sweeps on tiny configs (real SST-2 through TFDS, the real trainer), resume,
report (table, CSV, figures) and the results notebook."""

import json
import os
import types

import pytest

from conftest import REPO_ROOT as REPO
from experiments import common, curves, grouping, layer_reduction, qat, report, variants

pytestmark = pytest.mark.usefixtures("tfds_dir")  # real SST-2 (conftest: skip, or fail in CI)


def flags_for(root, seeds="0", only="", **kw):
  f = dict(root=str(root), task="sst2", seeds=seeds, only=only, scale="tiny", steps=0,
           bench_batch=2, bench_seq=16, bench_iters=1, list=False, set=[])
  f.update(kw)
  return types.SimpleNamespace(**f)


def read(root, cell, seed=0):
  with open(os.path.join(root, cell, f"seed{seed}", "cell.json")) as f:
    return json.load(f)


@pytest.mark.heavy
def test_layer_reduction_sweep_resumes_and_reports(tmp_path):
  root = tmp_path / "lr"
  cells = layer_reduction.make_cells([2, 1], ["every_other"], [0, 1], "", "squeezebert-small",
                                     0.5, 2.0, str(root))
  assert [c.name for c in cells] == ["L2_full", "L1_every_other_ce", "L1_every_other_kd"]
  cells = [c for c in cells if c.name != "L1_every_other_ce"]  # the same path without KD
  common.run_sweep(cells, flags_for(root))
  full, kd = read(root, "L2_full"), read(root, "L1_every_other_kd")
  for r in (full, kd):
    for key in ("metric", "params", "flops_per_seq", "latency_ms_per_seq", "size_mb",
                "train_time_s", "seed", "layers"):
      assert r[key] is not None, key
  assert full["layers"] == 2 and kd["layers"] == 1 and kd["distill"] is True
  assert kd["params"] < full["params"] and kd["flops_per_seq"] < full["flops_per_seq"]
  with open(os.path.join(root, "L1_every_other_kd", "seed0", "train_config.json")) as f:
    tc = json.load(f)
  full_wd = os.path.join(str(root), "L2_full", "seed0")
  assert tc["init_from"] == full_wd and tc["init_layers"] == "every_other"
  assert tc["distill"]["teacher"] == full_wd
  # A finished cell is not rerun.
  path = os.path.join(root, "L2_full", "seed0", "cell.json")
  mtime = os.path.getmtime(path)
  common.run_sweep(cells, flags_for(root))
  assert os.path.getmtime(path) == mtime
  # ... but a rerun with other settings is refused before anything is written.
  sweep_json = (root / "sweep.json").read_text()
  with pytest.raises(ValueError, match=r"L2_full seed 0 finished .* with other settings: "
                                       r"learning_rate: 5e-05 -> 0.001; num_train_steps: 4 -> 6"):
    common.run_sweep(cells, flags_for(root, steps=6, set=["learning_rate=1e-3"]))
  assert os.path.getmtime(path) == mtime and (root / "sweep.json").read_text() == sweep_json
  paths = report.build(str(root))
  for key in ("md", "csv", "cells_csv", "latency", "params", "layers"):
    assert os.path.exists(paths[key]), key
  md = open(paths["md"]).read()
  assert "L1_every_other_kd" in md and "±" in md
  # A report written elsewhere carries the cell.json files: it is itself a loadable sweep.
  out = tmp_path / "published"
  report.build(str(root), str(out))
  assert report.aggregate(report.load_results(str(out))) == report.aggregate(
      report.load_results(str(root)))
  # Training curves of the cells' workdirs.
  kd_wd = os.path.join(str(root), "L1_every_other_kd", "seed0")
  pts = curves.plot({"full": full_wd, "kd": kd_wd}, ["train/loss", "eval/accuracy", "train/kd_loss"],
                    str(tmp_path / "curves"))
  logged = [json.loads(line) for line in open(os.path.join(kd_wd, "metrics.jsonl"))]
  assert any(v == pytest.approx(kd["metric"]) for _, v in pts["kd:eval/accuracy"])
  assert pts["kd:train/loss"] == [(r["step"], r["loss"]) for r in logged if r["split"] == "train"]
  assert pts["full:train/kd_loss"] == [] and pts["kd:train/kd_loss"]  # only the KD cell has it
  assert os.path.exists(tmp_path / "curves" / "curves.png")
  with pytest.raises(ValueError, match="train/NAME"):
    curves.plot({"kd": kd_wd}, ["loss"], str(tmp_path / "c2"))


def test_qat_sweep_has_ptq_qat_and_int8_cells(tmp_path):
  root = tmp_path / "qat"
  cells = qat.make_cells([8], ["all"], "squeezebert-small", static=False)
  assert [c.name for c in cells] == ["fp32", "ptq_w8a8", "qat_w8a8", "qat_w8a8_int8"]
  with pytest.raises(FileNotFoundError, match="has not finished"):
    common.run_sweep(cells, flags_for(root, only="ptq_w8a8"))
  # A trained cell and a post-training cell quantizing it (QAT training and its int8
  # conversion: tests/quant/test_quant.py::test_qat_training_then_int8_cli).
  common.run_sweep(cells, flags_for(root, only="fp32,ptq_w8a8"))
  fp32, ptq = read(root, "fp32"), read(root, "ptq_w8a8")
  assert fp32["quant"] is None and ptq["quant"] == "w8a8" and ptq["bench"]["quant"] == "w8a8"
  assert ptq["size_mb"] < 0.5 * fp32["size_mb"]
  assert ptq["params"] == fp32["params"]
  agg = report.aggregate(report.load_results(str(root)))
  assert {a["method"] for a in agg} == {"fp32", "ptq"}
  assert os.path.exists(report.build(str(root))["qat"])


def test_variants_and_grouping_cells():
  from squeezebert.model import ModelConfig, get_config
  from squeezebert.model.config import PRESETS
  preset = ModelConfig(**PRESETS["squeezebert-small"]).to_dict()
  cells = variants.make_cells(preset, "squeezebert-small", 7, "", "/r")
  names = [c.name for c in cells]
  assert names == ["bert_like", "squeezebert", "distilbert_like", "albert_like",
                   "squeeze_expand", "hybrid"]
  by = {c.name: c for c in cells}
  assert by["hybrid"].overrides["model.conv_layers"] == "0,1"
  assert by["distilbert_like"].late_overrides(1) == {
      "init_from": "/r/bert_like/seed1", "distill.teacher": "/r/bert_like/seed1"}
  # Every cell's overrides make a valid model.
  for c in cells:
    kw = {k.split(".", 1)[1]: v for k, v in c.overrides.items()
          if k.startswith("model.") and k != "model.variant"}
    get_config("squeezebert-small", **kw)
  g = grouping.make_cells([1, 4], "both", 1, "squeezebert-small")
  assert [c.name for c in g] == ["qkv1_ffn1", "qkv4_ffn4", "qkv4_ffn1", "qkv1_ffn4"]


@pytest.mark.slow  # the late-overrides / init_layers / teacher path: layer_reduction's sweep
def test_variant_sweep_distilbert_like(tmp_path):
  root = tmp_path / "var"
  preset = {"num_hidden_layers": 2, "hidden_size": 32}
  cells = variants.make_cells(preset, "tiny", 3, "", str(root))
  common.run_sweep(cells, flags_for(root, only="bert_like,distilbert_like,albert_like"))
  bert, distil, albert = (read(root, c) for c in ("bert_like", "distilbert_like", "albert_like"))
  assert distil["layers"] == 1 and bert["layers"] == 2
  assert albert["params"] < bert["params"]


def test_sweep_errors(tmp_path):
  cells = grouping.make_cells([1], "qkv", 1, "squeezebert-small")
  with pytest.raises(ValueError, match="unknown cells"):
    common.run_sweep(cells, flags_for(tmp_path, only="nope"))
  with pytest.raises(KeyError, match="model.nope"):
    common.run_sweep(cells, flags_for(tmp_path, set=["model.nope=1"]))
  with pytest.raises(ValueError, match="seeds"):
    common.run_sweep(cells, flags_for(tmp_path, seeds="a"))
  with pytest.raises(FileNotFoundError, match="no finished cells"):
    report.load_results(str(tmp_path / "empty"))


def test_init_layers_needs_init_from(tmp_path):
  from squeezebert.train import trainer
  config = common.load_glue_config("task=sst2,runlocal=True")
  config.init_layers = "every_other"
  with pytest.raises(ValueError, match="init_from"):
    trainer.train_and_evaluate(config, str(tmp_path))


def test_grouping_two_seeds_report_and_notebook(tmp_path):
  root = tmp_path / "groups"
  cells = grouping.make_cells([2], "qkv", 1, "squeezebert-small")
  common.run_sweep(cells, flags_for(root, seeds="0,1"))
  agg = report.aggregate(report.load_results(str(root)))
  assert len(agg) == 1 and agg[0]["n_seeds"] == 2 and agg[0]["seeds"] == "0,1"
  assert agg[0]["qkv_groups"] == 2
  # The results notebook, executed on this sweep.
  import nbformat
  from nbclient import NotebookClient
  nb = nbformat.read(os.path.join(REPO, "notebooks", "results.ipynb"), as_version=4)
  os.environ["RESULTS_ROOT"] = str(root)
  try:
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": os.path.join(REPO, "notebooks")}}).execute()
  finally:
    del os.environ["RESULTS_ROOT"]
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))
  assert "2 runs, 1 cells" in text
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]
  assert images
