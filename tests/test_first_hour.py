"""A new user's first hour: data that is found (or downloaded, or named clearly), a failed
run that leaves its workdir usable, exports that carry their tokenizer and labels (read back
by transformers' AutoTokenizer and pipeline), eval/predict from a run's own config, ad-hoc
predictions, and a console that says what happens."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, needs_tfds, runlocal
from squeezebert import assets as assets_lib
from squeezebert import convert, load, predict
from squeezebert.data import glue, tfds_util
from squeezebert.train import setup as setup_lib
from squeezebert.train import trainer

pytestmark = needs_tfds


# ------------------------------------------------------------------ data sources
def test_auto_source_prefers_prepared_then_tsv_then_download(tmp_path, monkeypatch, tfds_dir,
                                                             glue_dir):
  sst2 = glue.get_task("sst2")
  assert glue.resolve_source(sst2, str(tfds_dir), "auto", str(glue_dir)) == "tfds"
  empty = str(tmp_path / "empty")
  assert glue.resolve_source(sst2, empty, "auto", str(glue_dir)) == "tsv"
  calls = []
  monkeypatch.setattr(tfds_util, "download_and_prepare",
                      lambda name, d, tried, to_set: calls.append((name, d)))
  monkeypatch.delenv("GLUE_DIR", raising=False)
  assert glue.resolve_source(sst2, empty, "auto", None) == "tfds"
  assert calls == [("glue/sst2", empty)]  # TFDS downloads and prepares it there
  with pytest.raises(tfds_util.DataNotFoundError, match="config.data.download is off"):
    glue.resolve_source(sst2, empty, "auto", None, download=False)


def test_offline_missing_data_is_one_line_before_model_and_workdir(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no_tfds"))
  monkeypatch.delenv("GLUE_DIR", raising=False)

  def offline(name, data_dir, tried, to_set):
    raise tfds_util.DataNotFoundError(f"no data for {name}: {tried}, and the TFDS download "
                                      f"failed (ConnectionError: offline). {to_set}")

  monkeypatch.setattr(tfds_util, "download_and_prepare", offline)
  monkeypatch.setattr(setup_lib, "setup_run", lambda *a, **k: pytest.fail("model was built"))
  wd = tmp_path / "wd"
  with pytest.raises(FileNotFoundError) as e:
    trainer.train_and_evaluate(runlocal(data__tfds_data_dir=""), str(wd))
  msg = str(e.value)
  assert "\n" not in msg and "glue/sst2" in msg and "ConnectionError" in msg
  for must in ("--config.data.tfds_data_dir", "$TFDS_DATA_DIR", "--config.data.tsv_dir",
               "$GLUE_DIR", "tfds build glue/sst2"):
    assert must in msg, must
  assert not wd.exists()


@pytest.mark.heavy
def test_a_run_that_fails_before_its_first_checkpoint_leaves_the_workdir_reusable(tmp_path):
  wd = str(tmp_path / "wd")
  with pytest.raises(FloatingPointError):  # diverges at step 1, before any checkpoint
    trainer.train_and_evaluate(runlocal(learning_rate=1e9, grad_clip_norm=0.0), wd)
  assert not os.path.exists(os.path.join(wd, "lock.json"))
  other = runlocal(model__num_hidden_layers=1, num_train_steps=2)  # another model: welcome
  assert trainer.train_and_evaluate(other, wd)["step"] == 2


# ------------------------------------------------------------------ exports and pipelines
@pytest.fixture(scope="module")
def rte_run(tmp_path_factory):
  """A runlocal RTE run (pairs; labels entailment / not_entailment)."""
  wd = tmp_path_factory.mktemp("rte") / "run"
  trainer.train_and_evaluate(runlocal("rte", num_train_steps=2, eval_every_steps=2), str(wd))
  return wd


def test_hf_export_carries_tokenizer_and_labels_for_transformers(rte_run, tmp_path):
  transformers = pytest.importorskip("transformers")
  out = tmp_path / "hf"
  r = subprocess.run([sys.executable, "-m", "squeezebert.convert", f"--from={rte_run}",
                      f"--to={out}"], capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  cfg = json.loads((out / "config.json").read_text())
  assert cfg["id2label"] == {"0": "entailment", "1": "not_entailment"}
  assert cfg["label2id"] == {"entailment": 0, "not_entailment": 1}
  assert cfg["problem_type"] == "single_label_classification"
  tok = transformers.AutoTokenizer.from_pretrained(str(out))
  assert tok.vocab_size == 30522 and tok.model_max_length == 64 and tok.do_lower_case
  # The dev pairs as the run's eval read them: transformers' pipeline predicts exactly as ours.
  config = json.loads((rte_run / "train_config.json").read_text())
  ex = glue.load_examples("rte", "validation", data_dir=config["data"]["tfds_data_dir"] or None)
  pairs = list(zip(ex["text_a"][:32], ex["text_b"][:32]))
  ours = predict.pipeline(str(rte_run))(pairs)
  hf = transformers.pipeline("text-classification", model=str(out), tokenizer=str(out),
                             device="cpu")
  theirs = hf([{"text": a, "text_pair": b} for a, b in pairs], truncation=True)
  for o, t in zip(ours, theirs):
    assert o["label"] == t["label"]
    assert o["score"] == pytest.approx(t["score"], abs=1e-4)
  # Our own formats carry them too.
  ours_dir = convert.save_pretrained(load.from_pretrained(str(rte_run)), str(tmp_path / "ours"),
                                     extra=dict(labels=["entailment", "not_entailment"]),
                                     files=assets_lib.of(str(rte_run)).files())
  a = assets_lib.of(ours_dir)
  assert a.labels == ("entailment", "not_entailment") and a.max_len == 64
  assert predict.pipeline(ours_dir)(pairs[:4]) == ours[:4]


def test_pipeline_api_and_predict_cli(rte_run, tmp_path, caplog):
  caplog.set_level("WARNING")
  clf = predict.pipeline(str(rte_run))
  assert "read only" not in caplog.text and "read_only" not in caplog.text  # orbax's notes
  out = clf([("A man sleeps.", "A person rests."), ("It rains.", "The sun is out.")])
  assert [set(o) for o in out] == [{"label", "score", "scores"}] * 2
  assert all(o["label"] in ("entailment", "not_entailment") for o in out)
  assert all(abs(sum(o["scores"].values()) - 1) < 1e-5 for o in out)
  with pytest.raises(ValueError, match="mix of sentences and pairs"):
    clf(["one", ("a", "b")])
  (tmp_path / "in.jsonl").write_text(json.dumps({"text": "A man sleeps.",
                                                 "text_pair": "A person rests."}) + "\n")
  r = subprocess.run([sys.executable, "-m", "squeezebert.predict", f"--model={rte_run}",
                      f"--input={tmp_path / 'in.jsonl'}"], capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  row = json.loads(r.stdout.strip().splitlines()[-1])
  assert row["label"] == out[0]["label"] and row["score"] == pytest.approx(out[0]["score"],
                                                                           abs=1e-5)


# ------------------------------------------------------------------ the main CLI
@pytest.mark.heavy
def test_main_console_and_eval_predict_from_the_saved_config(tmp_path):
  wd = tmp_path / "wd"
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  train = subprocess.run(
      [sys.executable, "-m", "squeezebert.main", f"--workdir={wd}",
       f"--config={REPO / 'configs' / 'glue.py'}:task=sst2,runlocal=True",
       "--config.num_train_steps=2"],
      capture_output=True, text=True, timeout=400, env=env)
  assert train.returncode == 0, train.stderr[-3000:]
  # A start banner and an end summary; orbax's per-save INFO lines are filtered out.
  assert "train sst2: classification head, 2 label(s)" in train.stderr
  assert "devices: 2 x cpu" in train.stderr and f"workdir: {wd}" in train.stderr
  assert "best checkpoint: step" in train.stdout and f"files in {wd}" in train.stdout
  assert "checkpoint_manager.py" not in train.stderr and "Saving checkpoint" not in train.stderr
  # eval / predict on the workdir alone: its saved config.
  pred = subprocess.run([sys.executable, "-m", "squeezebert.main", f"--workdir={wd}",
                         "--mode=predict"], capture_output=True, text=True, timeout=400, env=env)
  assert pred.returncode == 0, pred.stderr[-3000:]
  assert (wd / "predictions" / "SST-2.tsv").exists() and "test_file:" in pred.stdout
  # The training config again with another model: a short message naming the fields.
  from conftest import config as load_cfg
  bad = load_cfg("glue", "task=sst2,runlocal=True", mode="eval", model__num_hidden_layers=1)
  with pytest.raises(ValueError) as e:
    trainer.train_and_evaluate(bad, str(wd))
  assert "model.num_hidden_layers: None -> 1" in str(e.value) and len(str(e.value)) < 400
