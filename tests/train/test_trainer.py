"""The trainer: end-to-end GLUE runs, kill/resume, data parallelism, gradient accumulation,
weight-decay masking, fail-fast on bad input and on divergence, eval/predict modes.

Everything runs the `runlocal` tiny model on CPU (conftest.py: two host devices, fast
compiles, a compilation cache shared with subprocesses).
"""

import json
import logging as pylog
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import conftest as kit_lib
from squeezebert.train.mesh import Mesh
from squeezebert.train import setup as setup_lib
from squeezebert import workdir as ckpt_lib
from squeezebert.train import optim
from squeezebert.train import steps as steps_lib
from squeezebert import tasks as tasks_lib
from squeezebert.train import trainer

REPO = pathlib.Path(__file__).resolve().parents[2]
runlocal = kit_lib.runlocal
read_jsonl, ckpt_steps, tree_digest = kit_lib.read_jsonl, kit_lib.ckpt_steps, kit_lib.tree_digest
saved_params, assert_metrics_close = kit_lib.saved_params, kit_lib.assert_metrics_close


# ---------------------------------------------------------------------------------------------
# end to end


def test_sst2_end_to_end(sst2_run):
  cfg, wd, result = sst2_run
  assert {"accuracy", "combined", "step", "best_step"} <= set(result)
  assert 0.0 <= result["accuracy"] <= 1.0 and result["step"] == 4
  assert result["best_step"] in (2, 4)
  with open(wd / trainer.FINAL_FILE) as f:
    assert json.load(f) == result

  lines = read_jsonl(wd / "metrics.jsonl")
  train = [l for l in lines if l["split"] == "train"]
  evals = [l for l in lines if l["split"] == "eval"]
  assert [l["step"] for l in train] == [1, 2, 3, 4]  # log_every_steps=1
  assert [l["step"] for l in evals] == [2, 4]
  for l in train:
    assert {"loss", "grad_norm", "learning_rate", "steps_per_sec", "accuracy"} <= set(l)
    assert "all_finite" not in l  # an internal check, not a logged metric
    assert np.isfinite(l["loss"]) and l["grad_norm"] > 0 and l["steps_per_sec"] > 0
  # warmup_ratio 0.1 of 4 steps = no warmup: the first update uses the peak rate, then decays.
  lrs = [l["learning_rate"] for l in train]
  assert lrs[0] == pytest.approx(cfg.learning_rate) and lrs == sorted(lrs, reverse=True)
  assert evals[-1]["accuracy"] == pytest.approx(result["accuracy"])

  import tensorflow as tf
  for split, tag in (("train", "loss"), ("eval", "accuracy")):
    events = list((wd / "tb" / split).glob("events.out.tfevents.*"))
    assert events, split
    tags = {v.tag for e in events for ev in tf.compat.v1.train.summary_iterator(str(e))
            for v in ev.summary.value}
    assert tag in tags, (split, tags)

  assert ckpt_steps(wd) == [2, 4]
  for s in (2, 4):
    assert {p.name for p in (wd / "checkpoints" / str(s)).iterdir()} >= {"model", "optimizer",
                                                                           "meta"}
  run = ckpt_lib.read_run_file(wd)
  assert run["task"] == "sst2" and run["head"] == "classification" and run["num_labels"] == 2
  assert run["model"]["hidden_size"] == 32 and run["best_metric"] == "accuracy"


def test_stsb_tsv_end_to_end_with_truncation(tmp_path, caplog, glue_dir):
  """A pair regression task from the GLUE TSVs; max_len 24 truncates some training pairs."""
  caplog.set_level(pylog.INFO)
  cfg = runlocal("stsb", num_train_steps=2, data__source="tsv", data__tsv_dir=str(glue_dir),
                 data__tfds_data_dir="", data__max_len=24, data__bucket_boundaries=(24,))
  result = trainer.train_and_evaluate(cfg, str(tmp_path))
  assert {"pearson", "spearman", "combined"} <= set(result)
  assert all(np.isfinite(result[k]) for k in ("pearson", "spearman", "combined"))
  assert result["combined"] == pytest.approx((result["pearson"] + result["spearman"]) / 2)
  assert "stsb/train:" in caplog.text and "truncated to 24 tokens" in caplog.text
  run = ckpt_lib.read_run_file(tmp_path)
  assert run["head"] == "regression" and run["num_labels"] == 1
  train = [l for l in read_jsonl(tmp_path / "metrics.jsonl") if l["split"] == "train"]
  assert [l["step"] for l in train] == [1, 2] and "accuracy" not in train[0]
  assert ckpt_steps(tmp_path) == [2]


# ---------------------------------------------------------------------------------------------
# kill -9 and resume


def _main_cmd(workdir, *extra):
  return [sys.executable, "-m", "squeezebert.main",
          f"--config={REPO / 'configs' / 'glue.py'}:task=sst2,runlocal=True",
          f"--workdir={workdir}", *extra]


def _subprocess_env():
  env = dict(os.environ)
  env.pop("GLUE_DIR", None)  # TFDS only: the same data as the in-process runs
  # Same devices and compile settings (conftest's environment) as this process.
  env.update(PYTHONUNBUFFERED="1")
  assert "xla_force_host_platform_device_count=2" in env.get("XLA_FLAGS", "")
  return env


@pytest.mark.heavy
def test_kill_and_resume_matches_uninterrupted(sst2_run, tmp_path, monkeypatch, caplog):
  _, ref_wd, ref_result = sst2_run
  wd = tmp_path / "killed"
  cmd = _main_cmd(wd, "--config.num_train_steps=4", "--config.checkpoint_every_steps=2",
                  "--config.step_delay_secs=0.75")
  env = _subprocess_env()
  log1 = tmp_path / "run1.log"
  with open(log1, "w") as out:
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
  try:
    deadline = time.time() + 420
    while not (wd / "checkpoints" / "2").is_dir():  # orbax renames a finished save into place
      assert proc.poll() is None, f"run exited before its first checkpoint:\n{log1.read_text()}"
      assert time.time() < deadline, "no checkpoint within the time limit"
      time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
  finally:
    if proc.poll() is None:
      proc.kill()
    proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert not (wd / trainer.FINAL_FILE).exists(), "killed too late: the run had finished"
  resumed_at = max(ckpt_steps(wd))
  assert resumed_at < 4
  n_lines = len(read_jsonl(wd / "metrics.jsonl"))

  # The same command's config, resumed in this process (the kill needed a process of its own).
  with caplog.at_level(pylog.INFO):
    resumed = trainer.train_and_evaluate(
        runlocal(num_train_steps=4, checkpoint_every_steps=2, step_delay_secs=0.0), str(wd))
  assert f"at step {resumed_at}" in caplog.text and "resumed from" in caplog.text
  new = [l for l in read_jsonl(wd / "metrics.jsonl")[n_lines:] if l["split"] == "train"]
  assert [l["step"] for l in new] == list(range(resumed_at + 1, 5))  # continues, not from 1
  ref_train = {l["step"]: l for l in read_jsonl(ref_wd / "metrics.jsonl")
               if l["split"] == "train"}
  for l in new:
    assert l["loss"] == pytest.approx(ref_train[l["step"]]["loss"], rel=1e-6, abs=1e-6)

  with open(wd / trainer.FINAL_FILE) as f:
    final = json.load(f)
  assert final == resumed
  assert_metrics_close(final, ref_result)
  got, want = saved_params(wd, 4), saved_params(ref_wd, 4)
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-6, err_msg=k)

  # A finished workdir: nothing is trained, written or saved again.
  before = {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in wd.rglob("*")}

  def no_training(*a, **k):
    raise AssertionError("a finished workdir must not train")

  monkeypatch.setattr(steps_lib, "make_train_step", no_training)
  t0 = time.time()
  again = trainer.train_and_evaluate(runlocal(), str(wd))
  assert time.time() - t0 < 120
  assert again == final
  assert {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in wd.rglob("*")} == before

  # Killed after its last checkpoint but before final_metrics.json: the rerun evaluates the
  # restored final state (no training step runs) and writes the same final metrics.
  (wd / trainer.FINAL_FILE).unlink()
  saved = ckpt_steps(wd)
  monkeypatch.setattr(steps_lib, "make_train_step", lambda *a, **k: no_training)
  again = trainer.train_and_evaluate(runlocal(), str(wd))
  assert_metrics_close(again, final)
  with open(wd / trainer.FINAL_FILE) as f:
    assert_metrics_close(json.load(f), final)
  assert ckpt_steps(wd) == saved


# ---------------------------------------------------------------------------------------------
# one step: data parallelism, gradient accumulation


def test_two_devices_match_one_device():
  assert jax.device_count() == 2, "conftest.py should give JAX two host CPU devices"
  cfg = runlocal()  # dropout on: its random bits must not depend on the sharding
  batch = kit_lib.random_batch()
  mesh2, mesh1 = Mesh(), Mesh(jax.devices()[:1])
  sharded = mesh2.put_batch(batch)["input_ids"]
  assert len(sharded.sharding.device_set) == 2
  assert {s.data.shape for s in sharded.addressable_shards} == {(4, 32)}
  assert len(mesh1.put_batch(batch)["input_ids"].sharding.device_set) == 1
  kit_lib.assert_same_update(kit_lib.one_step(cfg, mesh2, batch), kit_lib.one_step(cfg, mesh1, batch))


def test_grad_accumulation_matches_full_batch():
  cfg = runlocal(model__hidden_dropout_prob=0.0, model__attention_probs_dropout_prob=0.0)
  batch, mesh = kit_lib.random_batch(seed=1), Mesh()
  full = kit_lib.one_step(cfg, mesh, batch, grad_accum=1)
  accum = kit_lib.one_step(cfg, mesh, batch, grad_accum=2)
  kit_lib.assert_same_update(full, accum)
  # Not vacuous: the update moved the parameters.
  init = setup_lib.build_model(cfg, tasks_lib.get_task(cfg))
  kernel = "['classifier']['kernel']"
  assert not np.allclose(np.asarray(init.classifier.kernel[...]), full[1][kernel])


# ---------------------------------------------------------------------------------------------
# weight decay


@pytest.mark.parametrize("family,head", [("squeezebert", "classification"), ("bert", "mlm")])
def test_decay_mask_paths(family, head):
  from squeezebert.model import SqueezeBert, get_config
  model = SqueezeBert(get_config("tiny", family=family), head=head, num_labels=2,
                      rngs=nnx.Rngs(params=0))
  params = nnx.as_pure(nnx.state(model, nnx.Param))  # what nnx.Optimizer hands optax
  flat = {"/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path): bool(m)
          for path, m in jax.tree_util.tree_leaves_with_path(optim.decay_mask(params))}
  assert flat["transformer/layers/0/post_attention/layer_norm/scale"] is False
  assert flat["transformer/layers/0/post_attention/layer_norm/bias"] is False
  assert flat["transformer/layers/0/post_attention/proj/kernel"] is True
  assert flat["transformer/layers/1/attention/query/bias"] is False
  assert flat["transformer/embeddings/word_embeddings"] is True
  assert flat["transformer/embeddings/layer_norm/scale"] is False
  for path, decays in flat.items():
    name = path.rsplit("/", 1)[-1]
    if name == "bias" or "layer_norm" in path:
      assert not decays, path
    elif name == "kernel" or name.endswith("embeddings"):
      assert decays, path
  assert sum(flat.values()) >= 10 and sum(not v for v in flat.values()) >= 10


def test_weight_decay_applied_only_where_masked():
  """Zero gradients: AdamW's update is just -lr * wd * p on the decayed parameters."""
  from squeezebert.model import SqueezeBert, get_config
  model = SqueezeBert(get_config("tiny"), head="classification", num_labels=2,
                      rngs=nnx.Rngs(params=0))
  cfg = runlocal(learning_rate=0.1, weight_decay=0.5, grad_clip_norm=0.0, warmup_steps=0,
                 warmup_ratio=0.0)
  tx, _ = optim.make_tx(cfg, total=10, warmup=0)
  opt = optim.make_optimizer(model, tx)
  before = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(model, nnx.Param)))

  @nnx.jit
  def update(model, opt):
    opt.update(model, jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param)))

  update(model, opt)
  after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  factor = 1.0 - 0.1 * 0.5  # the first update already uses the peak learning rate
  layer = lambda t: t["transformer"]["layers"][0]
  np.testing.assert_allclose(layer(after)["post_attention"]["proj"]["kernel"],
                             factor * layer(before)["post_attention"]["proj"]["kernel"],
                             rtol=1e-6)
  np.testing.assert_allclose(after["transformer"]["embeddings"]["word_embeddings"],
                             factor * before["transformer"]["embeddings"]["word_embeddings"],
                             rtol=1e-6)
  for ln in ("scale", "bias"):
    np.testing.assert_array_equal(layer(after)["post_attention"]["layer_norm"][ln],
                                  layer(before)["post_attention"]["layer_norm"][ln])
  np.testing.assert_array_equal(after["classifier"]["bias"], before["classifier"]["bias"])


def test_freeze_params_keeps_the_table_fixed_and_trains_the_rest():
  """freeze_params: the named parameters get neither gradient steps nor weight decay (a tied
  MLM decoder included); every other parameter still moves; a fragment that names nothing
  is refused before training."""
  from squeezebert.model import SqueezeBert, get_config
  model = SqueezeBert(get_config("tiny"), head="mlm", num_labels=2, rngs=nnx.Rngs(params=0))
  cfg = runlocal(learning_rate=0.1, weight_decay=0.5, warmup_steps=0, warmup_ratio=0.0,
                 freeze_params="word_embeddings")
  opt = optim.make_optimizer(model, optim.make_tx(cfg, total=10, warmup=0)[0])
  before = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  ids = jnp.asarray(np.random.default_rng(0).integers(5, 99, (2, 8)), jnp.int32)

  @nnx.jit
  def update(model, opt):
    def loss(m):  # MLM logits read the (tied) word embeddings
      return jnp.mean(jnp.square(m(ids, deterministic=True).logits))
    opt.update(model, nnx.grad(loss)(model))

  update(model, opt)
  after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  emb = lambda t: t["transformer"]["embeddings"]
  np.testing.assert_array_equal(emb(after)["word_embeddings"], emb(before)["word_embeddings"])
  assert not np.allclose(emb(after)["position_embeddings"], emb(before)["position_embeddings"])
  kernel = lambda t: t["transformer"]["layers"][0]["post_attention"]["proj"]["kernel"]
  assert not np.allclose(kernel(after), kernel(before))

  bad = runlocal(freeze_params="word_embedings")
  with pytest.raises(ValueError, match="word_embedings.*match no parameter"):
    optim.make_optimizer(model, optim.make_tx(bad, total=10, warmup=0)[0])


# ---------------------------------------------------------------------------------------------
# bad input: clear errors


def test_unknown_task_and_config_argument():
  with pytest.raises(ValueError, match="unknown GLUE task 'foo'"):
    kit_lib.config("glue", "task=foo")
  cfg = runlocal()
  cfg.task = "foo"
  with pytest.raises(ValueError, match="unknown task 'foo'"):
    tasks_lib.get_task(cfg)
  with pytest.raises(ValueError, match="unknown config argument 'bogus'"):
    kit_lib.config("glue", "task=sst2,bogus=1")
  with pytest.raises(ValueError, match="runlocal"):
    kit_lib.config("glue", "task=sst2,runlocal=maybe")


@pytest.mark.parametrize("overrides,match", [
    (dict(batch_size=0), "batch_size must be > 0"),
    (dict(grad_accum_steps=3), "grad_accum_steps=3 must be >= 1 and divide batch_size=8"),
    (dict(grad_accum_steps=8), "micro-batch size 1 must divide evenly over 2 devices"),
    (dict(learning_rate=-1e-3), "learning_rate must be > 0"),
    (dict(optimizer="sgd"), "unknown config.optimizer 'sgd'"),
    (dict(dtype="float16"), "dtype must be float32 or bfloat16"),
    (dict(mode="serve"), "mode must be train|eval|predict"),
    (dict(log_every_steps=0), "log_every_steps must be >= 1"),
    (dict(weight_decay=-0.1), "weight_decay must be >= 0"),
    (dict(data__source="csv"), "data.source must be auto|tfds|tsv"),
    (dict(reinit_params="pooler"), "reinit_params='pooler' needs config.init_from"),
])
def test_bad_config_values_fail_before_any_work(tmp_path, overrides, match):
  wd = tmp_path / "wd"
  with pytest.raises(ValueError, match=match):
    trainer.train_and_evaluate(runlocal(**overrides), str(wd))
  assert not wd.exists()


def test_freeze_params_typo_refused_before_data(tmp_path, monkeypatch):
  monkeypatch.setattr(tasks_lib.GlueTask, "load", lambda *a: pytest.fail("data was read"))
  with pytest.raises(ValueError, match="'word_embedding_table'.*match no parameter"):
    trainer.train_and_evaluate(runlocal(freeze_params="layer_norm,word_embedding_table"),
                               str(tmp_path))
  assert not (tmp_path / ckpt_lib.RUN_FILE).exists()


def test_unknown_model_variant(tmp_path):
  with pytest.raises(ValueError, match="unknown model variant 'huge'"):
    trainer.train_and_evaluate(runlocal(model__variant="huge"), str(tmp_path))


def test_missing_data_names_what_to_set(tmp_path, monkeypatch):
  empty = tmp_path / "empty"
  empty.mkdir()
  monkeypatch.setenv("TFDS_DATA_DIR", str(empty))
  monkeypatch.delenv("GLUE_DIR", raising=False)
  with pytest.raises(FileNotFoundError, match=r"config\.data\.tfds_data_dir") as e:
    trainer.train_and_evaluate(runlocal(data__tfds_data_dir="", data__download=False),
                               str(tmp_path / "wd"))
  assert "TFDS_DATA_DIR" in str(e.value) and "config.data.tsv_dir" in str(e.value)
  with pytest.raises(FileNotFoundError, match=r"config\.data\.tsv_dir") as e:
    trainer.train_and_evaluate(runlocal(data__source="tsv", data__tsv_dir=str(empty)),
                               str(tmp_path / "wd2"))
  assert "train.tsv" in str(e.value)


def test_mismatched_workdir_refused_and_untouched(sst2_run):
  _, wd, _ = sst2_run
  before = tree_digest(wd / "checkpoints", wd / ckpt_lib.RUN_FILE)
  assert len(before) > 5
  cfg = runlocal(model__hidden_size=64, model__embedding_size=64)
  with pytest.raises(ValueError, match=r"was trained with another config.*model.hidden_size: "
                                       r"None -> 64"):
    trainer.train_and_evaluate(cfg, str(wd))
  assert tree_digest(wd / "checkpoints", wd / ckpt_lib.RUN_FILE) == before
  # Forcing the resume past that check still meets the run file's model check.
  cfg.allow_config_change = True
  with pytest.raises(ValueError, match="holds checkpoints of a run with a different model"):
    trainer.train_and_evaluate(cfg, str(wd))
  assert tree_digest(wd / "checkpoints", wd / ckpt_lib.RUN_FILE) == before


def _write_sst2_tsv(root, train_sentences, dev_sentences=("a fine film",)):
  d = root / "SST-2"
  d.mkdir(parents=True)
  for name, sents in (("train.tsv", train_sentences), ("dev.tsv", dev_sentences)):
    with open(d / name, "w") as f:
      f.write("sentence\tlabel\n")
      for i, s in enumerate(sents):
        f.write(f"{s}\t{i % 2}\n")
  return str(root)


def test_empty_training_sentence_names_the_example(tmp_path):
  tsv = _write_sst2_tsv(tmp_path, ["a good movie", "bad", "  ", "fine"] * 4)
  cfg = runlocal(data__source="tsv", data__tsv_dir=tsv)
  with pytest.raises(ValueError, match=r"sst2/train: empty text_a in the example with idx 2"):
    trainer.train_and_evaluate(cfg, str(tmp_path / "wd"))


def test_over_long_text_is_truncated_and_counted(tmp_path, caplog):
  caplog.set_level(pylog.INFO)
  long = " ".join(["word"] * 20)
  tsv = _write_sst2_tsv(tmp_path, ["short one", long, "tiny", long + " more"])
  task = tasks_lib.get_task(runlocal(data__source="tsv", data__tsv_dir=tsv, data__max_len=8))
  enc = task.load("train")
  assert len(enc) == 4 and enc.num_truncated == 2
  assert enc.lengths.tolist() == [4, 8, 3, 8] and enc.max_len == 8
  assert enc.input_ids[1, 7] == task.tokenizer.token_to_id("[SEP]")
  assert "sst2/train: 2 of 4 examples truncated to 8 tokens" in caplog.text


# ---------------------------------------------------------------------------------------------
# divergence


def test_nan_fails_fast_without_saving_the_bad_state(tmp_path, tfds_dir):
  cfg = runlocal(learning_rate=1e6, num_train_steps=6, eval_every_steps=1,
                 keep_checkpoints=10, data__bucket_boundaries=(64,))
  with pytest.raises(FloatingPointError, match=r"diverged at step (\d+)") as e:
    trainer.train_and_evaluate(cfg, str(tmp_path))
  bad_step = int(re.search(r"diverged at step (\d+)", str(e.value)).group(1))
  assert 1 < bad_step <= 6
  saved = ckpt_steps(tmp_path)
  assert saved == list(range(1, bad_step))  # every step before it, nothing from it on
  for s in saved:
    assert all(np.isfinite(v).all() for v in saved_params(tmp_path, s).values()), s
  assert not (tmp_path / trainer.FINAL_FILE).exists()
  logged = [l for l in read_jsonl(tmp_path / "metrics.jsonl")]
  assert max(l["step"] for l in logged) < bad_step
  assert all(np.isfinite(v) for l in logged for v in l.values() if isinstance(v, float))


# ---------------------------------------------------------------------------------------------
# eval and predict


def test_predict_and_eval_modes(sst2_run):
  cfg, wd, result = sst2_run
  cfg = cfg.copy_and_resolve_references()
  cfg.mode = "predict"
  pred = trainer.train_and_evaluate(cfg, str(wd))
  path = pathlib.Path(pred["test_file"])
  assert path == wd / "predictions" / "SST-2.tsv"
  rows = path.read_text().splitlines()
  assert rows[0] == "index\tprediction"
  # data.eval_limit caps the test split too (a smoke run): its first 32 examples.
  assert len(rows) == 1 + cfg.data.eval_limit
  parsed = [r.split("\t") for r in rows[1:]]
  assert [int(i) for i, _ in parsed] == list(range(cfg.data.eval_limit))
  assert {p for _, p in parsed} <= {"0", "1"}

  cfg.mode = "eval"
  ev = trainer.train_and_evaluate(cfg, str(wd))
  best = result["best_step"]
  assert ev["step"] == best
  at_best = [l for l in read_jsonl(wd / "metrics.jsonl")
             if l["split"] == "eval" and l["step"] == best][-1]
  assert ev["accuracy"] == pytest.approx(at_best["accuracy"])
  assert pred["accuracy"] == pytest.approx(ev["accuracy"])
