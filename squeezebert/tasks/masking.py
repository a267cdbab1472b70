"""BERT masking inside the jitted step: fresh masks every step, reproducible from (seed, step).

Per sequence, exactly round(mask_prob * #maskable) tokens (at least 1, at most P) are chosen,
as in BERT's create_pretraining_data.py; of those 80% become [MASK], 10% a random token and
10% stay unchanged. With whole_word=True every piece of a word shares its word's random score,
so words are chosen whole. Outputs are fixed-shape [B, P] (P = max_predictions) position lists,
so the MLM head projects only P positions per sequence onto the vocabulary.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def max_predictions(seq_len: int, mask_prob: float) -> int:
  return max(1, math.ceil(seq_len * mask_prob))


def mask_tokens(rng, ids_BxL, attention_mask_BxL, word_start_BxL=None, *, mask_id: int,
                special_ids, vocab_size: int, mask_prob: float = 0.15,
                max_predictions_per_seq: int | None = None, whole_word: bool = False,
                random_token_min_id: int = 0):
  """Returns (masked_ids [B, L], positions [B, P], target_ids [B, P], weights [B, P])."""
  ids_BxL = jnp.asarray(ids_BxL)
  b, l = ids_BxL.shape
  p = max_predictions_per_seq or max_predictions(l, mask_prob)
  p = min(p, l)
  k_score, k_kind, k_rand = jax.random.split(rng, 3)
  special = jnp.isin(ids_BxL, jnp.asarray(special_ids, ids_BxL.dtype))
  maskable = (attention_mask_BxL > 0) & ~special
  score = jax.random.uniform(k_score, (b, l))
  if whole_word:
    if word_start_BxL is None:
      raise ValueError("whole-word masking needs word_start (1 where a word begins)")
    pos = jnp.arange(l)[None, :]
    starts = (word_start_BxL > 0) | special
    start_pos = jax.lax.cummax(jnp.where(starts, pos, 0), axis=1)
    score = jnp.take_along_axis(score, start_pos, axis=1)
    # Ties inside a word are broken by position so the first piece ranks first.
    score = score + pos * 1e-7
  score = jnp.where(maskable, score, 2.0)  # non-maskable tokens sort last
  n_maskable = jnp.sum(maskable, axis=1)
  n_pred = jnp.clip(jnp.round(n_maskable * mask_prob), 1, p).astype(jnp.int32)
  n_pred = jnp.minimum(n_pred, n_maskable)
  _, positions_BxP = jax.lax.top_k(-score, p)
  weights_BxP = (jnp.arange(p)[None, :] < n_pred[:, None]).astype(jnp.float32)
  target_BxP = jnp.take_along_axis(ids_BxL, positions_BxP, axis=1)

  u = jax.random.uniform(k_kind, (b, p))
  rand_ids = jax.random.randint(k_rand, (b, p), random_token_min_id, vocab_size,
                                dtype=ids_BxL.dtype)
  new_BxP = jnp.where(u < 0.8, jnp.asarray(mask_id, ids_BxL.dtype),
                      jnp.where(u < 0.9, rand_ids, target_BxP))
  new_BxP = jnp.where(weights_BxP > 0, new_BxP, target_BxP)
  rows = jnp.arange(b)[:, None]
  masked_ids = ids_BxL.at[rows, positions_BxP].set(new_BxP)
  return masked_ids, positions_BxP, target_BxP, weights_BxP
