"""`train_and_evaluate(config, workdir)`: the one trainer for every task and ablation.

Resume order (documented, big_vision style): (1) the workdir's own latest checkpoint,
(2) config.init_from (HF dir, our model dir or another workdir), (3) from scratch.
The data position is a function of the step (one batch per step, a fixed order per
(seed, epoch)), so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import math
import os
import time

import jax
import numpy as np
from absl import logging
from flax import nnx

from squeezebert import tasks as tasks_lib
from squeezebert import workdir as workdir_lib
from squeezebert.data import batching
from squeezebert.model import param_count
from squeezebert.train import distributed, evaluate, optim, setup as setup_lib, steps as steps_lib
from squeezebert.train import mesh as mesh_lib
from squeezebert.train.logger import MetricLogger, Progress
from squeezebert.train.mesh import Mesh

FINAL_FILE = "final_metrics.json"
# config.rng_impl: the PRNG of dropout and in-step masking (jax.random.key(seed, impl=...)).
RNG_IMPLS = ("threefry", "rbg", "unsafe_rbg")


def validate(config):
  """Checks the config before any data is read or anything is compiled (after the
  multi-process runtime started: the device count is the global one)."""
  if config.batch_size <= 0:
    raise ValueError(f"config.batch_size must be > 0, got {config.batch_size}")
  if config.grad_accum_steps <= 0 or config.batch_size % config.grad_accum_steps:
    raise ValueError(f"config.grad_accum_steps={config.grad_accum_steps} must be >= 1 and "
                     f"divide batch_size={config.batch_size}")
  n = jax.device_count()
  if (config.batch_size // config.grad_accum_steps) % n:
    raise ValueError(f"micro-batch size {config.batch_size // config.grad_accum_steps} must "
                     f"divide evenly over {n} devices")
  m = config.get("mesh") or {}
  mesh_lib.mesh_shape(n, int(m.get("data", -1)), int(m.get("fsdp", 1)))  # raises
  shards = data_shards(config)
  if shards < 1 or shards % jax.process_count():
    raise ValueError(f"config.data.shards={shards} must be a positive multiple of the "
                     f"{jax.process_count()} processes (0: one shard per process)")
  if config.batch_size % shards:
    raise ValueError(f"config.batch_size={config.batch_size} must divide by "
                     f"config.data.shards={shards} (each batch takes as many rows from each)")
  if config.mode not in ("train", "eval", "predict"):
    raise ValueError(f"config.mode must be train|eval|predict, got {config.mode!r}")
  if config.dtype not in ("float32", "bfloat16"):
    raise ValueError(f"config.dtype must be float32 or bfloat16, got {config.dtype!r}")
  # Checked here, before any data is read or anything is compiled.
  if not config.learning_rate > 0:
    raise ValueError(f"config.learning_rate must be > 0, got {config.learning_rate}")
  if config.optimizer not in optim.OPTIMIZERS:
    raise ValueError(f"unknown config.optimizer {config.optimizer!r}; use one of "
                     f"{optim.OPTIMIZERS}")
  for name in ("weight_decay", "grad_clip_norm", "num_train_steps", "warmup_steps",
               "eval_every_steps", "checkpoint_every_steps", "stop_after_steps"):
    if config[name] < 0:
      raise ValueError(f"config.{name} must be >= 0, got {config[name]}")
  for name in ("log_every_steps", "keep_checkpoints"):
    if config[name] < 1:
      raise ValueError(f"config.{name} must be >= 1, got {config[name]}")
  if config.get("step_delay_secs", 0.0) < 0:
    raise ValueError(f"config.step_delay_secs must be >= 0, got {config.step_delay_secs}")
  if config.get("init_layers", "") and not config.init_from:
    raise ValueError(f"config.init_layers={config.init_layers!r} needs config.init_from (the "
                     "deeper checkpoint to take the layers from)")
  if optim.path_fragments(config, "reinit_params") and not config.init_from:
    raise ValueError(f"config.reinit_params={config.reinit_params!r} needs config.init_from "
                     "(a scratch model is all fresh init already)")
  if config.distill.get("embedding_init"):
    if not config.distill.teacher:
      raise ValueError("config.distill.embedding_init needs config.distill.teacher (the table "
                       "to project)")
    if config.init_from:
      raise ValueError("config.distill.embedding_init starts a from-scratch student; it cannot "
                       "combine with config.init_from (that model brings its own embeddings)")
  if config.distill.teacher:
    setup_lib.distill_config(config)  # raises on bad values
    if not os.path.isdir(config.distill.teacher):
      raise FileNotFoundError(f"config.distill.teacher={config.distill.teacher!r} is not a "
                              "directory (an HF dir, one of our model dirs or a workdir)")
  if config.get("rng_impl", "threefry") not in RNG_IMPLS:
    raise ValueError(f"config.rng_impl must be one of {RNG_IMPLS}, got {config.rng_impl!r}")
  if config.get("finite_check", "cheap") not in steps_lib.FINITE_CHECKS:
    raise ValueError(f"config.finite_check must be one of {steps_lib.FINITE_CHECKS}, got "
                     f"{config.finite_check!r}")
  if config.data.source not in ("auto", "tfds", "tsv"):
    raise ValueError(f"config.data.source must be auto|tfds|tsv, got {config.data.source!r}")
  qcfg = setup_lib.quant_config(config)  # raises on bad values
  if qcfg.mode not in ("none", "qat"):
    raise ValueError(f"config.quant.mode must be none|qat in the trainer, got {qcfg.mode!r}; "
                     "post-training quantization: python -m squeezebert.quant --workdir RUN "
                     "--mode ptq|int8 --out DIR")
  if qcfg.enabled and qcfg.static and config.grad_accum_steps > 1:
    raise ValueError("config.quant.act_mode=static updates its activation ranges in the "
                     "forward pass, which gradient accumulation (grad_accum_steps > 1) drops; "
                     "use act_mode=dynamic or grad_accum_steps=1")


def check_model_fits(config, task, model) -> None:
  """The data the config asks for fits the model: its vocab and its positions."""
  vocab = task.tokenizer.get_vocab_size()
  if vocab > model.config.vocab_size:
    raise ValueError(f"tokenizer has {vocab} tokens but the model's vocab_size is "
                     f"{model.config.vocab_size}: set config.model.vocab_size or the vocab "
                     f"(the 'tiny' preset is for unit tests: vocab 128)")
  if config.data.max_len > model.config.max_position_embeddings:
    raise ValueError(f"config.data.max_len={config.data.max_len} exceeds the model's "
                     f"max_position_embeddings={model.config.max_position_embeddings}")


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (or resumes) and evaluates; returns the final eval metrics.

  Order: the multi-process runtime starts first (before any other JAX call); every check
  that can fail on the config, the model or the data runs before the workdir is touched; then
  the workdir is locked (lock.json, by process 0) for the rest of the run. Every process runs
  this same function; process 0 alone writes the run files, metrics and TensorBoard events."""
  distributed.initialize(config.get("distributed", "auto"))
  validate(config)
  with config.unlocked():  # the resolved count is part of the data order, saved with the run
    config.data.shards = data_shards(config)
  task = tasks_lib.get_task(config)
  if config.mode == "train" and task.train_split is None:
    raise ValueError(f"task {task.name} has no training split; use mode=predict")
  data_source = task.check_data()  # before the model is built or the workdir is touched
  saved = (workdir_lib.read_run_file(workdir)
           if workdir_lib.exists(os.path.join(workdir, workdir_lib.RUN_FILE)) else {})
  # eval/predict of a run that trained a projection: its checkpoints hold it
  setup = setup_lib.setup_run(config, task, saved_projection=saved.get("distill_projection"))
  model = setup.model
  check_model_fits(config, task, model)
  run = dict(task=task.name, model=model.config.replace(dtype="float32").architecture_dict(),
             head=task.head, num_labels=task.num_labels, best_metric=task.main_metric,
             best_mode=task.metric_mode)
  if task.label_names:  # exports carry them (config.json id2label, pipelines)
    run["labels"] = list(task.label_names)
  qcfg = setup_lib.quant_config(config)
  if qcfg.enabled:  # absent for float runs (older workdirs have no such key either)
    run["quant"] = {k: v for k, v in qcfg.to_dict().items() if k != "calib_batches"}
  if setup.projection:
    run["distill_projection"] = list(setup.projection)
  data = None
  if config.mode != "train":
    changes = workdir_lib.resume_config_changes(workdir, config, workdir_lib.EVAL_FIELDS)
    if changes:
      raise ValueError(
          f"{config.mode} of {workdir}: the config differs from the one it was trained with: "
          f"{'; '.join(changes)}. Leave out --config to use the saved one "
          f"(python -m squeezebert.main --workdir={workdir} --mode={config.mode}).")
  if config.mode == "train":
    data = load_data(task, config.data.shards)
    changes = workdir_lib.resume_config_changes(workdir, config)
    if changes and not config.get("allow_config_change", False):
      raise ValueError(
          f"workdir {workdir} was trained with another config; resuming it with this one "
          f"would not continue the same run: {'; '.join(changes)}. Use a new --workdir, or "
          "--config.allow_config_change=True to resume anyway.")
    if changes:
      logging.warning("resuming %s with a changed config (allow_config_change): %s", workdir,
                      "; ".join(changes))
  main = distributed.is_main()
  if main:
    logging.info("%s", banner(config, task, model, data_source, workdir))
  workdir_lib.write_run_file(workdir, run, write=False)  # the check, on every process
  with _locked(workdir):
    if main:
      workdir_lib.write_run_file(workdir, run)
    distributed.sync("squeezebert_run_file")
    ckpts = workdir_lib.Checkpoints(workdir, keep=config.keep_checkpoints,
                                    best_metric=task.main_metric, best_mode=task.metric_mode,
                                    async_save=config.get("checkpoint_async", False))
    try:
      if config.mode != "train":
        return _eval_or_predict(config, workdir, task, model, ckpts)
      return _train(config, workdir, task, model, ckpts, Mesh.from_config(config), data,
                    setup.teacher)
    finally:
      ckpts.close()


def data_shards(config) -> int:
  """config.data.shards, 0 resolved to one shard per process."""
  return int(config.data.get("shards", 0) or jax.process_count())


@contextlib.contextmanager
def _locked(workdir: str):
  """The workdir lock, taken by process 0; every process fails if it cannot be taken."""
  main = distributed.is_main()
  lock, error = workdir_lib.WorkdirLock(workdir, enabled=main), None
  try:
    if main:
      workdir_lib.makedirs(workdir)
      lock.__enter__()
  except (RuntimeError, OSError) as e:
    error = e
  if not distributed.all_ok(error is None):
    if error is not None:
      raise error
    raise RuntimeError(f"process 0 could not take the lock of workdir {workdir}; see its log")
  try:
    yield lock
  finally:
    lock.__exit__(None, None, None)


def banner(config, task, model, data_source: str, workdir: str) -> str:
  """One block saying what this run is: task, model, devices, data, workdir."""
  n = param_count(model)
  return "\n".join([
      f"{config.mode} {task.name}: {task.head} head, {task.num_labels} label(s), metric "
      f"{task.main_metric or '-'}",
      f"  model {config.model.variant if not config.init_from else config.init_from}: "
      f"{model.config.num_hidden_layers} layers, hidden {model.config.hidden_size}, "
      f"{n / 1e6:.2f}M parameters, compute {config.dtype}",
      f"  devices: {jax.device_count()} x {jax.devices()[0].device_kind} "
      f"({jax.default_backend()}), {jax.process_count()} process(es)",
      f"  data: {data_source} (batch {config.batch_size}, max_len {config.data.max_len})",
      f"  workdir: {workdir}"])


def load_data(task, shards: int = 1) -> dict:
  """{'train': batching.Shards, 'eval': {split: Shards or EncodedSplit}}. Each process reads
  and tokenizes only its own shards of every split (`shards` of them in all); eval splits of
  tasks whose metrics need host-side metadata (NER, SQuAD) are read whole by every process."""
  t0 = time.time()
  owned = batching.owned_shards(shards, jax.process_index(), jax.process_count())

  def sharded(split):
    if shards == 1:
      encs = [task.load(split)]
    else:
      encs = [task.load(split, shard=(j, shards)) for j in owned]
    sizes = distributed.allgather(np.array([len(e) for e in encs], np.int64)).reshape(-1)
    return batching.Shards(encs=encs, ids=list(owned), count=shards, sizes=sizes.tolist())

  train = sharded(task.train_split)
  eval_encs = {s: sharded(s) if shards > 1 and task.eval_shardable else task.load(s)
               for s in task.eval_splits}
  logging.info("data: %d train examples in %d shard(s), this process reads %s; eval %s (%.1fs)",
               len(train), shards, owned, {s: len(e) for s, e in eval_encs.items()},
               time.time() - t0)
  return dict(train=train, eval=eval_encs)


def _train(config, workdir, task, model, ckpts, mesh, data, teacher=None) -> dict:
  final_path = os.path.join(workdir, FINAL_FILE)
  train_shards, eval_encs = data["train"], data["eval"]
  steps_per_epoch = train_shards.train_steps_per_epoch(config.batch_size)
  if steps_per_epoch == 0:
    raise ValueError(f"{len(train_shards)} training examples (shards of {train_shards.sizes}) "
                     f"give no full batch of {config.batch_size}")
  total, warmup = optim.total_and_warmup_steps(config, steps_per_epoch)
  eval_every = config.eval_every_steps or steps_per_epoch
  ckpt_every = config.checkpoint_every_steps or eval_every

  tx, lr = optim.make_tx(config, total, warmup)
  optimizer = optim.make_optimizer(model, tx)
  graphdef, state = nnx.split((model, optimizer))
  state = mesh.put_state(state)  # replicated, or split over 'fsdp'
  step = 0
  restored = ckpts.restore_latest(state[0], state[1])  # into the same shardings
  if restored is not None:
    _, model_state, opt_state, meta = restored
    state = _with_parts(state, model_state, opt_state)
    state = mesh.put_state(state)
    step = int(meta["step"])
    logging.info("resumed from %s at step %d (epoch %d, batch %d)", ckpts.mngr.directory,
                 step, *divmod(step, steps_per_epoch))
  if step >= total and workdir_lib.exists(final_path):
    logging.info("workdir %s already finished (%d steps); nothing to do", workdir, step)
    return workdir_lib.read_json(final_path)
  # The config of the run that trains this workdir (eval/predict and finished reruns keep it).
  if distributed.is_main():
    workdir_lib.write_train_config(workdir, config)

  teacher_state, dcfg = None, None
  if teacher is not None:
    dcfg = setup_lib.distill_config(config)
    teacher_state = jax.device_put(teacher.state, mesh.replicated)
  train_step = steps_lib.make_train_step(graphdef, task, lr, config.grad_accum_steps,
                                         teacher=teacher, distill_cfg=dcfg,
                                         finite_check=config.get("finite_check", "cheap"),
                                         mesh=mesh)
  eval_step = steps_lib.make_eval_step(graphdef, task)
  base_rng = train_rng(config)
  logger = MetricLogger(workdir, is_main=distributed.is_main(), resume_step=step)
  progress = Progress(total, step, enabled=config.progress_bar and distributed.is_main())
  preemption = distributed.Preemption()
  buckets = tuple(config.data.bucket_boundaries)
  pending, window, t_window, steps_this_run = None, [], time.time(), 0
  eval_metrics = {}

  def consume(pending_metrics, pending_step):
    """Checks step `pending_step` (1-based, as logged) before its state can be saved."""
    m = jax.tree.map(float, jax.device_get(pending_metrics))
    all_finite = m.pop("all_finite", 1.0)
    bad = [f"{k}={m[k]}" for k in ("loss", "grad_norm") if not math.isfinite(m[k])]
    if not all_finite:
      bad.append("non-finite parameters after the update")
    if bad:
      raise FloatingPointError(
          f"training diverged at step {pending_step}: {', '.join(bad)} (learning rate "
          f"{m['learning_rate']:.3g}); no checkpoint of this state was saved")
    window.append(m)

  epoch, start_batch = divmod(step, steps_per_epoch)
  try:
    while step < total:
      for batch in batching.train_batches(train_shards, config.batch_size, seed=config.seed,
                                          epoch=epoch, start_batch=start_batch,
                                          bucket_boundaries=buckets,
                                          agree=distributed.agree_max):
        if step >= total:
          break
        state, metrics = train_step(state, mesh.put_batch(batch), base_rng, step, teacher_state)
        if pending is not None:  # fetch step n-1 while step n runs
          consume(*pending)
        step += 1
        pending = (metrics, step)
        steps_this_run += 1
        progress.update(step)
        if step % config.log_every_steps == 0 or step == total:
          consume(*pending)
          pending = None
          dt = time.time() - t_window
          avg = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
          avg["steps_per_sec"] = len(window) / max(dt, 1e-9)
          avg["epoch"] = step / steps_per_epoch
          logger.write("train", step, avg)
          progress.set_postfix(loss=avg["loss"])
          window, t_window = [], time.time()
        preempted = preemption.reached(step)
        do_eval = step % eval_every == 0 or step == total
        do_ckpt = do_eval or step % ckpt_every == 0 or preempted
        if do_ckpt and pending is not None:  # never evaluate or save an unchecked state
          consume(*pending)
          pending = None
        if do_eval:
          eval_metrics = evaluate.eval_splits(task, eval_step, state, mesh, eval_encs, config)
          logger.write("eval", step, eval_metrics)
          logging.info("step %d eval: %s", step, eval_metrics)
        if do_ckpt:
          meta = dict(step=step, epoch=step // steps_per_epoch,
                      batch_in_epoch=step % steps_per_epoch, total_steps=total)
          ckpts.save(step, state[0], state[1], meta,
                     metrics=_main_only(eval_metrics, task) if do_eval else None)
        if preempted:
          ckpts.wait()
          logging.warning("preempted: saved checkpoint %d; rerun the same command to resume",
                          step)
          return dict(eval_metrics, step=step, preempted=True)
        if config.stop_after_steps and steps_this_run >= config.stop_after_steps:
          logging.info("stopping after %d steps this run (config.stop_after_steps)",
                       steps_this_run)
          return eval_metrics
        if config.get("step_delay_secs", 0.0):
          time.sleep(config.step_delay_secs)
      epoch, start_batch = epoch + 1, 0
  finally:
    preemption.close()
    progress.close()
    logger.close()
  if not eval_metrics:  # resumed from the final checkpoint of a run killed before it finished
    eval_metrics = evaluate.eval_splits(task, eval_step, state, mesh, eval_encs, config)
  # The last step's eval metrics, and which checkpoint is the best by the task metric (what
  # mode=eval, from_pretrained(workdir) and init_from=<workdir> load).
  ckpts.wait()  # the final checkpoint is on disk (and scored) before the run says it is done
  best = ckpts.step("best")
  final = dict(eval_metrics, step=step, best_step=best,
               best_metrics=dict(ckpts.mngr.metrics(best) or {}) if best is not None else {})
  if distributed.is_main():
    workdir_lib.write_json(final_path, final)
  return final


def train_rng(config):
  """The run's base PRNG key (threefry keeps the random stream of earlier runs)."""
  impl = config.get("rng_impl", "threefry")
  return jax.random.key(config.seed, impl=None if impl == "threefry" else impl)


def _main_only(m: dict, task) -> dict | None:
  if task.main_metric is None:  # no metric picks checkpoints: the latest ones are kept
    return None
  key = task.main_metric if task.main_metric in m else next(
      (k for k in m if k.endswith("/" + task.main_metric)), None)
  return {task.main_metric: float(m[key])} if key else None


def _with_parts(state, model_state, opt_state):
  state[0] = model_state
  state[1] = opt_state
  return state


def _eval_or_predict(config, workdir, task, model, ckpts) -> dict:
  """mode=eval: dev metrics of the best (else latest) checkpoint; mode=predict: also write
  GLUE submission files for the test splits into <workdir>/predictions/."""
  step = ckpts.step(config.get("eval_checkpoint", "best"))
  if step is not None:
    model_state, _, _ = ckpts.restore(step, nnx.state(model))
    nnx.update(model, model_state)
  elif not config.init_from:
    raise FileNotFoundError(f"{workdir}: no checkpoint to evaluate and no config.init_from")
  result = evaluate.evaluate_model(model, task, config)
  result["step"] = step
  if config.mode == "predict":
    result.update(evaluate.predict_test_splits(task, model, config,
                                               os.path.join(workdir, "predictions")))
  logging.info("%s: %s", config.mode, result)
  return result
