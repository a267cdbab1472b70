"""Pretraining: TFDS text-corpus builder, SOP pairs, in-step masking, masked-position MLM logits,
LAMB + accumulation, an end-to-end runlocal pretraining run exported to HF's
SqueezeBertForMaskedLM."""

import json
import os
import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from squeezebert import load
from squeezebert.train.mesh import Mesh
from squeezebert.train import setup as setup_lib
from squeezebert.model import surgery
from squeezebert import convert
from squeezebert.data import prepare, prepared, pretraining, text_corpus
from squeezebert.data import tokenizer as tokenization
from squeezebert.model import SqueezeBert, get_config
from squeezebert.tasks import masking
from squeezebert.tasks.pretrain import PretrainTask
from squeezebert.train import trainer

from conftest import assert_same_update, config, one_step, random_batch, read_jsonl, runlocal

REPO = pathlib.Path(__file__).resolve().parents[2]
WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly hex "
         "every unbelievably gnarled juniper tree near Hampshire").split()


def _prose(rng, n_sent):
  out = []
  for _ in range(n_sent):
    words = list(rng.choice(WORDS, size=rng.integers(4, 14)))
    out.append(" ".join(words).capitalize() + ".")
  return " ".join(out)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("corpus")
  rng = np.random.default_rng(0)
  for name, n_docs in (("a.txt", 150), ("b.txt", 120)):
    docs = ["\n".join(_prose(rng, int(rng.integers(2, 6))) for _ in range(rng.integers(1, 4)))
            for _ in range(n_docs)]
    (d / name).write_text("\n\n".join(docs) + "\n")
  (d / "notes.md").write_text("not a .txt file: ignored\n")
  return d


@pytest.fixture(scope="module")
def tok():
  return tokenization.load_tokenizer()


# ------------------------------------------------------------------------------- corpus

def test_text_corpus_builder_splits_documents(corpus_dir, tmp_path):
  train = list(text_corpus.load_documents("text_corpus/paragraphs", "train",
                                          data_dir=str(tmp_path), corpus_dir=str(corpus_dir)))
  val = list(text_corpus.load_documents("text_corpus/paragraphs", "validation",
                                        data_dir=str(tmp_path), corpus_dir=str(corpus_dir)))
  assert len(train) + len(val) == 270           # every document once, none from notes.md
  assert 0 < len(val) < 20                      # ~1 in 200 held out (by hash: deterministic)
  expected = [doc for f in ("a.txt", "b.txt")
              for _, doc in text_corpus.paragraph_documents(str(corpus_dir / f))]
  assert sorted(train + val) == sorted(expected)
  assert all("\n\n" not in d and d.strip() for d in train)
  assert list(text_corpus.load_documents("text_corpus/paragraphs", "train", data_dir=str(tmp_path),
                                         corpus_dir=str(corpus_dir), limit=5)) == train[:5]


def test_wikitext_articles(tmp_path):
  src = tmp_path / "wt"
  src.mkdir()
  (src / "wiki.valid.tokens").write_text(
      " \n = Alpha = \n \n Alpha is a letter . \n \n = = History = = \n \n It is old . \n"
      " \n = Beta = \n \n Beta follows alpha . \n")
  docs = list(text_corpus.load_documents("text_corpus/wikitext", "validation",
                                         data_dir=str(tmp_path / "tfds"), corpus_dir=str(src)))
  assert sorted(docs) == ["Alpha is a letter .\nIt is old .", "Beta follows alpha ."]


def test_corpus_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="corpus directory"):
    list(text_corpus.load_documents("text_corpus/paragraphs", "train",
                                    corpus_dir=str(tmp_path / "absent")))
  with pytest.raises(ValueError, match="unknown corpus format"):
    list(text_corpus.load_documents("text_corpus/html", "train", corpus_dir=str(tmp_path)))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no .txt files"):
    list(text_corpus.load_documents("text_corpus/paragraphs", "train",
                                    data_dir=str(tmp_path / "t"),
                                    corpus_dir=str(tmp_path / "empty")))


# ------------------------------------------------------------------------------- SOP

def test_split_sentences():
  doc = 'He said "Stop." Then he left! Was it 3 p.m.? Yes.\nA new paragraph'
  assert pretraining.split_sentences(doc) == [
      'He said "Stop."', "Then he left!", "Was it 3 p.m.?", "Yes.", "A new paragraph"]


def test_sop_pairs_are_consecutive_and_half_swapped():
  # Token t of a document is 1000 + its running position: order is visible in the ids.
  rng = np.random.default_rng(1)
  docs = []
  for _ in range(300):
    sents, pos = [], 1000
    for _ in range(rng.integers(2, 9)):
      n = int(rng.integers(3, 20))
      sents.append(list(range(pos, pos + n)))
      pos += n
    docs.append(sents)
  pairs = list(pretraining.create_sop_pairs(docs, max_len=48, seed=0))
  assert len(pairs) > 300
  swapped = [s for _, _, s in pairs]
  assert 0.4 < np.mean(swapped) < 0.6
  for a, b, s in pairs:
    assert a and b and len(a) + len(b) <= 48 - 3
    first, second = (b, a) if s else (a, b)
    # Each segment is a contiguous run and the first segment precedes the second.
    for seg in (first, second):
      assert seg == list(range(seg[0], seg[0] + len(seg)))
    assert first[-1] < second[0]


def test_build_sop_split_layout_and_cache(tok, tmp_path):
  docs = ["The cat sat on the mat. It was unbelievably comfortable. Then it slept.",
          "Transformers are neural networks. They use self-attention everywhere."]
  enc = pretraining.build_sop_split(docs, tok, 32, seed=0, cache_dir=str(tmp_path),
                                    cache_key={"t": 1})
  cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
  assert len(enc) >= 2 and len(os.listdir(tmp_path)) == 1
  for i in range(len(enc)):
    ids, types, n = enc.input_ids[i], enc.token_type_ids[i], enc.lengths[i]
    seps = np.flatnonzero(ids[:n] == sep)
    assert ids[0] == cls and len(seps) == 2 and seps[1] == n - 1 and not ids[n:].any()
    assert not types[:seps[0] + 1].any() and types[seps[0] + 1:n].all() and not types[n:].any()
    pieces = tok.id_to_token
    ws = enc.token_extras["word_start"][i]
    assert all(ws[j] == (not pieces(int(ids[j])).startswith("##")) for j in range(n))
  again = pretraining.build_sop_split(iter(()), tok, 32, seed=0, cache_dir=str(tmp_path),
                                      cache_key={"t": 1})  # served from the cache
  np.testing.assert_array_equal(again.input_ids, enc.input_ids)
  with pytest.raises(ValueError, match="no non-empty documents"):
    pretraining.build_sop_split(["", "  "], tok, 32, seed=0)


# ------------------------------------------------------------------------------- masking

SPECIAL = dict(mask_id=103, special_ids=(0, 101, 102, 103, 100), vocab_size=30522,
               random_token_min_id=999)


def _random_batch(b=512, l=64, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(10, l + 1, b)
  ids = rng.integers(1000, 30522, (b, l)).astype(np.int32)
  ids[:, 0] = 101
  ids[np.arange(b), lengths - 1] = 102
  mask = (np.arange(l)[None] < lengths[:, None]).astype(np.int32)
  return ids * mask, mask, lengths


def test_masking_statistics():
  ids, mask, lengths = _random_batch()
  out, pos, tgt, w = jax.jit(lambda r: masking.mask_tokens(r, ids, mask, **SPECIAL))(
      jax.random.key(0))
  out, pos, tgt, w = map(np.asarray, (out, pos, tgt, w))
  n_maskable = lengths - 2
  # Exactly round(15%) per sequence (at least 1), never a special or padding position.
  np.testing.assert_array_equal(w.sum(1), np.clip(np.round(n_maskable * 0.15), 1, pos.shape[1]))
  sel_pos = pos[w > 0]
  rows = np.repeat(np.arange(len(ids)), pos.shape[1]).reshape(pos.shape)[w > 0]
  assert np.all(mask[rows, sel_pos] == 1)
  assert not np.isin(ids[rows, sel_pos], SPECIAL["special_ids"]).any()
  np.testing.assert_array_equal(tgt[w > 0], ids[rows, sel_pos])
  new = out[rows, sel_pos]
  frac_mask = np.mean(new == 103)
  frac_keep = np.mean(new == ids[rows, sel_pos])
  frac_rand = 1 - frac_mask - frac_keep
  assert abs(frac_mask - 0.8) < 0.02 and abs(frac_keep - 0.1) < 0.02 and abs(frac_rand - 0.1) < 0.02
  # Nothing outside the selected positions changed.
  changed = out != ids
  changed[rows, sel_pos] = False
  assert not changed.any()
  # Fresh masks from another key (the trainer folds the step number into the key).
  _, pos2, _, _ = masking.mask_tokens(jax.random.key(1), ids, mask, **SPECIAL)
  assert np.mean(np.asarray(pos2) != pos) > 0.5


def test_whole_word_masking_takes_whole_words():
  ids, mask, lengths = _random_batch(b=256, l=64, seed=3)
  rng = np.random.default_rng(0)
  word_start = (rng.random(ids.shape) < 0.5).astype(np.int8)  # words of ~2 pieces
  out, pos, tgt, w = masking.mask_tokens(jax.random.key(0), ids, mask, word_start,
                                         whole_word=True, **SPECIAL)
  pos, w = np.asarray(pos), np.asarray(w)
  partial = 0
  for i in range(len(ids)):
    n = lengths[i]
    starts = word_start[i].astype(bool).copy()
    starts[0] = starts[n - 1] = True  # [CLS] and [SEP] are words of their own
    word_id = np.cumsum(starts[:n])
    chosen = np.zeros(n, bool)
    chosen[pos[i][w[i] > 0]] = True
    for wid in np.unique(word_id[chosen]):
      members = chosen[word_id == wid]
      partial += not members.all()
  # Only the last chosen word of a sequence may be cut by the exact per-sequence count.
  assert partial <= len(ids)
  with pytest.raises(ValueError, match="word_start"):
    masking.mask_tokens(jax.random.key(0), ids, mask, whole_word=True, **SPECIAL)


def test_masked_position_logits_equal_full_logits():
  cfg = get_config("tiny")
  model = SqueezeBert(cfg, head="pretraining", rngs=nnx.Rngs(params=0))
  ids, mask, _ = _random_batch(b=4, l=16)
  ids = ids % cfg.vocab_size
  pos = np.array([[1, 3, 5], [2, 2, 7], [0, 4, 9], [10, 11, 12]])
  full = model(ids, mask).logits
  part = model(ids, mask, masked_positions=pos).logits
  np.testing.assert_allclose(np.asarray(part), np.take_along_axis(
      np.asarray(full), pos[..., None], axis=1), atol=1e-6)


# ------------------------------------------------------------------------------- LAMB

@pytest.mark.slow  # accumulation == full batch: test_grad_accumulation_matches_full_batch (the
# same step code); LAMB runs in test_pretrain_end_to_end_and_hf_export
def test_lamb_accumulation_matches_full_batch():
  cfg = runlocal(optimizer="lamb", model__hidden_dropout_prob=0.0,
                 model__attention_probs_dropout_prob=0.0)
  batch, mesh = random_batch(seed=2), Mesh()
  full = one_step(cfg, mesh, batch, grad_accum=1)
  assert_same_update(full, one_step(cfg, mesh, batch, grad_accum=4))
  adamw = one_step(runlocal(model__hidden_dropout_prob=0.0,
                             model__attention_probs_dropout_prob=0.0), mesh, batch)
  k = "['classifier']['kernel']"
  assert not np.allclose(full[1][k], adamw[1][k])  # LAMB's trust ratio really changes the step


# ------------------------------------------------------------------------------- end to end

def _pretrain_cfg(corpus_dir, tmp_path, **over):
  cfg = config("pretrain", "recipe=runlocal")
  cfg.data.corpus_dir = str(corpus_dir)
  cfg.data.tfds_data_dir = str(tmp_path / "tfds")
  for k, v in over.items():
    node, _, name = k.rpartition("__")
    (cfg[node] if node else cfg)[name] = v
  return cfg


@pytest.mark.heavy
def test_pretrain_end_to_end_and_hf_export(corpus_dir, tmp_path):
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  cfg = _pretrain_cfg(corpus_dir, tmp_path, num_train_steps=6, eval_every_steps=3,
                      pretrain__whole_word=True)
  workdir = tmp_path / "run"
  result = trainer.train_and_evaluate(cfg, str(workdir))
  for k in ("mlm_loss", "perplexity", "mlm_accuracy", "sop_accuracy"):
    assert np.isfinite(result[k]), k
  assert result["perplexity"] == pytest.approx(np.exp(result["mlm_loss"]), rel=1e-5)
  train_rows = [r for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "train"]
  assert {"mlm_loss", "mlm_accuracy", "sop_accuracy", "sop_loss"} <= set(train_rows[-1])
  model = load.from_pretrained(str(workdir), head="mlm")
  out_dir = tmp_path / "hf"
  convert.export_hf(model, str(out_dir))
  hf = transformers.SqueezeBertForMaskedLM.from_pretrained(str(out_dir)).eval()
  ids, mask, _ = _random_batch(b=2, l=20)
  ids = np.where(mask > 0, ids % 30522, 0).astype(np.int64)
  ours = np.asarray(model(ids, mask).logits)
  with torch.no_grad():
    theirs = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
  valid = mask.astype(bool)
  assert np.abs(ours[valid] - theirs[valid]).max() < 1e-4


@pytest.mark.heavy
def test_pretrain_from_prepared_shards(corpus_dir, tmp_path, monkeypatch, caplog):
  """data.prepared_dir: the run reads shards from python -m squeezebert.data.prepare (no
  corpus needed), a process's share by index; a run they do not fit is refused up front."""
  out = tmp_path / "prepared"
  prepare.prepare(str(out), corpus_dir=str(corpus_dir), data_dir=str(tmp_path / "tfds"),
                  num_shards=4, max_len=64)
  cfg = _pretrain_cfg("", tmp_path, num_train_steps=2, eval_every_steps=2,
                      data__prepared_dir=str(out), data__tfds_data_dir="")
  task = PretrainTask(cfg)
  assert task.check_data().startswith(f"prepared shards {out}")
  limit = cfg.data.train_limit
  for shard, (index, count) in ((None, (0, 1)), ((1, 2), (1, 2))):
    got = task.load("train", shard)
    want = prepared.load_prepared(str(out), "train", index, count, limit=limit)
    assert len(got) > 0
    np.testing.assert_array_equal(got.idx, want.idx)
    np.testing.assert_array_equal(got.input_ids, want.input_ids)
  # The first `limit` documents, as the corpus path reads them: sequences of document >= limit
  # are left out.
  assert len(task.load("train")) < len(prepared.load_prepared(str(out), "train"))
  assert len(task.load("validation")) > 0
  result = trainer.train_and_evaluate(cfg, str(tmp_path / "run"))
  for k in ("mlm_loss", "perplexity", "sop_accuracy"):
    assert np.isfinite(result[k]), k
  rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["split"] == "train"]
  assert rows and all(np.isfinite(r["loss"]) for r in rows)
  bad = _pretrain_cfg("", tmp_path, data__prepared_dir=str(out), data__max_len=32,
                      data__bucket_boundaries=(32,))
  with pytest.raises(ValueError, match="packed to max_len=64 but the run uses max_len=32"):
    trainer.train_and_evaluate(bad, str(tmp_path / "w_bad"))
  assert not (tmp_path / "w_bad").exists()
  with pytest.raises(ValueError, match="4 shards per split, too few to read as 8"):
    task.load("train", (0, 8))
  # Without prepared data, a multi-process run says each process packs its share itself.
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  corpus_cfg = _pretrain_cfg(corpus_dir, tmp_path)
  with caplog.at_level("WARNING"):
    assert len(PretrainTask(corpus_cfg).load("train", (0, 2))) > 0
  assert "--config.data.prepared_dir" in caplog.text


def test_pretrain_bad_config(corpus_dir, tmp_path):
  cfg = _pretrain_cfg(corpus_dir, tmp_path, pretrain__mask_prob=1.5)
  with pytest.raises(ValueError, match="mask_prob"):
    trainer.train_and_evaluate(cfg, str(tmp_path / "w1"))
  cfg = _pretrain_cfg(corpus_dir, tmp_path, pretrain__mlm_weight=-1.0)
  with pytest.raises(ValueError, match="mlm_weight must be >= 0"):
    trainer.train_and_evaluate(cfg, str(tmp_path / "w3"))
  cfg = _pretrain_cfg(corpus_dir, tmp_path, pretrain__mlm_weight=0.0, pretrain__sop_weight=0.0)
  with pytest.raises(ValueError, match="nothing to train on"):
    trainer.train_and_evaluate(cfg, str(tmp_path / "w4"))
  assert not (tmp_path / "w3").exists() and not (tmp_path / "w4").exists()
  cfg = _pretrain_cfg(tmp_path / "nope", tmp_path)
  with pytest.raises(FileNotFoundError, match="corpus_dir"):
    trainer.train_and_evaluate(cfg, str(tmp_path / "w2"))
  with pytest.raises(ValueError, match="recipe"):
    config("pretrain", "recipe=huge")


@pytest.mark.heavy
def test_pretrain_hidden_state_distillation_from_a_plain_encoder(corpus_dir, tmp_path):
  """alpha=0, hidden_weight>0: a teacher with no MLM head (a plain encoder, like the MiniLM
  checkpoint) guides pretraining through its hidden states, reading the unmasked text."""
  teacher_dir = tmp_path / "teacher"
  cfg = _pretrain_cfg(corpus_dir, tmp_path)
  tcfg = get_config(cfg.model.variant, vocab_size=cfg.model.vocab_size,
                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  convert.save_pretrained(SqueezeBert(tcfg, head="base", rngs=nnx.Rngs(params=5)),
                          str(teacher_dir))
  # The student starts as an exact copy of the teacher's encoder, without dropout: had the
  # teacher read the student's masked input, the first step's hidden loss would be exactly 0.
  # mlm_weight=0: the MLM term is off (TinyBERT-style general distillation, SOP kept).
  cfg = _pretrain_cfg(corpus_dir, tmp_path, num_train_steps=3, eval_every_steps=3,
                      init_from=str(teacher_dir), distill__teacher=str(teacher_dir),
                      distill__alpha=0.0, distill__hidden_weight=2.0, pretrain__mlm_weight=0.0,
                      model__hidden_dropout_prob=0.0, model__attention_probs_dropout_prob=0.0)
  result = trainer.train_and_evaluate(cfg, str(tmp_path / "run"))
  rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["split"] == "train"]
  assert rows[0]["step"] == 1 and rows[0]["hidden_loss"] > 1e-4
  for r in rows:
    assert "kd_loss" not in r
    assert r["mlm_loss"] > 1.0  # still measured, not trained on
    assert r["task_loss"] == pytest.approx(r["sop_loss"], rel=1e-5)
    assert r["loss"] == pytest.approx(r["task_loss"] + 2.0 * r["hidden_loss"], rel=1e-4)
  run = json.loads((tmp_path / "run" / "run.json").read_text())
  # The untrained MLM head's perplexity picks no checkpoint: the latest ones are kept, and
  # the latest is what loading the workdir uses.
  assert run["best_metric"] is None
  assert result["best_step"] == 3 and result["best_metrics"] == {}
  # Teacher and student widths are equal: no projection is made.
  assert "distill_projection" not in run
  assert surgery.projection_of(load.from_pretrained(str(tmp_path / "run"))) is None


def test_init_from_warns_about_inherited_dropout():
  """A pretraining run without dropout hands 0.0 to its fine-tunes unless they set it."""
  inherited_dropout_note = setup_lib.inherited_dropout_note
  no_drop = get_config("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  note = inherited_dropout_note(no_drop, {})
  assert "hidden_dropout_prob=0.0" in note and "attention_probs_dropout_prob=0.0" in note
  note = inherited_dropout_note(no_drop, {"hidden_dropout_prob": 0.1})
  assert "hidden_dropout_prob" not in note and "attention_probs_dropout_prob=0.0" in note
  assert inherited_dropout_note(no_drop, {"hidden_dropout_prob": 0.1,
                                          "attention_probs_dropout_prob": 0.1}) is None
  assert inherited_dropout_note(get_config("tiny"), {}) is None
