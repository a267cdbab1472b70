"""HotFlip-style gradient-guided token substitution (Ebrahimi et al., 2018) on a classifier.

For each example, up to `budget` greedy flips: the gradient g of the loss w.r.t. the input
word embeddings ranks every (position i, token v) by the first-order loss increase
g_i . (W_v - W_{x_i}); the best one is applied, the model re-run, and the attack stops as soon
as the prediction changes. Special tokens ([CLS], [SEP], padding) are never replaced and never
inserted ([UNK], [MASK] and [unusedN] are excluded as substitutes too); a position is flipped at
most once. Gradients come from `grad_model` (float); success is judged on `eval_model`
(default the same; pass an int8 model to attack it by transfer from its float source).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def excluded_tokens(vocab: dict[str, int], size: int) -> np.ndarray:
  """[V] bool: tokens an attack may not insert (specials, [unusedN], ids beyond the vocab)."""
  bad = np.zeros((size,), bool)
  for tok, i in vocab.items():
    if i < size and (tok.startswith("[") and tok.endswith("]")):
      bad[i] = True
  bad[len(vocab):] = True  # padded vocab rows (e.g. 30528 vs 30522)
  return bad


class HotFlip:
  def __init__(self, grad_model, eval_model=None, *, special_ids, excluded):
    if grad_model.head != "classification":
      raise ValueError(f"HotFlip attacks classifiers; this model's head is {grad_model.head!r}")
    self.special_ids = np.asarray(sorted(special_ids), np.int32)
    self.allowed_tok = jnp.asarray(~np.asarray(excluded))
    g_def, g_state = nnx.split(grad_model)
    e_def, e_state = nnx.split(eval_model if eval_model is not None else grad_model)
    self.g_state, self.e_state = g_state, e_state
    table = grad_model.transformer.embeddings.word_embeddings
    self.table = jnp.asarray(table[...], jnp.float32)

    @jax.jit
    def loss_grad(state, ids, mask, types, labels):
      model = nnx.merge(g_def, state)

      def f(emb):
        out = model(ids, mask, types, inputs_embeds=emb, deterministic=True)
        logp = jax.nn.log_softmax(out.logits.astype(jnp.float32))
        nll = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
        return nll.sum(), nll

      emb = jnp.take(self.table, ids, axis=0)
      (_, nll), g = jax.value_and_grad(f, has_aux=True)(emb)
      return nll, g

    @jax.jit
    def predict(state, ids, mask, types, labels):
      out = nnx.merge(e_def, state)(ids, mask, types, deterministic=True)
      logp = jax.nn.log_softmax(out.logits.astype(jnp.float32))
      nll = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
      return jnp.argmax(out.logits, -1), nll

    @jax.jit
    def best_flip(g_BxLxE, ids_BxL, allowed_pos_BxL):
      w = self.table
      cur = jnp.take(w, ids_BxL, axis=0)
      gain = (jnp.einsum("ble,ve->blv", g_BxLxE, w)
              - jnp.sum(g_BxLxE * cur, -1, keepdims=True))
      v = w.shape[0]
      ok = (allowed_pos_BxL[..., None] & self.allowed_tok[None, None, :]
            & (jnp.arange(v)[None, None, :] != ids_BxL[..., None]))
      gain = jnp.where(ok, gain, -jnp.inf).reshape(ids_BxL.shape[0], -1)
      j = jnp.argmax(gain, -1)
      return j // v, j % v, jnp.max(gain, -1)

    self._loss_grad, self._predict, self._best_flip = loss_grad, predict, best_flip

  def attack_batch(self, batch: dict, budget: int) -> dict:
    """Per-example arrays: correct (before), success (correct before, wrong after <= budget
    flips), flips used, loss before/after (eval model), the adversarial ids."""
    if budget < 1:
      raise ValueError(f"attack budget must be >= 1, got {budget}")
    ids = np.array(batch["input_ids"], np.int32)
    mask, types = batch["attention_mask"], batch["token_type_ids"]
    labels = np.asarray(batch["labels"], np.int32)
    real = np.asarray(batch["example_weight"]) > 0
    pred, loss0 = (np.asarray(x) for x in self._predict(self.e_state, ids, mask, types, labels))
    correct = (pred == labels) & real
    active = correct.copy()  # examples still being attacked
    flipped = np.zeros(ids.shape, bool)
    flips = np.zeros(len(ids), np.int32)
    movable = (np.asarray(mask) > 0) & ~np.isin(ids, self.special_ids)
    for _ in range(budget):
      if not active.any():
        break
      _, g = self._loss_grad(self.g_state, ids, mask, types, labels)
      allowed = movable & ~flipped & active[:, None]
      pos, tok, gain = (np.asarray(x) for x in self._best_flip(g, ids, allowed))
      do = active & np.isfinite(gain)
      rows = np.nonzero(do)[0]
      ids[rows, pos[rows]] = tok[rows]
      flipped[rows, pos[rows]] = True
      flips[rows] += 1
      pred, _ = (np.asarray(x) for x in self._predict(self.e_state, ids, mask, types, labels))
      active &= (pred == labels) & do
    pred, loss1 = (np.asarray(x) for x in self._predict(self.e_state, ids, mask, types, labels))
    return dict(correct=correct, success=correct & (pred != labels), flips=flips,
                loss_before=np.asarray(loss0), loss_after=np.asarray(loss1), real=real,
                adv_ids=ids)


def summarize(parts: list[dict]) -> dict:
  c = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "adv_ids"}
  real, correct, success = c["real"], c["correct"], c["success"]
  n, n_correct = int(real.sum()), int(correct.sum())
  return dict(
      examples=n, clean_accuracy=n_correct / max(n, 1),
      attack_success_rate=float(success.sum() / max(n_correct, 1)),
      accuracy_under_attack=float((correct & ~success).sum() / max(n, 1)),
      mean_flips_successful=float(c["flips"][success].mean()) if success.any() else None,
      mean_loss_before=float(c["loss_before"][real].mean()),
      mean_loss_after=float(c["loss_after"][real].mean()))
