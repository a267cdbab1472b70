"""Distillation: the loss against hand-computed values, layer mapping, and end-to-end runlocal
runs with a frozen teacher inside the jitted step."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from squeezebert import load
from squeezebert.model import surgery
from squeezebert import convert
from squeezebert.model import SqueezeBert, get_config
from squeezebert.model.model import ModelOutput
from squeezebert.train import distill, trainer

from conftest import needs_tfds, random_batch, read_jsonl, runlocal
from squeezebert import tasks
from squeezebert.train import optim, setup, steps


def _np_kd(s, t, temp):
  def log_softmax(x):
    x = x / temp
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))
  ls, lt = log_softmax(s), log_softmax(t)
  return temp ** 2 * (np.exp(lt) * (lt - ls)).sum(-1)


def test_kd_loss_matches_hand_computed():
  s = np.array([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0]], np.float32)
  t = np.array([[1.0, 0.0, 3.0], [5.0, -2.0, 1.0]], np.float32)
  got = np.asarray(distill.soft_cross_entropy_kl(jnp.asarray(s), jnp.asarray(t), 2.0))
  np.testing.assert_allclose(got, _np_kd(s, t, 2.0), rtol=1e-5)
  # A concrete value worked by hand: T=1, student uniform over 2, teacher (0.75, 0.25):
  # KL = 0.75 ln(1.5) + 0.25 ln(0.5) = 0.130812.
  v = distill.soft_cross_entropy_kl(jnp.zeros((1, 2)), jnp.log(jnp.array([[0.75, 0.25]])), 1.0)
  assert float(v[0]) == pytest.approx(0.75 * np.log(1.5) + 0.25 * np.log(0.5), abs=1e-6)
  assert float(distill.soft_cross_entropy_kl(jnp.asarray(t), jnp.asarray(t), 3.0).max()) < 1e-6

  cfg = distill.DistillConfig(alpha=0.3, temperature=2.0)
  w = np.array([1.0, 0.0], np.float32)  # the second row is padding: ignored
  out_s = ModelOutput(last_hidden_state=None, pooler_output=None, logits=jnp.asarray(s))
  out_t = ModelOutput(last_hidden_state=None, pooler_output=None, logits=jnp.asarray(t))
  terms = distill.distill_terms(cfg, "classification", out_s, out_t, {"example_weight": w})
  assert float(terms["kd_loss"]) == pytest.approx(_np_kd(s, t, 2.0)[0], rel=1e-5)
  total = distill.combine(cfg, jnp.float32(0.9), terms)
  assert float(total) == pytest.approx(0.7 * 0.9 + 0.3 * _np_kd(s, t, 2.0)[0], rel=1e-5)
  reg = distill.distill_terms(cfg, "regression", out_s, out_t, {"example_weight": w})
  assert float(reg["kd_loss"]) == pytest.approx((2.0 - 1.0) ** 2)


def test_hidden_transfer_and_layer_map():
  assert distill.layer_map(2, 4) == [0, 2, 4]
  assert distill.layer_map(3, 6) == [0, 2, 4, 6]
  assert distill.layer_map(4, 4) == [0, 1, 2, 3, 4]
  cfg = distill.DistillConfig(alpha=0.5, hidden_weight=1.0)
  h = [jnp.ones((1, 3, 4)) * i for i in range(5)]  # teacher: 4 layers
  hs = [jnp.ones((1, 3, 4)) * i for i in (0, 2, 4)]  # student 2 layers = teacher 0, 2, 4
  logits = jnp.zeros((1, 2))
  mk = lambda hid: ModelOutput(None, None, logits=logits, hidden_states=tuple(hid))
  batch = {"example_weight": jnp.ones(1), "attention_mask": jnp.array([[1, 1, 0]])}
  assert float(distill.distill_terms(cfg, "classification", mk(hs), mk(h), batch)
               ["hidden_loss"]) == 0.0
  hs[1] = hs[1] + 1.0  # off by one on the real tokens -> MSE 1 on one of three mapped states
  assert float(distill.distill_terms(cfg, "classification", mk(hs), mk(h), batch)
               ["hidden_loss"]) == pytest.approx(1 / 3)


@pytest.mark.parametrize("kw,match", [(dict(alpha=1.5), "alpha"), (dict(temperature=0.0),
                                                                    "temperature"),
                                      (dict(augment_prob=1.0), "augment_prob"),
                                      (dict(augment_copies=0), "augment_copies"),
                                      (dict(augment_copies=1.5), "augment_copies")])
def test_bad_distill_config(kw, match):
  with pytest.raises(ValueError, match=match):
    distill.DistillConfig(**kw)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  """A tiny classification model (random weights) saved as one of our model dirs."""
  d = tmp_path_factory.mktemp("teacher")
  cfg = get_config("tiny", vocab_size=30522, num_hidden_layers=3)
  model = SqueezeBert(cfg, head="classification", num_labels=2, rngs=nnx.Rngs(params=7))
  convert.save_pretrained(model, str(d))
  return d


@needs_tfds
def test_distillation_end_to_end(teacher_dir, tmp_path):
  before = convert.flat_params(load.from_pretrained(str(teacher_dir)))
  cfg = runlocal(distill__teacher=str(teacher_dir), distill__alpha=0.7,
                 distill__hidden_weight=0.5)
  result = trainer.train_and_evaluate(cfg, str(tmp_path / "w"))
  assert np.isfinite(result["accuracy"])
  rows = [r for r in read_jsonl(tmp_path / "w" / "metrics.jsonl") if r["split"] == "train"]
  for r in rows:
    total = 0.3 * r["task_loss"] + 0.7 * r["kd_loss"] + 0.5 * r["hidden_loss"]
    assert r["loss"] == pytest.approx(total, rel=1e-4)
    assert r["kd_loss"] > 0
  after = convert.flat_params(load.from_pretrained(str(teacher_dir)))
  for k in before:  # the teacher is frozen (and its file untouched)
    np.testing.assert_array_equal(before[k], after[k])


@needs_tfds
def test_teacher_head_must_match(teacher_dir, tmp_path):
  cfg = runlocal(task="stsb", distill__teacher=str(teacher_dir))
  with pytest.raises(ValueError, match="fine-tune the teacher"):
    trainer.train_and_evaluate(cfg, str(tmp_path / "w"))
  cfg = runlocal(distill__teacher=str(tmp_path / "missing"))
  with pytest.raises(FileNotFoundError, match="distill.teacher"):
    trainer.train_and_evaluate(cfg, str(tmp_path / "w2"))


def test_projected_hidden_loss_matches_hand_computed():
  # Student width 2, teacher width 3; the projection h @ W + b by hand.
  proj = surgery.HiddenProjection(2, 3, rngs=nnx.Rngs(params=0))
  w = np.array([[1.0, 0.0, 2.0], [0.0, -1.0, 1.0]], np.float32)
  b = np.array([0.5, 0.0, -0.5], np.float32)
  proj.dense.kernel[...] = jnp.asarray(w)
  proj.dense.bias[...] = jnp.asarray(b)
  rng = np.random.default_rng(0)
  hs = [rng.normal(size=(2, 4, 2)).astype(np.float32) for _ in range(3)]  # 2 student layers
  ht = [rng.normal(size=(2, 4, 3)).astype(np.float32) for _ in range(5)]  # 4 teacher layers
  mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.int32)
  want = []
  for i, j in enumerate([0, 2, 4]):
    d = (hs[i] @ w + b - ht[j]) ** 2 * mask[..., None]
    want.append(d.sum() / (mask.sum() * 3))
  got = distill.hidden_mse([jnp.asarray(h) for h in hs], [jnp.asarray(h) for h in ht],
                           jnp.asarray(mask), proj)
  assert float(got) == pytest.approx(float(np.mean(want)), rel=1e-5)
  with pytest.raises(ValueError, match="no distill projection"):
    distill.hidden_mse([jnp.asarray(h) for h in hs], [jnp.asarray(h) for h in ht],
                       jnp.asarray(mask))


def test_hidden_only_skips_the_logit_term():
  cfg = distill.DistillConfig(alpha=0.0, hidden_weight=2.0)
  h = tuple(jnp.ones((1, 3, 4)) * i for i in range(3))
  out = ModelOutput(None, None, logits=jnp.zeros((1, 2)), hidden_states=h)
  terms = distill.distill_terms(cfg, "pretraining", out, out,
                                {"example_weight": jnp.ones(1),
                                 "attention_mask": jnp.ones((1, 3), jnp.int32)})
  assert set(terms) == {"hidden_loss"}
  assert float(distill.combine(cfg, jnp.float32(1.5), dict(hidden_loss=jnp.float32(0.25)))) \
      == pytest.approx(1.5 + 2.0 * 0.25)


@pytest.fixture(scope="module")
def wide_teacher_dir(tmp_path_factory):
  """A classification teacher 1.5x wider than the runlocal student (tiny: hidden 32)."""
  d = tmp_path_factory.mktemp("wide_teacher")
  cfg = get_config("tiny", vocab_size=30522, num_hidden_layers=3, hidden_size=48,
                   intermediate_size=96)
  convert.save_pretrained(SqueezeBert(cfg, head="classification", num_labels=2,
                                      rngs=nnx.Rngs(params=3)), str(d))
  return d


@pytest.mark.heavy
@needs_tfds
def test_projection_trains_resumes_and_is_dropped_on_load(wide_teacher_dir, tmp_path):
  workdir = tmp_path / "w"
  cfg = runlocal(distill__teacher=str(wide_teacher_dir), distill__alpha=0.5,
                 distill__hidden_weight=1.0, num_train_steps=4, eval_every_steps=2)
  student_hidden = get_config(cfg.model.variant).hidden_size
  trainer.train_and_evaluate(cfg, str(workdir))
  run = json.loads((workdir / "run.json").read_text())
  assert run["distill_projection"] == [student_hidden, 48]
  rows = [r for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "train"]
  assert all(r["hidden_loss"] > 0 for r in rows)
  # The projection is a trained parameter of the checkpoint ...
  from squeezebert import workdir as ckpt_lib
  ck = ckpt_lib.Checkpoints(str(workdir), read_only=True)
  probe = SqueezeBert(get_config(cfg.model.variant, vocab_size=30522), head="classification",
                      num_labels=2, rngs=nnx.Rngs(params=cfg.seed))
  init_kernel = np.asarray(surgery.attach_projection(
      probe, run["distill_projection"], seed=cfg.seed).distill_projection.dense.kernel[...])
  saved, _, _ = ck.restore(4, nnx.state(probe))
  ck.close()
  trained = np.asarray(saved["distill_projection"]["dense"]["kernel"][...])
  assert trained.shape == (student_hidden, 48)
  assert not np.allclose(trained, init_kernel)
  # ... resumes (a longer schedule continues from step 4) ...
  cfg.num_train_steps = 6
  trainer.train_and_evaluate(cfg, str(workdir))
  assert max(r["step"] for r in read_jsonl(workdir / "metrics.jsonl")) == 6
  # ... eval mode rebuilds it from run.json; loading for use drops it.
  cfg.mode = "eval"
  assert np.isfinite(trainer.train_and_evaluate(cfg, str(workdir))["accuracy"])
  model = load.from_pretrained(str(workdir))
  assert surgery.projection_of(model) is None
  assert not any(k.startswith(surgery.PROJECTION_ATTR) for k in convert.flat_params(model))


def test_augment_ids_replaces_only_real_ordinary_tokens():
  rng = np.random.default_rng(0)
  ids = rng.integers(1000, 30000, size=(64, 40)).astype(np.int32)
  ids[:, 0], ids[:, 30], ids[:, 31:] = 101, 102, 0  # [CLS] ... [SEP] then padding
  mask = (ids != 0).astype(np.int32)
  kw = dict(mask_id=103, special_ids=(0, 100, 101, 102, 103), vocab_size=30522,
            random_token_min_id=999)
  out = np.asarray(distill.augment_ids(jax.random.key(1), ids, mask, prob=0.3, **kw))
  changed = out != ids
  np.testing.assert_array_equal(out[:, [0, 30]], ids[:, [0, 30]])  # specials kept
  np.testing.assert_array_equal(out[:, 31:], 0)                      # padding kept
  frac = changed[:, 1:30].mean()
  assert 0.27 < frac < 0.33, frac          # ~prob of the 29 * 64 real tokens
  new = out[changed]
  assert 0.4 < np.mean(new == 103) < 0.6    # half [MASK], half random ordinary tokens
  assert new[new != 103].min() >= 999
  again = np.asarray(distill.augment_ids(jax.random.key(1), ids, mask, prob=0.3, **kw))
  np.testing.assert_array_equal(out, again)  # reproducible from the key
  none = np.asarray(distill.augment_ids(jax.random.key(1), ids, mask, prob=0.0, **kw))
  np.testing.assert_array_equal(none, ids)


def test_augmented_copy_doubles_the_batch_and_keeps_weights():
  batch = {"input_ids": jnp.array([[101, 5, 102], [101, 7, 102]]),
           "attention_mask": jnp.ones((2, 3), jnp.int32), "example_weight": jnp.array([1., 0.]),
           "label": jnp.array([1, 0])}
  aug = jnp.array([[101, 103, 102], [101, 9, 102]])
  both = distill.with_augmented_copy(batch, aug)
  np.testing.assert_array_equal(both["input_ids"], jnp.concatenate([batch["input_ids"], aug]))
  np.testing.assert_array_equal(both["example_weight"], [1, 0, 1, 0])  # padding row stays 0
  np.testing.assert_array_equal(both["label"], [1, 0, 1, 0])
  out = ModelOutput(last_hidden_state=jnp.zeros((4, 3, 2)), pooler_output=jnp.zeros((4, 2)),
                    logits=jnp.arange(8.).reshape(4, 2))
  np.testing.assert_array_equal(distill.first_rows(out, 2).logits, [[0, 1], [2, 3]])
  aug2 = jnp.array([[101, 4, 102], [101, 103, 102]])
  three = distill.with_augmented_copy(batch, aug, aug2)
  np.testing.assert_array_equal(three["input_ids"],
                                jnp.concatenate([batch["input_ids"], aug, aug2]))
  np.testing.assert_array_equal(three["example_weight"], [1, 0, 1, 0, 1, 0])
  with pytest.raises(ValueError, match="at least one"):
    distill.with_augmented_copy(batch)


@pytest.mark.heavy
def test_distillation_with_augmentation(teacher_dir):
  """The trainer's step on one batch, no dropout: the task loss reads only the first B rows of
  the (1 + copies) B-row forward, so it equals the plain step's; with a vanishing
  augment_prob the copies are the batch itself, so the KD term is unchanged too; at 0.3 it
  averages in corrupted copies and moves (and moves again with 3 copies)."""
  cfg = runlocal(distill__teacher=str(teacher_dir), distill__alpha=0.6,
                 model__hidden_dropout_prob=0.0, model__attention_probs_dropout_prob=0.0)
  task = tasks.get_task(cfg)
  model = setup.build_model(cfg, task)
  teacher = setup.load_teacher(cfg, task, model)
  tx, lr = optim.make_tx(cfg, 4, 0)
  graphdef, state = nnx.split((model, optim.make_optimizer(model, tx)))
  batch = {k: jnp.asarray(v) for k, v in random_batch(8, 16, seed=3).items()}

  def first_step(prob=0.0, copies=1):
    cfg.distill.augment_prob, cfg.distill.augment_copies = prob, copies
    step = steps.make_train_step(graphdef, task, lr, teacher=teacher,
                                 distill_cfg=setup.distill_config(cfg))
    _, m = step(jax.tree.map(jnp.copy, state), batch, jax.random.key(0), 0, teacher.state)
    m = {k: float(v) for k, v in m.items()}
    assert m["loss"] == pytest.approx(0.4 * m["task_loss"] + 0.6 * m["kd_loss"], rel=1e-4)
    return m

  plain, same, aug = first_step(), first_step(1e-9), first_step(0.3)
  assert same["task_loss"] == pytest.approx(plain["task_loss"], rel=1e-5)
  assert same["kd_loss"] == pytest.approx(plain["kd_loss"], rel=1e-5)
  assert aug["task_loss"] == pytest.approx(plain["task_loss"], rel=1e-5)
  assert aug["kd_loss"] != pytest.approx(plain["kd_loss"], rel=1e-3)
  # Three copies: (1 + 3) B rows; the task loss still reads only the first B.
  aug3 = first_step(0.3, 3)
  assert aug3["task_loss"] == pytest.approx(plain["task_loss"], rel=1e-5)
  assert aug3["kd_loss"] != pytest.approx(aug["kd_loss"], rel=1e-3)


@needs_tfds
def test_embedding_init_from_teacher(teacher_dir, tmp_path):
  """distill.embedding_init: the scratch student's word embeddings start as the teacher's
  table projected to the student's width (here equal widths), then train as usual."""
  from squeezebert.train import embed_init
  cfg = runlocal(distill__teacher=str(teacher_dir), distill__embedding_init=True,
                 learning_rate=1e-12, num_train_steps=2, eval_every_steps=2)
  trainer.train_and_evaluate(cfg, str(tmp_path / "w"))
  got = np.asarray(load.from_pretrained(str(tmp_path / "w"))
                   .transformer.embeddings.word_embeddings[...])
  want, covered = embed_init.from_teacher(get_config("tiny", vocab_size=30522),
                                          str(teacher_dir))
  assert covered.all()
  np.testing.assert_allclose(got, want, atol=1e-6)
  with pytest.raises(ValueError, match="needs config.distill.teacher"):
    trainer.train_and_evaluate(runlocal(distill__embedding_init=True), str(tmp_path / "x"))
  with pytest.raises(ValueError, match="init_from"):
    trainer.train_and_evaluate(runlocal(distill__teacher=str(teacher_dir),
                                        init_from=str(teacher_dir),
                                        distill__embedding_init=True), str(tmp_path / "y"))
