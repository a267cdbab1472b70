"""Closed-form embedding initialisation (squeezebert.train.embed_init): co-occurrence counts, PPMI,
SVD embeddings that group co-occurring tokens, TinyBERT's embedding loss minimised over the
whole table, and the model directory the CLI writes."""

import numpy as np
import pytest
from flax import nnx

from squeezebert import convert, load
from squeezebert.train import embed_init
from squeezebert.model import SqueezeBert, get_config

V = 1010  # ids >= 999 are ordinary tokens


def test_cooccurrence_counts_by_hand():
  ids = np.array([[101, 999, 1000, 1001, 102, 1002], [999, 1000, 0, 0, 0, 0]])
  c = embed_init.cooccurrence(ids, np.array([5, 2]), V, window=2).toarray()
  # row 0: 999-1000 (d1), 1000-1001 (d1), 999-1001 (d2); [CLS]/[SEP] and the token past the
  # length (1002) make no pairs. Row 1: 999-1000 (d1).
  assert c[999, 1000] == c[1000, 999] == 2.0
  assert c[1000, 1001] == 1.0 and c[999, 1001] == c[1001, 999] == 0.5
  assert c[:, 1002].sum() == 0 and c[101].sum() == 0 and c[102].sum() == 0
  assert c.sum() == 2 * (2 + 1 + 0.5)
  with pytest.raises(ValueError, match="window"):
    embed_init.cooccurrence(ids, np.array([5, 2]), V, window=0)


def test_ppmi_by_hand():
  from scipy import sparse
  c = np.array([[10, 1, 2], [1, 10, 0], [2, 0, 3]], np.float64)
  for alpha in (1.0, 0.75):
    m = embed_init.ppmi(sparse.csr_matrix(c), alpha=alpha).toarray()
    row, col = c.sum(1), c.sum(0) ** alpha
    with np.errstate(divide="ignore"):
      want = np.maximum(np.log(c * col.sum() / np.outer(row, col)), 0)
    np.testing.assert_allclose(m, want, rtol=1e-12)
    assert m[0, 1] == 0 and m[0, 0] > 0  # a negative PMI is clipped, a positive one kept


def test_ppmi_embeddings_group_cooccurring_tokens():
  rng = np.random.default_rng(0)
  a, b = np.arange(999, 1004), np.arange(1004, 1009)  # two topics that never mix in a row
  rows = [rng.choice(a if i % 2 else b, 16) for i in range(400)]
  ids = np.stack(rows)
  table, covered = embed_init.ppmi_embeddings(ids, np.full(len(ids), 16), V, 4, window=3,
                                              min_count=1.0)
  assert covered[999:1009].all() and not covered[:999].any()
  unit = table[999:1009] / np.linalg.norm(table[999:1009], axis=1, keepdims=True)
  sim = unit @ unit.T
  within = (sim[:5, :5].sum() + sim[5:, 5:].sum() - 10) / 40
  across = sim[:5, 5:].mean()
  assert within > across + 0.5, (within, across)
  np.testing.assert_allclose(np.linalg.norm(table[999:1009], axis=1), 0.02 * np.sqrt(4),
                             rtol=1e-5)
  with pytest.raises(ValueError, match="no co-occurring"):
    embed_init.ppmi_embeddings(np.full((2, 4), 101), np.full(2, 4), V, 4)


def test_teacher_embeddings_minimise_tinybert_loss():
  rng = np.random.default_rng(1)
  t = rng.normal(size=(60, 3)) @ rng.normal(size=(3, 8))  # rank-3 teacher table, width 8
  table, proj = embed_init.teacher_embeddings(t, 3)
  assert table.shape == (60, 3) and proj.shape == (3, 8)
  np.testing.assert_allclose(proj @ proj.T, np.eye(3), atol=1e-10)
  # At the teacher's rank the loss reaches 0 up to the row scaling: each teacher row is
  # parallel to its student row mapped through the projection.
  mapped = table @ proj
  cos = np.sum(mapped * t, 1) / (np.linalg.norm(mapped, axis=1) * np.linalg.norm(t, axis=1))
  np.testing.assert_allclose(cos, 1.0, atol=1e-5)
  with pytest.raises(ValueError, match="exceeds"):
    embed_init.teacher_embeddings(t, 9)


def test_build_teacher_init_and_errors(tmp_path):
  cfg = get_config("tiny")
  teacher = SqueezeBert(cfg, head="base", num_labels=2, rngs=nnx.Rngs(params=3))
  tdir = convert.save_pretrained(teacher, str(tmp_path / "teacher"))
  out = embed_init.build("teacher", "tiny", str(tmp_path / "init"), teacher=tdir, seed=5)
  m = load.from_pretrained(out, head="classification", num_labels=2)
  got = np.asarray(m.transformer.embeddings.word_embeddings[...])
  want, _ = embed_init.teacher_embeddings(
      np.asarray(teacher.transformer.embeddings.word_embeddings[...]), cfg.embedding_size)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  fresh = SqueezeBert(cfg, head="base", num_labels=2, rngs=nnx.Rngs(params=5))
  np.testing.assert_array_equal(  # everything but the word embeddings is the seed's init
      np.asarray(m.transformer.embeddings.position_embeddings[...]),
      np.asarray(fresh.transformer.embeddings.position_embeddings[...]))
  with pytest.raises(ValueError, match="unknown --method"):
    embed_init.build("glove", "tiny", str(tmp_path / "x"))
  with pytest.raises(FileNotFoundError, match="packed"):
    embed_init.build("ppmi", "tiny", str(tmp_path / "x"), packed=str(tmp_path / "none.npz"))
  with pytest.raises(ValueError, match="teacher vocab"):
    embed_init.build("teacher", "squeezebert-small", str(tmp_path / "x"), teacher=tdir)
  with pytest.raises(ValueError, match="does not fit"):
    embed_init.set_word_embeddings(m, np.zeros((3, 3), np.float32))
