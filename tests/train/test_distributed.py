"""Scale-out: FSDP and the one-all-reduce accumulation on 8 fake devices, and a real two-process
run (JAX's multi-controller runtime, gloo CPU collectives on localhost) against one process
with the same global device count, killed and resumed."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import (REPO, assert_metrics_close, ckpt_steps, needs_tfds, read_jsonl, runlocal,
                      xla_flags)
from squeezebert import workdir as workdir_lib
from squeezebert.data import batching
from squeezebert.train import distributed, mesh as mesh_lib, trainer


@pytest.mark.heavy
def test_fsdp_matches_data_parallel_and_accumulation_reduces_once():
  r = subprocess.run([sys.executable, str(REPO / "tests" / "train" / "mesh_check.py")],
                     cwd=REPO, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-4000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  f = out["fsdp"]
  np.testing.assert_allclose(f["losses_fsdp"], f["losses_dp"], rtol=1e-6)
  assert f["max_param_diff"] < 1e-6
  assert f["losses_dp"][0] != f["losses_dp"][-1]  # the steps did something
  # FSDP really split the table: each device holds a quarter of it.
  assert "fsdp" in f["embedding_fsdp"]["spec"] and f["embedding_dp"]["spec"] == "P()"
  assert np.prod(f["embedding_fsdp"]["shard"]) * 4 == np.prod(f["embedding_fsdp"]["shape"])
  counts = out["allreduce"]
  assert counts["4"]["in_loop"] == 0, counts  # no reduction inside the micro-batch scan
  assert 1 <= counts["4"]["total"] <= counts["1"]["total"], counts
  assert counts["4_plain"]["in_loop"] > 0, counts  # the count does see in-loop reductions


def test_mesh_shape_and_fsdp_rule():
  assert mesh_lib.mesh_shape(8, -1, 4) == (2, 4)
  assert mesh_lib.mesh_shape(8, 2, -1) == (2, 4)
  with pytest.raises(ValueError, match="does not cover"):
    mesh_lib.mesh_shape(8, 3, 1)
  with pytest.raises(ValueError, match="each must be >= 1"):
    mesh_lib.mesh_shape(8, -1, -1)
  assert mesh_lib.fsdp_spec((30522, 768), 4) == mesh_lib.P(None, "fsdp")  # 30522 % 4 != 0
  assert mesh_lib.fsdp_spec((768,), 4) == mesh_lib.P()  # small arrays stay whole
  assert mesh_lib.fsdp_spec((768, 3072), 1) == mesh_lib.P()


def test_owned_shards_and_shard_ranges():
  assert batching.owned_shards(4, 1, 2) == [2, 3]
  ranges = [batching.shard_range(10, i, 3) for i in range(3)]
  assert ranges[0][0] == 0 and ranges[-1][1] == 10
  assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
  with pytest.raises(ValueError):
    batching.owned_shards(3, 0, 2)


def test_one_shard_is_the_single_process_order():
  """data.shards=1 reads exactly the batches single-process runs always read."""
  rng = np.random.default_rng(0)
  n, L = 40, 16
  lengths = rng.integers(3, L, n).astype(np.int32)
  enc = batching.EncodedSplit(
      input_ids=rng.integers(5, 100, (n, L)).astype(np.int32),
      token_type_ids=np.zeros((n, L), np.int32), lengths=lengths,
      labels=rng.integers(0, 2, n).astype(np.int32), idx=np.arange(n, dtype=np.int32),
      num_truncated=0)
  shards = batching.Shards(encs=[enc], ids=[0], count=1, sizes=[n])
  old = list(batching.batches(enc, 8, shuffle=True, seed=3, epoch=1, start_batch=1,
                              bucket_boundaries=(8, 16), drop_remainder=True))
  new = list(batching.train_batches(shards, 8, seed=3, epoch=1, start_batch=1,
                                    bucket_boundaries=(8, 16)))
  assert len(old) == len(new) == 4
  for a, b in zip(old, new):
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  # Two shards held by one process: each batch is 4 rows of shard 0 then 4 of shard 1.
  halves = [batching.EncodedSplit(**{f: getattr(enc, f)[s] for f in
                                     ("input_ids", "token_type_ids", "lengths", "labels", "idx")},
                                  num_truncated=0) for s in (slice(0, 20), slice(20, 40))]
  two = batching.Shards(encs=halves, ids=[0, 1], count=2, sizes=[20, 20])
  batches = list(batching.train_batches(two, 8, seed=3, epoch=0, start_batch=0,
                                        bucket_boundaries=(8, 16)))
  assert len(batches) == 5
  seen = np.concatenate([b["idx"] for b in batches])
  assert sorted(seen) == list(range(40))  # every example once per epoch
  assert all((b["idx"][:4] < 20).all() and (b["idx"][4:] >= 20).all() for b in batches)


def test_distributed_initialize_modes(monkeypatch):
  for var in (distributed.ENV_ADDRESS, distributed.ENV_COUNT, distributed.ENV_ID):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setattr(distributed, "detected_cluster", lambda: None)
  assert distributed.initialize("auto") is False  # nothing asks for it: one process
  assert distributed.initialize(False) is False
  with pytest.raises(ValueError, match="config.distributed"):
    distributed.initialize("sometimes")


def test_remote_workdir_paths_pass_through(monkeypatch, tmp_path):
  """gs:// workdirs: never made local or absolute, and handed to orbax as they are."""
  url = "gs://bucket/runs/sst2"
  assert workdir_lib.abs_path(url) == url
  assert workdir_lib.ckpt_dir(url) == url + "/checkpoints"
  assert workdir_lib.abs_path("rel") == str(tmp_path.cwd() / "rel")
  seen = {}

  class FakeManager:
    def __init__(self, directory, options=None, item_names=None):
      seen["dir"], seen["async"] = directory, options.enable_async_checkpointing

  monkeypatch.setattr(workdir_lib.ocp, "CheckpointManager", FakeManager)
  workdir_lib.Checkpoints(url, async_save=True)
  assert seen == {"dir": url + "/checkpoints", "async": True}
  # Run files go through epath (no os.replace or O_EXCL on object stores).
  written = {}

  class FakePath:
    def __init__(self, p):
      self.p = str(p)

    def write_text(self, text):
      written[self.p] = text

  monkeypatch.setattr(workdir_lib.epath, "Path", FakePath)
  workdir_lib.write_json(url + "/run.json", {"task": "sst2"})
  assert json.loads(written[url + "/run.json"]) == {"task": "sst2"}
  with workdir_lib.WorkdirLock(url) as lock:  # no lock file on an object store
    assert not lock.held


# ---------------------------------------------------------------------------------------------
# two real processes


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _cmd(workdir, *extra):
  return [sys.executable, "-m", "squeezebert.main",
          f"--config={REPO / 'configs' / 'glue.py'}:task=sst2,runlocal=True",
          "--config.num_train_steps=6", "--config.eval_every_steps=6",
          "--config.checkpoint_every_steps=2", "--config.data.shards=2",
          f"--workdir={workdir}", *extra]


def _env(devices: int, process: int | None = None, port: int | None = None) -> dict:
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  env.pop("GLUE_DIR", None)  # TFDS: every process reads its own slice of the records
  env["XLA_FLAGS"] = xla_flags(devices)
  for var in (distributed.ENV_ADDRESS, distributed.ENV_COUNT, distributed.ENV_ID):
    env.pop(var, None)
  if process is not None:
    env.update({distributed.ENV_ADDRESS: f"127.0.0.1:{port}", distributed.ENV_COUNT: "2",
                distributed.ENV_ID: str(process)})
  return env


def _start_pair(workdir, logs, *extra):
  port = _free_port()
  procs = []
  for i in range(2):
    out = open(logs / f"p{i}-{time.time_ns()}.log", "w")
    procs.append((subprocess.Popen(_cmd(workdir, *extra), cwd=REPO, env=_env(1, i, port),
                                   stdout=out, stderr=subprocess.STDOUT), out))
  return procs


def _finish(procs, timeout=400):
  deadline = time.time() + timeout
  try:
    for p, out in procs:
      p.wait(timeout=max(1, deadline - time.time()))
  finally:
    for p, out in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
      out.close()
  return [p.returncode for p, _ in procs]


def _log(logs) -> str:
  return "\n".join(f"== {f.name}\n{f.read_text()[-3000:]}" for f in sorted(logs.iterdir()))


def _train_losses(workdir) -> dict:
  return {r["step"]: r["loss"] for r in read_jsonl(workdir / "metrics.jsonl")
          if r["split"] == "train"}


@pytest.mark.heavy
@needs_tfds
def test_two_processes_match_one_and_resume_after_a_kill(tmp_path):
  logs = tmp_path / "logs"
  logs.mkdir()
  # One process (this one), two devices, the same two data shards and settings as _cmd.
  one = tmp_path / "one"
  ref = trainer.train_and_evaluate(
      runlocal(num_train_steps=6, eval_every_steps=6, checkpoint_every_steps=2,
               data__shards=2), str(one))
  assert json.loads((one / "final_metrics.json").read_text()) == ref

  # Two processes, one device each; killed once a checkpoint exists.
  two = tmp_path / "two"
  procs = _start_pair(two, logs, "--config.step_delay_secs=0.5")
  try:
    deadline = time.time() + 400
    while not any(s >= 2 for s in ckpt_steps(two)):
      assert all(p.poll() is None for p, _ in procs), _log(logs)
      assert time.time() < deadline, "no checkpoint in time:\n" + _log(logs)
      time.sleep(0.1)
    procs[1][0].send_signal(signal.SIGKILL)  # one host dies ...
    time.sleep(1)
    procs[0][0].send_signal(signal.SIGKILL)  # ... the scheduler takes the job down
  finally:
    _finish(procs, timeout=30)
  assert not (two / "final_metrics.json").exists(), "killed too late"
  text = _log(logs)
  assert "2 process(es)" in text and "this process reads [1]" in text
  resumed_at = max(ckpt_steps(two))
  assert resumed_at < 6

  # Both restarted with the same command: the run resumes and finishes.
  codes = _finish(_start_pair(two, logs))
  assert codes == [0, 0], _log(logs)
  assert "resumed from" in _log(logs)
  final = json.loads((two / "final_metrics.json").read_text())
  assert_metrics_close(final, ref, tol=1e-5)
  # Every logged training step (before and after the kill) equals the one-process run.
  got, want = _train_losses(two), _train_losses(one)
  assert sorted(got) == sorted(want) == list(range(1, 7))
  for s in want:
    assert got[s] == pytest.approx(want[s], rel=1e-5, abs=1e-6), s
  # Only process 0 wrote the run files; nothing was left half-written.
  assert not list(two.glob("*.tmp*")) and not (two / "lock.json").exists()


# ---------------------------------------------------------------------------------------------
# preemption


def test_sigterm_sets_the_preemption_flag():
  previous = signal.getsignal(signal.SIGTERM)
  p = distributed.Preemption()
  try:
    assert not p.reached(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert p.reached(2)
  finally:
    p.close()
  assert signal.getsignal(signal.SIGTERM) is previous


@needs_tfds
def test_preempted_run_saves_and_stops(tmp_path, monkeypatch):
  """(Resuming from whatever checkpoint a run stopped at is tested in test_trainer.py.)"""
  monkeypatch.setattr(distributed.Preemption, "reached", lambda self, step: step == 3)
  result = trainer.train_and_evaluate(runlocal(), str(tmp_path))
  assert result["preempted"] and result["step"] == 3
  assert ckpt_steps(tmp_path) == [2, 3]  # saved although 3 is no checkpoint step (every 2)
  assert not (tmp_path / "final_metrics.json").exists()
  assert not (tmp_path / "lock.json").exists()
