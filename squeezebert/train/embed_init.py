"""Word-embedding initialisation for a fresh model: two closed-form ways to give the embedding
table knowledge before gradient training starts.

  ppmi     count-based pretraining on a token corpus: the positive PMI matrix of windowed
           co-occurrences (1/distance weights, context counts smoothed by ^0.75), factorised by
           truncated SVD; rows are U * sqrt(S) (Levy, Goldberg & Dagan 2015). The 29M-token
           local corpus takes 52 s on 2 CPU cores, where MLM pretraining sees ~5M tokens in
           35 minutes.
  teacher  embedding-layer distillation from a teacher with the same vocabulary: TinyBERT's
           loss ||E_student W - E_teacher||^2 over the whole table, minimised in closed form
           (rank-H truncated SVD of the teacher's table: E_student = U S, W = V^T).

Either way the rows are L2-normalised and scaled to the norm the default initialiser gives
(std * sqrt(H)), so the rest of the network sees inputs of the usual size. Tokens the corpus
barely covers keep their random init. The result is one of our model directories; use it as
`--config.init_from` for pretraining or fine-tuning.

  python -m squeezebert.train.embed_init --method=ppmi --variant=squeezebert-small \
      --packed=W/tfds/squeezebert_cache/sop-<hash>.npz --out=W/ppmi_init
  python -m squeezebert.train.embed_init --method=teacher --variant=squeezebert-small \
      --teacher=W/sst2_minilm --out=W/teacher_init
"""

from __future__ import annotations

import os
import time

import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx
from scipy import sparse
from sklearn.utils.extmath import randomized_svd

from squeezebert import load
from squeezebert.convert import ours
from squeezebert.model import SqueezeBert, get_config

FIRST_ORDINARY_ID = 999  # bert-base-uncased: 0 [PAD], 1-998 [unused*], 100-103 specials


def cooccurrence(ids_NxL: np.ndarray, lengths_N: np.ndarray, vocab_size: int, window: int = 5,
                 min_id: int = FIRST_ORDINARY_ID) -> sparse.csr_matrix:
  """Symmetric co-occurrence counts within `window` tokens, weighted 1/distance; pairs that
  involve a special/padding id (< min_id) or fall past a row's length are skipped."""
  if window < 1:
    raise ValueError(f"window must be >= 1, got {window}")
  ids_NxL = np.asarray(ids_NxL)
  pos = np.arange(ids_NxL.shape[1])[None, :]
  real = (pos < np.asarray(lengths_N)[:, None]) & (ids_NxL >= min_id)
  total = sparse.csr_matrix((vocab_size, vocab_size), dtype=np.float64)
  for d in range(1, window + 1):
    ok = real[:, :-d] & real[:, d:]
    a, b = ids_NxL[:, :-d][ok], ids_NxL[:, d:][ok]
    w = np.full(a.shape, 1.0 / d)
    total = total + sparse.coo_matrix((w, (a, b)), shape=(vocab_size, vocab_size)).tocsr()
  return (total + total.T).tocsr()


def ppmi(counts: sparse.csr_matrix, alpha: float = 0.75) -> sparse.csr_matrix:
  """Positive PMI with context-distribution smoothing."""
  c = counts.tocoo()  # log(C Σc^a / (row * col^a)): N cancels between P(w,c), P(w), P_a(c)
  row = np.asarray(counts.sum(1)).ravel()
  col = np.asarray(counts.sum(0)).ravel() ** alpha
  pmi = np.log(c.data * col.sum() / (row[c.row] * col[c.col]))
  keep = pmi > 0
  return sparse.csr_matrix((pmi[keep], (c.row[keep], c.col[keep])), shape=counts.shape)


def _normalise(vec_VxH: np.ndarray, std: float) -> np.ndarray:
  norm = np.linalg.norm(vec_VxH, axis=1, keepdims=True)
  return vec_VxH / np.maximum(norm, 1e-12) * (std * np.sqrt(vec_VxH.shape[1]))


def ppmi_embeddings(ids_NxL, lengths_N, vocab_size: int, dim: int, *, window: int = 5,
                    min_count: float = 20.0, std: float = 0.02, seed: int = 0):
  """(table [V, dim] float32, covered [V] bool): SVD-PPMI rows for tokens with at least
  `min_count` weighted co-occurrences."""
  t0 = time.time()
  counts = cooccurrence(ids_NxL, lengths_N, vocab_size, window)
  if counts.nnz == 0:
    raise ValueError("no co-occurring ordinary tokens (ids >= %d) in the packed data: empty or "
                     "all-special corpus?" % FIRST_ORDINARY_ID)
  covered = np.asarray(counts.sum(1)).ravel() >= min_count
  m = ppmi(counts)
  logging.info("co-occurrence: %d nonzeros, %d/%d tokens covered (%.0fs)", m.nnz,
               covered.sum(), vocab_size, time.time() - t0)
  u, s, _ = randomized_svd(m, dim, n_iter=4, random_state=seed)
  logging.info("SVD to %d dims (%.0fs)", dim, time.time() - t0)
  return _normalise(u * np.sqrt(s), std).astype(np.float32), covered


def teacher_embeddings(teacher_VxT: np.ndarray, dim: int, std: float = 0.02):
  """(table [V, dim], projection [dim, T]): the minimiser of ||E W - E_teacher||^2 with
  E of width `dim` (truncated SVD), rows then normalised like `ppmi_embeddings`."""
  t = np.asarray(teacher_VxT, np.float64)
  if dim > min(t.shape):
    raise ValueError(f"student width {dim} exceeds the teacher table's rank bound {t.shape}")
  u, s, vt = np.linalg.svd(t, full_matrices=False)
  return _normalise(u[:, :dim] * s[:dim], std).astype(np.float32), vt[:dim]


def set_word_embeddings(model, table_VxH: np.ndarray, covered_V: np.ndarray | None = None):
  """Write rows of `table` into the model's word embeddings (all rows, or the covered ones)."""
  p = model.transformer.embeddings.word_embeddings
  old = np.asarray(p[...])
  if old.shape != table_VxH.shape:
    raise ValueError(f"embedding table {table_VxH.shape} does not fit the model's {old.shape} "
                     "(vocab size and embedding_size must match)")
  if covered_V is None:
    new = table_VxH
  else:
    new = old.copy()
    new[covered_V] = table_VxH[covered_V]
  p[...] = jnp.asarray(new, old.dtype)


def teacher_table(cfg, teacher_VxT: np.ndarray):
  """(table, covered) for a student of config `cfg` from a teacher's word-embedding table (the
  same vocabulary; the student's may be padded by < 64 rows, which keep their random init)."""
  t_table = np.asarray(teacher_VxT)
  n_t = t_table.shape[0]
  if not 0 <= cfg.vocab_size - n_t < 64:  # the same vocab, the student's padded (30522->30528)
    raise ValueError(f"teacher vocab {n_t} does not match student vocab {cfg.vocab_size} "
                     "(the student may only pad the teacher's vocab by < 64 rows)")
  rows, _ = teacher_embeddings(t_table, cfg.embedding_size, std=cfg.initializer_range)
  table = np.zeros((cfg.vocab_size, cfg.embedding_size), np.float32)
  table[:n_t] = rows
  return table, np.arange(cfg.vocab_size) < n_t


def from_teacher(cfg, teacher: str):
  """`teacher_table` from the checkpoint at `teacher` (any format load.from_pretrained
  reads)."""
  if not teacher:
    raise ValueError("embedding init from a teacher needs a teacher checkpoint directory")
  t = load.from_pretrained(teacher)
  return teacher_table(cfg, t.transformer.embeddings.word_embeddings[...])


def build(method: str, variant: str, out: str, *, packed: str = "", teacher: str = "",
          window: int = 5, min_count: float = 20.0, seed: int = 0) -> str:
  """A fresh `variant` model (seed `seed`) with initialised word embeddings, saved to `out`."""
  cfg = get_config(variant)
  model = SqueezeBert(cfg, head="base", num_labels=2, rngs=nnx.Rngs(params=seed))
  std = cfg.initializer_range
  if method == "ppmi":
    if not packed or not os.path.exists(packed):
      raise FileNotFoundError(f"--packed={packed!r}: need the packed pretraining .npz "
                              "(written by a task=pretrain run under its cache_dir)")
    with np.load(packed) as z:
      if "input_ids" not in z.files or "lengths" not in z.files:
        raise ValueError(f"{packed}: not a packed pretraining file (needs input_ids, lengths)")
      ids, lengths = z["input_ids"], z["lengths"]
    table, covered = ppmi_embeddings(ids, lengths, cfg.vocab_size, cfg.embedding_size,
                                     window=window, min_count=min_count, std=std, seed=seed)
    extra = dict(embed_init=dict(method="ppmi", packed=os.path.abspath(packed), window=window,
                                 min_count=min_count, covered=int(covered.sum())))
  elif method == "teacher":
    table, covered = from_teacher(cfg, teacher)
    extra = dict(embed_init=dict(method="teacher", teacher=os.path.abspath(teacher)))
  else:
    raise ValueError(f"unknown --method={method!r}; known: ppmi, teacher")
  set_word_embeddings(model, table, covered)
  ours.save_pretrained(model, out, extra=extra)
  logging.info("wrote %s", out)
  return out


def main(argv):
  del argv
  f = flags.FLAGS
  build(f.method, f.variant, f.out, packed=f.packed, teacher=f.teacher, window=f.window,
        min_count=f.min_count, seed=f.seed)


if __name__ == "__main__":
  flags.DEFINE_enum("method", "ppmi", ["ppmi", "teacher"], "how to initialise the embeddings")
  flags.DEFINE_string("variant", "squeezebert-small", "model preset")
  flags.DEFINE_string("out", None, "output model directory", required=True)
  flags.DEFINE_string("packed", "", "ppmi: packed pretraining .npz (input_ids, lengths)")
  flags.DEFINE_string("teacher", "", "teacher: checkpoint dir with the same vocabulary")
  flags.DEFINE_integer("window", 5, "ppmi: co-occurrence window")
  flags.DEFINE_float("min_count", 20.0, "ppmi: min weighted co-occurrence count of a row")
  flags.DEFINE_integer("seed", 0, "model init seed")
  app.run(main)
