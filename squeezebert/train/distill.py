"""Knowledge distillation: a frozen teacher of our family inside the jitted train step.

loss = (1 - alpha) * task_loss + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))
       + hidden_weight * MSE(student hidden states, teacher hidden states)
(Hinton et al. 2015; the T^2 keeps gradient scale independent of T.) For regression heads the
logit term is the MSE between student and teacher predictions. For MLM the KL runs over the
masked positions only. Hidden-state transfer maps student layer i (of n) to teacher layer
round(i * m / n) (embeddings = layer 0) and needs equal widths.

The teacher is any checkpoint `convert.from_pretrained` reads (HF dir such as the MiniLM one,
our model dir, a training workdir) with the student's head and label count. Its state is an
argument of the jitted step, so it is neither a compile-time constant nor differentiated.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx

from squeezebert import convert


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  alpha: float = 0.5          # weight of the teacher term; 1 - alpha on the task loss
  temperature: float = 2.0
  hidden_weight: float = 0.0  # >0: MSE between mapped hidden states (equal widths only)

  def __post_init__(self):
    if not 0.0 <= self.alpha <= 1.0:
      raise ValueError(f"distill.alpha must be in [0, 1], got {self.alpha}")
    if not self.temperature > 0:
      raise ValueError(f"distill.temperature must be > 0, got {self.temperature}")
    if self.hidden_weight < 0:
      raise ValueError(f"distill.hidden_weight must be >= 0, got {self.hidden_weight}")


def soft_cross_entropy_kl(student_logits, teacher_logits, temperature: float):
  """T^2 * KL(p_teacher || p_student) over the last axis, per row (float32)."""
  t = temperature
  s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t, axis=-1)
  tl = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / t, axis=-1)
  return (t * t) * jnp.sum(jnp.exp(tl) * (tl - s), axis=-1)


def layer_map(n_student: int, n_teacher: int) -> list[int]:
  """Teacher hidden-state index for each student hidden state (index 0 = embeddings)."""
  return [round(i * n_teacher / n_student) for i in range(n_student + 1)]


def _weighted_mean(x, w):
  return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)


def distill_terms(cfg: DistillConfig, head: str, student_out, teacher_out, batch) -> dict:
  """The teacher terms (unweighted) for one batch."""
  w = batch["example_weight"]
  if head == "regression":
    kd = _weighted_mean(jnp.square(student_out.logits[:, 0].astype(jnp.float32)
                                   - teacher_out.logits[:, 0].astype(jnp.float32)), w)
  elif head in ("mlm", "pretraining"):
    kd = _weighted_mean(soft_cross_entropy_kl(student_out.logits, teacher_out.logits,
                                              cfg.temperature), batch["mlm_weights"])
  elif head in ("classification", "multiple_choice"):
    kd = _weighted_mean(soft_cross_entropy_kl(student_out.logits, teacher_out.logits,
                                              cfg.temperature), w)
  else:
    raise ValueError(f"logit distillation is not defined for head {head!r}")
  terms = {"kd_loss": kd}
  if cfg.hidden_weight > 0:
    hs, ht = student_out.hidden_states, teacher_out.hidden_states
    mask = batch["attention_mask"].astype(jnp.float32)[..., None]
    per = [jnp.sum(jnp.square(hs[i].astype(jnp.float32) - ht[j].astype(jnp.float32)) * mask)
           / jnp.maximum(jnp.sum(mask) * hs[i].shape[-1], 1.0)
           for i, j in enumerate(layer_map(len(hs) - 1, len(ht) - 1))]
    terms["hidden_loss"] = sum(per) / len(per)
  return terms


def combine(cfg: DistillConfig, task_loss, terms: dict):
  total = (1.0 - cfg.alpha) * task_loss + cfg.alpha * terms["kd_loss"]
  if "hidden_loss" in terms:
    total = total + cfg.hidden_weight * terms["hidden_loss"]
  return total


class Teacher:
  """A frozen teacher: graphdef + state, called inside the student's jitted step."""

  def __init__(self, path: str, head: str, num_labels: int, student_cfg, dtype: str,
               hidden_weight: float = 0.0):
    model = convert.from_pretrained(path, dtype=dtype)  # the teacher's own head
    if model.head != head or (head not in ("regression", "mlm", "pretraining")
                              and model.num_labels != num_labels):
      raise ValueError(
          f"teacher {path} has head {model.head!r} with {model.num_labels} labels; the student "
          f"needs {head!r} with {num_labels}: fine-tune the teacher on the task first")
    if head in ("mlm", "pretraining") and model.config.vocab_size != student_cfg.vocab_size:
      raise ValueError(f"MLM distillation needs equal vocabularies: teacher "
                       f"{model.config.vocab_size}, student {student_cfg.vocab_size}")
    if hidden_weight > 0 and model.config.hidden_size != student_cfg.hidden_size:
      raise ValueError(f"hidden-state transfer needs equal widths: teacher "
                       f"{model.config.hidden_size}, student {student_cfg.hidden_size}")
    self.path, self.model = path, model
    self.graphdef, self.state = nnx.split(model)
    logging.info("teacher %s: %s, %d layers, hidden %d", path, model.head,
                 model.config.num_hidden_layers, model.config.hidden_size)

  def __call__(self, state, inputs: tuple, kwargs: dict, output_hidden_states: bool):
    model = nnx.merge(self.graphdef, state)
    out = model(*inputs, deterministic=True, output_hidden_states=output_hidden_states,
                **kwargs)
    return jax.tree.map(jax.lax.stop_gradient, out)
