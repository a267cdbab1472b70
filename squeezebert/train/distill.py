"""Knowledge distillation: a frozen teacher of our family inside the jitted train step.

loss = (1 - alpha) * task_loss + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))
       + hidden_weight * MSE(student hidden states, teacher hidden states)
(Hinton et al. 2015; the T^2 keeps gradient scale independent of T.) For regression heads the
logit term is the MSE between student and teacher predictions. For MLM the KL runs over the
masked positions only. Hidden-state transfer maps student layer i (of n) to teacher layer
round(i * m / n) (embeddings = layer 0); at unequal widths a learned projection (TinyBERT's
W_h: one [H_student, H_teacher] linear map shared by the layers) carries the student's states to
the teacher's width. It is trained with the student, lives on the model as
`distill_projection` while training (so it is checkpointed and resumes), and is dropped when the
model is loaded for use (`checkpoint.load_model_from_workdir`).
With alpha = 0 and hidden_weight > 0 (hidden states only) the teacher may have any head, e.g. a
plain HF encoder such as MiniLM as the teacher of MLM pretraining; for MLM tasks it then reads
the unmasked text (the student learns the teacher's clean representations from masked input).

The teacher is any checkpoint `load.from_pretrained` reads (HF dir such as the MiniLM one,
our model dir, a training workdir) with the student's head and label count. Its state is an
argument of the jitted step, so it is neither a compile-time constant nor differentiated.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx

from squeezebert import load


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  alpha: float = 0.5          # weight of the teacher term; 1 - alpha on the task loss
  temperature: float = 2.0
  hidden_weight: float = 0.0  # >0: MSE between mapped hidden states (learned projection at
                              # unequal widths)
  augment_prob: float = 0.0   # >0: the teacher terms also run on a corrupted copy of the batch
  augment_copies: int = 1     # corrupted copies per batch (each drawn independently)

  @property
  def hidden_only(self) -> bool:
    return self.alpha == 0.0 and self.hidden_weight > 0

  def __post_init__(self):
    if not 0.0 <= self.alpha <= 1.0:
      raise ValueError(f"distill.alpha must be in [0, 1], got {self.alpha}")
    if not self.temperature > 0:
      raise ValueError(f"distill.temperature must be > 0, got {self.temperature}")
    if self.hidden_weight < 0:
      raise ValueError(f"distill.hidden_weight must be >= 0, got {self.hidden_weight}")
    if not 0.0 <= self.augment_prob < 1.0:
      raise ValueError(f"distill.augment_prob must be in [0, 1), got {self.augment_prob}")
    if not (isinstance(self.augment_copies, int) and self.augment_copies >= 1):
      raise ValueError(f"distill.augment_copies must be an integer >= 1, got "
                       f"{self.augment_copies!r}")


def soft_cross_entropy_kl(student_logits, teacher_logits, temperature: float):
  """T^2 * KL(p_teacher || p_student) over the last axis, per row (float32)."""
  t = temperature
  s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t, axis=-1)
  tl = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / t, axis=-1)
  return (t * t) * jnp.sum(jnp.exp(tl) * (tl - s), axis=-1)


def augment_ids(rng, ids_BxL, attention_mask_BxL, *, prob: float, mask_id: int, special_ids,
                vocab_size: int, random_token_min_id: int = 0):
  """Transfer-set augmentation for distillation (Tang et al. 2019, TinyBERT): every real,
  non-special token is replaced with probability `prob`, by [MASK] or (equally likely) by a
  random ordinary token. The sentence keeps no label; the teacher labels it."""
  k_pick, k_kind, k_rand = jax.random.split(rng, 3)
  ids_BxL = jnp.asarray(ids_BxL)
  special = jnp.isin(ids_BxL, jnp.asarray(special_ids, ids_BxL.dtype))
  pick = ((attention_mask_BxL > 0) & ~special
          & (jax.random.uniform(k_pick, ids_BxL.shape) < prob))
  rand = jax.random.randint(k_rand, ids_BxL.shape, random_token_min_id, vocab_size,
                            dtype=ids_BxL.dtype)
  new = jnp.where(jax.random.bernoulli(k_kind, 0.5, ids_BxL.shape),
                  jnp.asarray(mask_id, ids_BxL.dtype), rand)
  return jnp.where(pick, new, ids_BxL)


def with_augmented_copy(batch: dict, *aug_ids_BxL) -> dict:
  """[batch; batch with input_ids = aug_ids_1; ...] along the batch axis ((1 + n) B rows; a
  padding row's copies keep weight 0). The student's one forward on it serves the task loss
  (first B rows) and the teacher terms (all rows)."""
  if not aug_ids_BxL:
    raise ValueError("with_augmented_copy needs at least one augmented input_ids array")
  b = batch["input_ids"].shape[0]
  n = 1 + len(aug_ids_BxL)
  out = {k: jnp.concatenate([v] * n) for k, v in batch.items()
         if hasattr(v, "shape") and v.ndim and v.shape[0] == b}
  out["input_ids"] = jnp.concatenate([batch["input_ids"], *aug_ids_BxL])
  return out


def first_rows(out, n: int):
  """The ModelOutput of the first n rows (the unaugmented batch)."""
  return jax.tree.map(lambda x: x[:n], out)


def layer_map(n_student: int, n_teacher: int) -> list[int]:
  """Teacher hidden-state index for each student hidden state (index 0 = embeddings)."""
  return [round(i * n_teacher / n_student) for i in range(n_student + 1)]


def _weighted_mean(x, w):
  return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)


def logit_term(cfg: DistillConfig, head: str, student_out, teacher_out, batch):
  """The teacher's output term: T^2 KL for class / choice / masked-token logits, MSE for
  regression."""
  w = batch["example_weight"]
  if head == "regression":
    return _weighted_mean(jnp.square(student_out.logits[:, 0].astype(jnp.float32)
                                     - teacher_out.logits[:, 0].astype(jnp.float32)), w)
  if head in ("mlm", "pretraining"):
    return _weighted_mean(soft_cross_entropy_kl(student_out.logits, teacher_out.logits,
                                                cfg.temperature), batch["mlm_weights"])
  if head in ("classification", "multiple_choice"):
    return _weighted_mean(soft_cross_entropy_kl(student_out.logits, teacher_out.logits,
                                                cfg.temperature), w)
  raise ValueError(f"logit distillation is not defined for head {head!r}")


def distill_terms(cfg: DistillConfig, head: str, student_out, teacher_out, batch,
                  projection=None) -> dict:
  """The teacher terms (unweighted) for one batch: kd_loss unless hidden-only, hidden_loss
  when hidden_weight > 0."""
  terms = {}
  if not cfg.hidden_only:
    terms["kd_loss"] = logit_term(cfg, head, student_out, teacher_out, batch)
  if cfg.hidden_weight > 0:
    terms["hidden_loss"] = hidden_mse(student_out.hidden_states, teacher_out.hidden_states,
                                      batch["attention_mask"], projection)
  return terms


def hidden_mse(hs, ht, attention_mask, projection=None):
  """Mean over the mapped layer pairs of the per-element MSE at real (unpadded) tokens."""
  if hs[0].shape[-1] != ht[0].shape[-1] and projection is None:
    raise ValueError(f"hidden widths differ (student {hs[0].shape[-1]}, teacher "
                     f"{ht[0].shape[-1]}) and the model has no distill projection")
  mask = attention_mask.astype(jnp.float32)[..., None]
  per = []
  for i, j in enumerate(layer_map(len(hs) - 1, len(ht) - 1)):
    s = hs[i].astype(jnp.float32) if projection is None else projection(hs[i])
    per.append(jnp.sum(jnp.square(s - ht[j].astype(jnp.float32)) * mask)
               / jnp.maximum(jnp.sum(mask) * s.shape[-1], 1.0))
  return sum(per) / len(per)


def combine(cfg: DistillConfig, task_loss, terms: dict):
  total = (1.0 - cfg.alpha) * task_loss
  if "kd_loss" in terms:
    total = total + cfg.alpha * terms["kd_loss"]
  if "hidden_loss" in terms:
    total = total + cfg.hidden_weight * terms["hidden_loss"]
  return total


class Teacher:
  """A frozen teacher: graphdef + state, called inside the student's jitted step."""

  def __init__(self, path: str, head: str, num_labels: int, student_cfg, dtype: str,
               cfg: DistillConfig):
    model = load.from_pretrained(path, dtype=dtype)  # the teacher's own head
    self.hidden_only = cfg.hidden_only
    if self.hidden_only:
      pass  # any head: only its hidden states are used
    elif model.head != head or (head not in ("regression", "mlm", "pretraining")
                                and model.num_labels != num_labels):
      raise ValueError(
          f"teacher {path} has head {model.head!r} with {model.num_labels} labels; the student "
          f"needs {head!r} with {num_labels}: fine-tune the teacher on the task first")
    if (not self.hidden_only and head in ("mlm", "pretraining")
        and model.config.vocab_size != student_cfg.vocab_size):
      raise ValueError(f"MLM distillation needs equal vocabularies: teacher "
                       f"{model.config.vocab_size}, student {student_cfg.vocab_size}")
    # (Hs, Ht) of the learned projection hidden-state transfer needs, else None.
    self.projection_shape = None
    if cfg.hidden_weight > 0 and model.config.hidden_size != student_cfg.hidden_size:
      self.projection_shape = (student_cfg.hidden_size, model.config.hidden_size)
    self.path, self.model = path, model
    self.graphdef, self.state = nnx.split(model)
    logging.info("teacher %s: %s, %d layers, hidden %d", path, model.head,
                 model.config.num_hidden_layers, model.config.hidden_size)

  def __call__(self, state, inputs: tuple, kwargs: dict, output_hidden_states: bool):
    model = nnx.merge(self.graphdef, state)
    if self.hidden_only:
      kwargs = {}  # e.g. masked_positions: meant for the student's MLM head
    out = model(*inputs, deterministic=True, output_hidden_states=output_hidden_states,
                **kwargs)
    return jax.tree.map(jax.lax.stop_gradient, out)
