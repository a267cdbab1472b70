"""The reliability battery: what a hostile user does to a run, scaled to seconds.

Best checkpoint kept across resumes; the workdir lock; resuming with another config; a corrupt
latest checkpoint; labels and text validated on every data path; model inputs checked; the
torch .bin reader memory-safe; convert never overwrites; clean one-line errors, a full disk,
no duplicated metrics rows; checkpoint files that name themselves when broken.
"""

import errno
import io
import json
import os
import pathlib
import pickle
import shutil
import socket
import subprocess
import sys
import types
import zipfile

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from conftest import REPO, assert_metrics_close, ckpt_steps, needs_tfds, read_jsonl, runlocal
from squeezebert import convert, load
from squeezebert import workdir as workdir_lib
from squeezebert.convert import torch_zip
from squeezebert.convert.__main__ import check_destination
from squeezebert.data import conll, glue, squad
from squeezebert.model import build_model, get_config
from squeezebert.model.params import CheckpointMismatchError
from squeezebert.tasks import glue as glue_task
from squeezebert.train import trainer

pytestmark = needs_tfds


# ------------------------------------------------------------------ 1. the best checkpoint
def test_best_checkpoint_kept_across_resume_and_used_everywhere(tmp_path, monkeypatch):
  """keep_checkpoints=1, a save every step, evals at 1..4 scoring 0.6, 0.9, 0.7, 0.5, the run
  stopped after 3 steps and resumed: the best (step 2) survives, and final_metrics.json,
  mode=eval, from_pretrained(workdir) and init_from use it; 'latest' is one option away."""
  scores = iter([0.6, 0.9, 0.7, 0.5])
  real = glue_task.GlueTask.metrics
  monkeypatch.setattr(glue_task.GlueTask, "metrics",
                      lambda self, c: dict(real(self, c), accuracy=next(scores)))
  wd = str(tmp_path / "wd")
  cfg = runlocal(keep_checkpoints=1, eval_every_steps=1, checkpoint_every_steps=1,
                 stop_after_steps=3)
  trainer.train_and_evaluate(cfg, wd)
  assert ckpt_steps(wd) == [2, 3]  # the latest one + the best one
  cfg.stop_after_steps = 0
  final = trainer.train_and_evaluate(cfg, wd)
  assert ckpt_steps(wd) == [2, 4]
  assert final["step"] == 4 and final["accuracy"] == 0.5
  assert final["best_step"] == 2 and final["best_metrics"] == {"accuracy": 0.9}
  best = load.from_pretrained(wd)
  latest = load.from_pretrained(wd, step="latest")
  ck = workdir_lib.Checkpoints(wd, read_only=True)
  want = {"best": ck.restore(2, nnx.state(best))[0], "latest": ck.restore(4, nnx.state(best))[0]}
  ck.close()
  for name, model in (("best", best), ("latest", latest)):
    got = jax.tree.leaves(nnx.state(model, nnx.Param))
    np.testing.assert_array_equal(got[0], jax.tree.leaves(want[name])[0])
  cfg.mode = "eval"
  monkeypatch.setattr(glue_task.GlueTask, "metrics", real)
  assert trainer.train_and_evaluate(cfg, wd)["step"] == 2
  cfg.eval_checkpoint = "latest"
  assert trainer.train_and_evaluate(cfg, wd)["step"] == 4


# ------------------------------------------------------------------ 2. the workdir lock
def test_workdir_lock_refuses_a_second_run_and_takes_over_a_dead_one(tmp_path, caplog):
  wd = tmp_path / "wd"
  wd.mkdir()
  with workdir_lib.WorkdirLock(str(wd)):  # a live holder (this process)
    with pytest.raises(RuntimeError, match=rf"in use by pid {os.getpid()} on host "
                                           rf"{socket.gethostname()}"):
      trainer.train_and_evaluate(runlocal(num_train_steps=2), str(wd))
  assert not (wd / workdir_lib.LOCK_FILE).exists()  # released
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  (wd / workdir_lib.LOCK_FILE).write_text(json.dumps(
      dict(pid=dead.pid, host=socket.gethostname(), started=0, command="killed")))
  caplog.set_level("WARNING")
  trainer.train_and_evaluate(runlocal(num_train_steps=2), str(wd))
  assert "no longer running: taking it over" in caplog.text
  assert not (wd / workdir_lib.LOCK_FILE).exists()


def test_resume_with_another_config_is_refused_unless_allowed(tmp_path):
  wd = str(tmp_path / "wd")
  trainer.train_and_evaluate(runlocal(stop_after_steps=2), wd)
  before = read_jsonl(pathlib.Path(wd) / "metrics.jsonl")
  with pytest.raises(ValueError, match=r"seed: 0 -> 1.*learning_rate") as e:
    trainer.train_and_evaluate(runlocal(seed=1, learning_rate=1e-3), wd)
  assert "allow_config_change" in str(e.value)
  assert read_jsonl(pathlib.Path(wd) / "metrics.jsonl") == before  # nothing written
  result = trainer.train_and_evaluate(runlocal(seed=1, allow_config_change=True), wd)
  assert result["step"] == 4


# ------------------------------------------------------------------ 3. a corrupt checkpoint
def _array_files(step_dir):
  return sorted(p for p in (step_dir / "model").rglob("*")
                if p.is_file() and p.parent.name == "d" and p.stat().st_size > 0)


def _truncate(step_dir):
  f = _array_files(step_dir)[0]
  f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _delete_array(step_dir):
  for f in _array_files(step_dir):
    f.unlink()


def _bit_flip(step_dir):
  f = _array_files(step_dir)[0]
  b = bytearray(f.read_bytes())
  for i in range(len(b) // 3, len(b) // 3 + 64):
    b[i] ^= 0xFF
  f.write_bytes(bytes(b))


def _delete_tree_metadata(step_dir):
  (step_dir / "model" / "_METADATA").unlink()


def _empty_dir(step_dir):
  for p in sorted(step_dir.rglob("*"), reverse=True):
    p.rmdir() if p.is_dir() else p.unlink()


@pytest.mark.parametrize("corrupt", [_truncate, _delete_array, _bit_flip, _delete_tree_metadata,
                                     _empty_dir],
                         ids=lambda f: f.__name__.strip("_"))
def test_corrupt_latest_checkpoint_is_moved_aside_and_the_run_resumes(sst2_run, tmp_path,
                                                                      caplog, corrupt):
  """Checkpoints at 2 and 4; step 4 broken; the rerun moves it aside (never deleted),
  resumes from 2, and finishes exactly as the uninterrupted run did."""
  cfg, ref_wd, ref = sst2_run
  wd = tmp_path / "wd"
  shutil.copytree(ref_wd, wd)  # that run, killed after its last checkpoint
  assert ckpt_steps(wd) == [2, 4]
  (wd / trainer.FINAL_FILE).unlink()
  corrupt(wd / "checkpoints" / "4")
  caplog.set_level("WARNING")
  final = trainer.train_and_evaluate(runlocal(), str(wd))
  aside = [p.name for p in (wd / "checkpoints").iterdir() if p.name.startswith("corrupt-4-")]
  assert "moved aside to" in caplog.text and len(aside) == 1
  assert ckpt_steps(wd) == [2, 4]
  ref_metrics = {k: v for k, v in ref.items() if k not in ("best_step", "best_metrics")}
  assert_metrics_close({k: final[k] for k in ref_metrics}, ref_metrics)
  rows = [r for r in read_jsonl(wd / "metrics.jsonl") if r["split"] == "train"]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]  # steps 3-4 redone, logged once


# ------------------------------------------------------------------ 4. labels and text
def _sst2_tsv(root, header="sentence\tlabel", rows=("a good movie\t1", "dull\t0"),
              raw: bytes | None = None):
  d = root / "SST-2"
  d.mkdir(parents=True, exist_ok=True)
  data = raw if raw is not None else (header + "\n" + "\n".join(rows) + "\n").encode()
  (d / "train.tsv").write_bytes(data)
  return str(root)


@pytest.mark.parametrize("kw,match", [
    (dict(header="sentence\tlabl"), r"train.tsv: header has no column \['label'\]"),
    (dict(rows=("good\t1", "bad\t-1")), r"train.tsv:3: label '-1' is not one of"),
    (dict(rows=("good\t1", "bad\t2")), r"train.tsv:3: label '2' is not one of"),
    (dict(rows=("good\tpos",)), r"train.tsv:2: label 'pos' is not one of"),
    (dict(rows=("good\t1", "bad")), r"train.tsv:3: no 'label' value"),
    (dict(raw=b"sentence\tlabel\ngood\t1\nbad \xff\xfe\t0\n"), r"train.tsv:3: not valid UTF-8"),
])
def test_tsv_labels_and_text_are_validated(tmp_path, kw, match):
  tsv = _sst2_tsv(tmp_path, **kw)
  with pytest.raises(ValueError, match=match):
    glue.load_examples("sst2", "train", source="tsv", tsv_dir=tsv)


def test_bad_data_fails_before_the_workdir_is_made(tmp_path):
  tsv = _sst2_tsv(tmp_path, rows=("good\t1", "bad\t2") * 40)
  wd = tmp_path / "wd"
  with pytest.raises(ValueError, match="label '2'"):
    trainer.train_and_evaluate(runlocal(data__source="tsv", data__tsv_dir=tsv), str(wd))
  assert not wd.exists()


def test_ner_tags_and_squad_answers_are_validated(tmp_path):
  f = tmp_path / "valid.txt"
  f.write_text("EU NNP B-NP B-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP B-MISCC\n")
  with pytest.raises(ValueError, match=r"valid.txt:3: unknown NER tag 'B-MISCC'"):
    conll.read_conll_file(str(f))
  f.write_bytes(b"EU NNP B-NP B-ORG\nbad\xff x O\n")
  with pytest.raises(ValueError, match=r"valid.txt:2: not valid UTF-8"):
    conll.read_conll_file(str(f))
  obj = {"data": [{"title": "t", "paragraphs": [{"context": "The cat sat.", "qas": [
      {"id": "q1", "question": "Who?", "answers": [{"text": "cat", "answer_start": 5}]}]}]}]}
  (tmp_path / "dev-v1.1.json").write_text(json.dumps(obj))
  with pytest.raises(ValueError, match=r"dev-v1.1.json: question q1: answer 'cat' is not in"):
    squad.load_examples("validation", source="file", squad_dir=str(tmp_path))
  (tmp_path / "dev-v1.1.json").write_text('{"data": [')
  with pytest.raises(ValueError, match=r"dev-v1.1.json: not a valid UTF-8 JSON file"):
    squad.load_examples("validation", source="file", squad_dir=str(tmp_path))


# ------------------------------------------------------------------ 5. model inputs
def test_model_inputs_are_checked():
  model = build_model(get_config("tiny"), "classification")
  ids = np.array([[1, 2, 3]])
  with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 128\); got values from 1 "
                                       r"to 128"):
    model(np.array([[1, 2, 128]]))
  with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 128\); got values from -1"):
    model(np.array([[1, -1, 3]]))
  with pytest.raises(ValueError, match=r"token_type_ids must lie in \[0, 2\)"):
    model(ids, token_type_ids=np.array([[0, 2, 0]]))
  with pytest.raises(ValueError, match="must have the same shape"):
    model(ids, attention_mask=np.ones((1, 4), np.int32))
  with pytest.raises(ValueError, match="must have the same shape"):  # under jit too
    jax.jit(lambda i, m: model(i, m).logits)(ids, np.ones((2, 3), np.int32))
  assert np.isfinite(np.asarray(model(ids).logits)).all()


# ------------------------------------------------------------------ 6. the .bin reader
def _crafted_bin(path, numel, offset, size, stride):
  """A zip-format torch checkpoint with one tensor view, pickled without torch."""
  rebuild = lambda *a: None  # noqa: E731
  rebuild.__module__, rebuild.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
  float_storage = type("FloatStorage", (), {"__module__": "torch"})
  fake_torch, fake_utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
  fake_torch.FloatStorage, fake_utils._rebuild_tensor_v2 = float_storage, rebuild
  storage = object()

  class Tensor:
    def __reduce__(self):
      return rebuild, (storage, offset, size, stride, False, {})

  class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
      return ("storage", float_storage, "0", "cpu", numel) if obj is storage else None

  saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
  sys.modules.update({"torch": fake_torch, "torch._utils": fake_utils})
  try:
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({"w": Tensor()})
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", buf.getvalue())
    z.writestr("archive/data/0", np.arange(numel, dtype=np.float32).tobytes())
  return str(path)


def test_torch_bin_reader_validates_every_view(tmp_path):
  ok = torch_zip.load_torch_bin(_crafted_bin(tmp_path / "ok.bin", 12, 2, (2, 3), (3, 1)))
  np.testing.assert_array_equal(ok["w"], np.arange(2, 8, dtype=np.float32).reshape(2, 3))
  for name, args in {"huge_stride": (4, 0, (2, 2), (1 << 40, 1)),
                     "past_the_end": (4, 0, (128, 32), (32, 1)),
                     "offset": (4, 9, (1,), (1,)),
                     "negative": (4, 0, (2,), (-1,))}.items():
    with pytest.raises(pickle.UnpicklingError, match=r"\.bin: .*(reaches element|offset|"
                                                     r"negative)"):
      torch_zip.load_torch_bin(_crafted_bin(tmp_path / f"{name}.bin", *args))


# ------------------------------------------------------------------ 7. convert
def test_convert_never_overwrites(tmp_path):
  src = tmp_path / "src"
  convert.save_pretrained(build_model(get_config("tiny"), "base"), str(src))
  from absl import app
  for dst in (src, src / "inside"):
    with pytest.raises(app.UsageError, match="is the source directory or inside it"):
      check_destination(str(src), str(dst), overwrite=True)
  other = tmp_path / "other"
  other.mkdir()
  (other / "config.json").write_text("{}")
  with pytest.raises(app.UsageError, match="not empty: pass --overwrite"):
    check_destination(str(src), str(other), overwrite=False)
  check_destination(str(src), str(other), overwrite=True)
  assert not (other / "config.json").exists()  # no stale config beside new weights


# ------------------------------------------------------------------ 8. clean failures
@pytest.mark.heavy
def test_user_error_is_one_line_without_traceback(tmp_path):
  cmd = [sys.executable, "-m", "squeezebert.main",
         f"--config={REPO / 'configs' / 'glue.py'}:task=sst2,runlocal=True",
         f"--workdir={tmp_path / 'wd'}", "--config.data.max_len=100"]
  p = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
  assert p.returncode == 1
  assert "error: config.data.max_len=100 exceeds the model's max_position_embeddings=64" \
      in p.stderr
  assert "Traceback" not in p.stderr and not (tmp_path / "wd").exists()
  # --verbose: the traceback (a small entry point: the same cli.run wrapper).
  script = ("import sys; from squeezebert import cli\n"
            "def main(argv): raise ValueError('bad value')\ncli.run(main)")
  for extra, traceback in (([], False), (["--verbose"], True)):
    p = subprocess.run([sys.executable, "-c", script, *extra], capture_output=True, text=True,
                       timeout=180)
    assert p.returncode == 1 and "error: bad value" in p.stderr or traceback
    assert ("Traceback" in p.stderr) == traceback


@pytest.mark.heavy
def test_full_disk_removes_the_partial_checkpoint_and_the_rerun_resumes(sst2_run, tmp_path,
                                                                        monkeypatch):
  _, _, ref = sst2_run
  real_save = ocp.CheckpointManager.save

  def disk_full_at_4(self, step, *a, **k):
    if step == 4:
      os.makedirs(os.path.join(self.directory, "4.orbax-checkpoint-tmp-123"), exist_ok=True)
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_save(self, step, *a, **k)

  wd = tmp_path / "wd"
  monkeypatch.setattr(ocp.CheckpointManager, "save", disk_full_at_4)
  with pytest.raises(workdir_lib.CheckpointError, match=r"no space left on the device while "
                                                        r"saving checkpoint 4.*resume from step 2"):
    trainer.train_and_evaluate(runlocal(), str(wd))
  assert sorted(p.name for p in (wd / "checkpoints").iterdir()) == ["2"]
  monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
  final = trainer.train_and_evaluate(runlocal(), str(wd))
  assert final["accuracy"] == pytest.approx(ref["accuracy"])
  assert ckpt_steps(wd) == [2, 4]


def test_runlocal_keeps_an_explicit_variant():
  from conftest import config
  assert config("glue", "task=sst2,runlocal=True,variant=squeezebert-small").model.variant \
      == "squeezebert-small"
  assert config("glue", "task=sst2,runlocal=True").model.variant == "tiny"
  assert config("glue", "task=sst2,variant=tiny").model.vocab_size == 30522  # runs as is


def test_broken_checkpoint_files_name_themselves(tmp_path):
  model = build_model(get_config("tiny"), "classification")
  ours = convert.save_pretrained(model, str(tmp_path / "ours"))
  (pathlib.Path(ours) / convert.OURS_CONFIG).write_text("{not json")
  with pytest.raises(CheckpointMismatchError, match=r"squeezebert_jax.json is not valid JSON"):
    load.from_pretrained(ours)
  hf_dir = convert.export_hf(model, str(tmp_path / "hf"))
  (pathlib.Path(hf_dir) / "config.json").write_text("[")
  with pytest.raises(CheckpointMismatchError, match=r"hf/config.json is not valid JSON"):
    load.from_pretrained(hf_dir)
  ours = convert.save_pretrained(model, str(tmp_path / "ours2"))
  st = pathlib.Path(ours) / "model.safetensors"
  st.write_bytes(st.read_bytes()[:1000])
  with pytest.raises(CheckpointMismatchError, match=r"ours2/model.safetensors is not a "
                                                    r"readable safetensors file"):
    load.from_pretrained(ours)
  state = nnx.state(model, nnx.Param)
  state["classifier"]["kernel"][...] = state["classifier"]["kernel"][...] * np.nan
  nnx.update(model, state)
  nan_dir = convert.save_pretrained(model, str(tmp_path / "nan"))
  with pytest.raises(CheckpointMismatchError, match=r"non-finite \(NaN/inf\) values in 1 "
                                                    r"weight\(s\): \['classifier/kernel'\]"):
    load.from_pretrained(nan_dir)
