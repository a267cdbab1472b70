"""Pure jitted steps: split the NNX (model, optimizer), jit a pure function of the state with the
state donated, merge inside."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from squeezebert.model import surgery
from squeezebert.tasks import MODEL_INPUTS
from squeezebert.train import distill
from squeezebert.train.mesh import fsdp_spec


def _prepare(task, batch, rng, train: bool):
  """Task-side in-step preprocessing (e.g. MLM masking) and extra model arguments."""
  if hasattr(task, "prepare"):
    batch = task.prepare(batch, rng, train)
  kwargs = task.model_kwargs(batch) if hasattr(task, "model_kwargs") else {}
  return batch, kwargs


def _forward(model, batch, rng, deterministic, kwargs, output_hidden_states=False):
  return model(*(batch[k] for k in MODEL_INPUTS), rngs=rng, deterministic=deterministic,
               output_hidden_states=output_hidden_states, **kwargs)


FINITE_CHECKS = ("cheap", "params")


def make_train_step(graphdef, task, lr_schedule, grad_accum_steps: int = 1, teacher=None,
                    distill_cfg=None, finite_check: str = "cheap", mesh=None):
  """(state, batch, base_rng, step_no[, teacher_state]) -> (state, metrics); gradients are
  averaged over `grad_accum_steps` micro-batches (one update). With a `distill.Teacher`, its
  frozen forward runs in the step and the loss mixes in the distillation terms.

  `mesh` (train.mesh.Mesh): the new state keeps the mesh's state sharding (FSDP), and with
  accumulation over several data-parallel groups each group's gradients stay on its devices
  through the micro-batch loop and are summed once after it: one all-reduce per update, not
  one per micro-batch. (Each group then draws its own dropout stream: runs with accumulation
  are exactly reproducible for the same number of data-parallel groups.)

  metrics["all_finite"] is the trainer's divergence check. finite_check="cheap": the loss
  and the gradient norm are finite (two scalars the step computes anyway; with finite
  gradients AdamW/LAMB updates of finite parameters stay finite); "params": every parameter
  after the update (one more pass over the whole state each step)."""
  if finite_check not in FINITE_CHECKS:
    raise ValueError(f"finite_check must be one of {FINITE_CHECKS}, got {finite_check!r}")
  hidden = teacher is not None and distill_cfg.hidden_weight > 0
  augment = teacher is not None and distill_cfg.augment_prob > 0

  def loss_fn(model, batch, rng, teacher_state):
    # Only tasks that draw in-step randomness split the key (GLUE dropout streams unchanged).
    mask_rng, drop_rng = jax.random.split(rng) if hasattr(task, "prepare") else (None, rng)
    batch, kwargs = _prepare(task, batch, mask_rng, train=True)
    kd_batch = batch
    if augment:  # the teacher terms also see corrupted copies of every sentence
      drop_rng, aug_rng = jax.random.split(drop_rng)
      n = distill_cfg.augment_copies
      # One copy uses aug_rng itself, so one-copy runs keep the random stream they always had.
      keys = [aug_rng] if n == 1 else list(jax.random.split(aug_rng, n))
      aug_ids = [distill.augment_ids(k, batch["input_ids"], batch["attention_mask"],
                                     prob=distill_cfg.augment_prob, **task.special_tokens)
                 for k in keys]
      kd_batch = distill.with_augmented_copy(batch, *aug_ids)
    kd_out = _forward(model, kd_batch, drop_rng, False, kwargs, output_hidden_states=hidden)
    out = distill.first_rows(kd_out, batch["input_ids"].shape[0]) if augment else kd_out
    loss, aux = task.loss(out, batch)
    if teacher is not None:
      t_batch = kd_batch
      if teacher.hidden_only and "unmasked_input_ids" in batch:  # MLM: the clean text
        t_batch = dict(batch, input_ids=batch["unmasked_input_ids"])
      t_out = teacher(teacher_state, tuple(t_batch[k] for k in MODEL_INPUTS), kwargs, hidden)
      terms = distill.distill_terms(distill_cfg, task.head, kd_out, t_out, kd_batch,
                                    projection=surgery.projection_of(model))
      aux = dict(aux, task_loss=loss, **terms)
      loss = distill.combine(distill_cfg, loss, terms)
    return loss, aux

  def grads_of(model, batch, rng, teacher_state):
    (loss, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, batch, rng,
                                                                   teacher_state)
    return loss, aux, grads

  groups = mesh.data_size if mesh is not None else 1

  def constrain(tree, lead=()):
    """Pins `tree` to the mesh's state sharding (with leading axes `lead`)."""
    if mesh is None or mesh.size == 1:
      return tree
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, NamedSharding(
        mesh.mesh, P(*lead, *fsdp_spec(x.shape[len(lead):], mesh.fsdp_size)))), tree)

  def step(state, batch, base_rng, step_no, teacher_state=None):
    model, opt = nnx.merge(graphdef, state)
    rng = jax.random.fold_in(base_rng, step_no)
    k = grad_accum_steps
    if k == 1:
      loss, aux, grads = grads_of(model, batch, rng, teacher_state)
    elif groups > 1:
      loss, aux, grads = grouped_accumulation(model, batch, rng, teacher_state)
    else:
      # Micro-batch i = examples i, i+k, i+2k, ...: the batch is sharded over devices in
      # contiguous blocks, so strided micro-batches keep every device busy in every micro-step
      # (a contiguous split would put whole micro-batches on single devices).
      micro = jax.tree.map(micro_batches, batch)
      fresh = pure_model(model)

      def micro_grads(mb, i):
        return grads_of(fresh(), mb, jax.random.fold_in(rng, i), teacher_state)

      loss, aux, grads = jax.tree.map(lambda x: x / k, summed_over(micro, micro_grads))
    opt.update(model, grads)
    grad_norm = optax.global_norm(grads)
    if mesh is not None and mesh.fsdp_size > 1:
      nnx.update((model, opt), constrain(nnx.state((model, opt))))
    # The loss is that of the parameters before this update; `all_finite` vouches for the new
    # state (the one a checkpoint would hold) so the trainer can fail fast before saving it.
    if finite_check == "params":
      params = jax.tree.leaves(nnx.state(model, nnx.Param))
      all_finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in params]))
    else:
      all_finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    metrics = {"loss": loss, "grad_norm": grad_norm,
               "learning_rate": lr_schedule(step_no), "all_finite": all_finite, **aux}
    return nnx.state((model, opt)), metrics

  def micro_batches(x):
    """[B, ...] -> [k, B / k, ...]: micro-batch i = examples i, i+k, i+2k, ... (see step)."""
    k = grad_accum_steps
    return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)

  def pure_model(model):
    """A function re-creating `model` from its pure state. The scan body must not close over
    the NNX module of this trace level: it re-creates the model in each micro-step."""
    model_def, model_state = nnx.split(model)
    model_state = nnx.as_pure(model_state)  # plain arrays: no Variables of this trace level
    return lambda: nnx.merge(model_def, model_state)

  def summed_over(micro, micro_grads):
    """sum over i of micro_grads(micro[i], i), as a scan over the leading axis."""
    first = micro_grads(jax.tree.map(lambda x: x[0], micro), 0)

    def body(carry, i_mb):
      i, mb = i_mb
      return jax.tree.map(jnp.add, carry, micro_grads(mb, i)), None

    rest = jax.tree.map(lambda x: x[1:], micro)
    total, _ = jax.lax.scan(body, first, (jnp.arange(1, grad_accum_steps), rest))
    return total

  def grouped_accumulation(model, batch, rng, teacher_state):
    """Micro-batch i (rows i, i+k, ... as below) split into `groups` blocks of rows, block g
    on data slice g; vmap over the blocks (spmd_axis_name pins them to 'data') keeps each
    group's gradients local; the scan carries [groups, ...] partial sums; one sum at the end
    is the only cross-device reduction of the gradients."""
    k, g = grad_accum_steps, groups

    def split(x):  # [B, ...] -> [k, g, B / (k g), ...]
      micro = micro_batches(x)
      micro = micro.reshape(k, g, micro.shape[1] // g, *micro.shape[2:])
      return jax.lax.with_sharding_constraint(
          micro, NamedSharding(mesh.mesh, P(None, "data", "fsdp")))

    micro = jax.tree.map(split, batch)
    fresh = pure_model(model)

    def group_grads(mb, key):
      return grads_of(fresh(), mb, key, teacher_state)

    per_group = jax.vmap(group_grads, spmd_axis_name="data")

    def micro_grads(mb, i):
      keys = jax.vmap(lambda j: jax.random.fold_in(jax.random.fold_in(rng, i), j))(
          jnp.arange(g))
      loss, aux, grads = per_group(mb, keys)
      return loss, aux, constrain(grads, lead=("data",))

    return jax.tree.map(lambda x: x.sum(0) / (k * g), summed_over(micro, micro_grads))

  return jax.jit(step, donate_argnums=0)


def make_eval_step(graphdef, task):
  def step(state, batch):
    model, _ = nnx.merge(graphdef, state)
    batch, kwargs = _prepare(task, batch, None, train=False)
    out = _forward(model, batch, None, True, kwargs)
    return task.eval_outputs(out, batch)
  return jax.jit(step)
