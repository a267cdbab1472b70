"""A training workdir: orbax checkpoints of model and optimizer state, and the run files.

Layout: <workdir>/run.json (model config, head, labels: what the workdir holds),
train_config.json (the full config of the run that trains it), lock.json (held while a run
uses the workdir) and checkpoints/<step>/{model, optimizer, meta}. Saves are atomic (orbax
writes a temporary directory and renames it), so a killed run never leaves a half-written
checkpoint behind as the latest one. The latest N are kept plus the best by the task's main
metric (orbax's own tracking: the metric is saved with each evaluated checkpoint). A latest
checkpoint that cannot be restored is moved aside (`corrupt-<step>-<time>`, never deleted) and
the run resumes from the one before.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging as pylogging
import os
import socket
import sys
import time

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from squeezebert.model import ModelConfig

RUN_FILE = "run.json"
TRAIN_CONFIG = "train_config.json"
LOCK_FILE = "lock.json"
# Config fields whose change makes a resumed run something else: the data order (what step n
# means), the model, or the optimisation it continues. config.allow_config_change overrides.
RESUME_FIELDS = ("task", "seed", "batch_size", "grad_accum_steps", "dtype", "init_from",
                 "init_layers", "reinit_params", "freeze_params", "optimizer", "learning_rate",
                 "weight_decay", "model", "quant", "distill.teacher", "data.max_len",
                 "data.train_limit", "data.bucket_boundaries", "data.vocab", "data.shards",
                 "data.prepared_dir", "pretrain")
# Values a saved config written before the field existed had (resume checks compare them).
FIELD_DEFAULTS = {"data.shards": 1, "data.prepared_dir": ""}


def ckpt_dir(workdir: str) -> str:
  return os.path.join(workdir, "checkpoints")


def is_remote(path: str) -> bool:
  """A URL (gs://bucket/run, s3://...): read and written through epath, never os."""
  return "://" in str(path)


def exists(path: str) -> bool:
  return epath.Path(path).exists()


def is_workdir(path: str) -> bool:
  return exists(os.path.join(path, RUN_FILE)) and epath.Path(ckpt_dir(path)).is_dir()


def abs_path(path: str) -> str:
  """An absolute local path; URLs (gs://bucket/run) pass through untouched."""
  return path if is_remote(path) else os.path.abspath(path)


def makedirs(path: str) -> None:
  epath.Path(path).mkdir(parents=True, exist_ok=True)


def checkpoint_steps(workdir: str) -> list[int]:
  """Steps of the step directories on disk (complete or not)."""
  d = epath.Path(ckpt_dir(workdir))
  if not d.is_dir():
    return []
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit())


def write_run_file(workdir: str, run: dict, write: bool = True) -> None:
  """Record what this workdir trains; refuse to reuse a workdir whose checkpoints hold
  another model (one without checkpoints, e.g. a run that failed early, is simply taken).
  write=False: the check only (the processes of a multi-host run other than process 0)."""
  path = os.path.join(workdir, RUN_FILE)
  if exists(path) and checkpoint_steps(workdir):
    old = read_json(path)
    if "model" in old and "model" in run:
      # Compare as ModelConfig: fields added since the workdir was written take their
      # defaults, and JSON lists equal tuples.
      old["model"] = ModelConfig(**old["model"]).architecture_dict()
      run = dict(run, model=ModelConfig(**run["model"]).architecture_dict())
    keys = ("model", "head", "num_labels", "task", "quant", "distill_projection")
    diff = [k for k in keys if old.get(k) != run.get(k)]
    if diff:
      raise ValueError(
          f"workdir {workdir} holds checkpoints of a run with a different {', '.join(diff)} "
          f"(saved: { {k: old.get(k) for k in diff} }, now: { {k: run.get(k) for k in diff} }). "
          "Use a new --workdir; the existing checkpoints were left untouched.")
    return
  if write:
    write_json(path, run)


def write_train_config(workdir: str, config) -> None:
  """The full config of the run that trains this workdir (TRAIN_CONFIG; not config.json, which
  would make the workdir look like an HF checkpoint): eval/predict, quant and robustness
  rebuild the task and its data from it."""
  path = os.path.join(workdir, TRAIN_CONFIG)
  text = config.to_json_best_effort(indent=2)
  if exists(path) and epath.Path(path).read_text() == text:  # a rerun writes nothing
    return
  _write_text(path, text)


def read_train_config(workdir: str):
  path = os.path.join(workdir, TRAIN_CONFIG)
  if not exists(path):
    raise FileNotFoundError(f"{path} not found (workdirs written before it existed): pass the "
                            "run's config explicitly")
  return ml_collections.ConfigDict(read_json(path))


def read_run_file(workdir: str) -> dict:
  return read_json(os.path.join(workdir, RUN_FILE))


def read_json(path: str) -> dict:
  try:
    return json.loads(epath.Path(path).read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e}); it was not modified") from None


def _write_text(path: str, text: str) -> None:
  """Atomic locally (temporary name + rename); object stores write whole objects anyway."""
  if is_remote(path):
    epath.Path(path).write_text(text)
    return
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write_json(path: str, obj) -> None:
  _write_text(path, json.dumps(obj, indent=2))


def _get(config, dotted: str):
  node = config
  for part in dotted.split("."):
    if node is None or part not in node:
      return None
    node = node[part]
  return node.to_dict() if hasattr(node, "to_dict") else node


def _normalise(v):
  return json.loads(json.dumps(v, default=str))  # tuples == lists, as saved


# What mode=eval|predict must share with the run that trained the workdir.
EVAL_FIELDS = ("task", "model", "quant", "pretrain", "data.max_len", "data.vocab")


def resume_config_changes(workdir: str, config, fields=RESUME_FIELDS) -> list[str]:
  """'field: saved -> now' for every one of `fields` that differs from the config this
  workdir was trained with (none if it has no checkpoint or no saved config)."""
  path = os.path.join(workdir, TRAIN_CONFIG)
  if not checkpoint_steps(workdir) or not exists(path):
    return []
  saved = read_json(path)
  out = []
  for field in fields:
    a, b = _get(saved, field), _get(config, field)
    a = FIELD_DEFAULTS.get(field) if a is None else a
    b = FIELD_DEFAULTS.get(field) if b is None else b
    a, b = _normalise(a), _normalise(b)
    if isinstance(a, dict) and isinstance(b, dict):
      out += [f"{field}.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
              if a.get(k) != b.get(k)]
    elif a != b:
      out.append(f"{field}: {a!r} -> {b!r}")
  return out


# ------------------------------------------------------------------ the lock
class WorkdirLock:
  """lock.json (pid, host, start time, command) held while a run uses the workdir. A second
  run meets a clear error naming the holder; the lock of a process that is gone (same host)
  is taken over with a log line. Created with O_EXCL, so two runs cannot both take it.
  Object stores (gs://) have no exclusive create: there the lock is not taken (a warning);
  multi-host runs take it on process 0 only (enabled=False elsewhere)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = os.path.join(workdir, LOCK_FILE)
    self.held = False
    self.enabled = enabled

  def __enter__(self):
    if not self.enabled:
      return self
    if is_remote(self.path):
      logging.warning("workdir %s is remote: no lock file (object stores have no exclusive "
                      "create); make sure one run uses it at a time", os.path.dirname(self.path))
      return self
    me = dict(pid=os.getpid(), host=socket.gethostname(), started=time.time(),
              command=" ".join(sys.argv))
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = self._holder()
        if holder is None or not self._alive(holder):
          logging.warning("workdir lock %s held by %s, which is no longer running: taking it "
                          "over", self.path, _describe(holder))
          try:
            os.remove(self.path)
          except FileNotFoundError:
            pass
          continue
        raise RuntimeError(
            f"workdir {os.path.dirname(self.path)} is in use by {_describe(holder)} (lock file "
            f"{self.path}). Wait for that run, stop it, or use another --workdir.") from None
      with os.fdopen(fd, "w") as f:
        json.dump(me, f)
      self.held = True
      return self
    raise RuntimeError(f"could not take the workdir lock {self.path}")

  def __exit__(self, *exc):
    if self.held:
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass
      self.held = False

  def _holder(self) -> dict | None:
    try:
      with open(self.path) as f:
        return json.load(f)
    except (OSError, ValueError):
      return None  # half-written by a process that died at once

  @staticmethod
  def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
      return True  # cannot tell: another machine's process counts as running
    try:
      os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
      return False
    except PermissionError:
      return True
    return True


def _describe(holder: dict | None) -> str:
  if not holder:
    return "an unreadable lock"
  started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
  return f"pid {holder.get('pid')} on host {holder.get('host')} (started {started})"


# ------------------------------------------------------------------ checkpoints
class CheckpointError(RuntimeError):
  """A checkpoint could not be written (the message says why: e.g. no space left)."""


# Warnings orbax gives for every read-only (loading) checkpoint manager: not a problem.
_BENIGN = ("Given directory is read only", "read_only=True, setting")


class _DropBenign(pylogging.Filter):
  def filter(self, record):
    return not any(b in record.getMessage() for b in _BENIGN)


@contextlib.contextmanager
def _without_benign_warnings():
  """Loading a run (from_pretrained, pipeline) should not print orbax's read-only notes."""
  log, f = pylogging.getLogger("absl"), _DropBenign()
  log.addFilter(f)
  try:
    yield
  finally:
    log.removeFilter(f)


class Checkpoints:
  """The workdir's orbax CheckpointManager: latest `keep` + the best by `best_metric`."""

  def __init__(self, workdir: str, keep: int = 2, best_metric: str | None = None,
               best_mode: str = "max", read_only: bool = False, async_save: bool = False):
    self.workdir = workdir
    self.async_save = async_save
    self._pending = None  # the step an async save is still writing
    policies = [pp.LatestN(n=max(keep, 1))]
    best_fn = None
    if best_metric:
      sign = 1.0 if best_mode == "max" else -1.0
      best_fn = lambda m: sign * m[best_metric]  # noqa: E731
      policies.append(pp.BestN(get_metric_fn=best_fn, n=1,
                               keep_checkpoints_without_metrics=False))
    self.best_metric, self.best_mode = best_metric, best_mode
    # best_fn makes orbax save each checkpoint's metrics and rank by them (best_step); the
    # preservation policy decides what is kept: the latest N, plus the best.
    with _without_benign_warnings():
      options = ocp.CheckpointManagerOptions(
          best_fn=best_fn, best_mode="max",
          preservation_policy=pp.AnyPreservationPolicy(policies),
          enable_async_checkpointing=async_save, cleanup_tmp_directories=True,
          read_only=read_only, create=not read_only)
      self.mngr = ocp.CheckpointManager(abs_path(ckpt_dir(workdir)), options=options,
                                        item_names=("model", "optimizer", "meta"))

  def latest_step(self) -> int | None:
    return self.mngr.latest_step()

  def best_step(self) -> int | None:
    """The best checkpoint by the task metric; None if no evaluated checkpoint exists."""
    if not self.best_metric:
      return None
    scored = [s for s in self.mngr.all_steps() if self.mngr.metrics(s)]
    return self.mngr.best_step() if scored else None

  def step(self, which: int | str = "best") -> int | None:
    """"best" (the latest if nothing is scored), "latest", or a saved step number."""
    if which == "best":
      return self.best_step() or self.latest_step()
    if which == "latest":
      return self.latest_step()
    if int(which) not in self.mngr.all_steps():
      raise FileNotFoundError(f"{self.workdir}: no checkpoint at step {which} (saved: "
                              f"{sorted(self.mngr.all_steps())})")
    return int(which)

  def save(self, step: int, model_state, opt_state, meta: dict, metrics: dict | None = None):
    args = ocp.args.Composite(model=ocp.args.StandardSave(model_state),
                              optimizer=ocp.args.StandardSave(opt_state),
                              meta=ocp.args.JsonSave(meta))
    self.wait()  # the previous async save: its failure is reported before a new one starts
    with self._enospc(step):
      # Async: the arrays are copied to host before save() returns (the next step may reuse
      # the donated buffers); the files are written in the background.
      self.mngr.save(step, args=args, metrics=metrics, force=True)
      self._pending = step
      if not self.async_save:
        self.wait()

  def wait(self) -> None:
    """Blocks until the pending async save is on disk (before exit, at preemption)."""
    if self._pending is None:
      return
    step, self._pending = self._pending, None
    with self._enospc(step):
      self.mngr.wait_until_finished()

  @contextlib.contextmanager
  def _enospc(self, step: int):
    try:
      yield
    except Exception as e:  # noqa: BLE001 (orbax wraps the OSError in its own errors)
      if not _is_enospc(e):
        raise
      self._pending = None
      self._remove_partial(step)
      raise CheckpointError(
          f"no space left on the device while saving checkpoint {step} in "
          f"{ckpt_dir(self.workdir)}: the half-written checkpoint was removed; free space and "
          f"rerun the same command to resume from step {self.latest_step() or 0}") from None

  def _remove_partial(self, step: int) -> None:
    self.mngr.reload()
    if jax.process_index() == 0:
      for p in epath.Path(ckpt_dir(self.workdir)).iterdir():
        if p.name.startswith(f"{step}.orbax-checkpoint-tmp") or (
            p.name == str(step) and step not in self.saved()):
          p.rmtree(missing_ok=True)
    _sync("squeezebert_remove_partial")
    self.mngr.reload()

  def saved(self) -> list[int]:
    return sorted(self.mngr.all_steps())

  def restore(self, step: int, model_state, opt_state=None):
    """Restores into the structure (and shardings) of the given states."""
    abstract = lambda s: jax.tree.map(ocp.utils.to_shape_dtype_struct, s)  # noqa: E731
    items = dict(model=ocp.args.StandardRestore(abstract(model_state)),
                 meta=ocp.args.JsonRestore())
    if opt_state is not None:
      items["optimizer"] = ocp.args.StandardRestore(abstract(opt_state))
    mismatch = self._mismatch(step, model_state)
    if mismatch:
      raise ValueError(
          f"checkpoint {self.mngr.directory}/{step} does not match the model being built "
          f"({mismatch}). The checkpoint was not modified.")
    out = self.mngr.restore(step, args=ocp.args.Composite(**items))
    if out.get("meta") is None:
      raise ValueError(f"checkpoint {step} has no run metadata")
    return out["model"], out.get("optimizer"), out["meta"]

  def _mismatch(self, step: int, model_state) -> str | None:
    """What differs between the saved model tree (its _METADATA and array metadata: names and
    write shapes) and `model_state`; None when they fit, or when the metadata itself is
    unreadable (then the restore fails and the checkpoint counts as corrupt)."""
    d = epath.Path(ckpt_dir(self.workdir)) / str(step) / "model"
    try:
      saved = {}
      for f in (d / "array_metadatas").iterdir():
        for a in json.loads(f.read_text())["array_metadatas"]:
          saved[a["array_metadata"]["param_name"]] = tuple(a["array_metadata"]["write_shape"])
    except Exception:  # noqa: BLE001 (missing or garbled metadata: a corrupt checkpoint)
      return None
    want = {".".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                     for k in path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(model_state)}
    missing, extra = sorted(set(want) - set(saved)), sorted(set(saved) - set(want))
    if missing or extra:
      return (f"structure: {len(missing)} arrays missing from it, e.g. {missing[:3]}; "
              f"{len(extra)} it has that the model lacks, e.g. {extra[:3]}")
    # write_shape is the shard written per process: it must tile the model's shape.
    bad = [f"{k}: saved {saved[k]}, model {want[k]}" for k in want
           if len(saved[k]) != len(want[k])
           or any(w == 0 or m % w for w, m in zip(saved[k], want[k]))]
    return f"shapes: {bad[:3]}" if bad else None

  def restore_latest(self, model_state, opt_state):
    """(step, model state, optimizer state, meta) of the latest checkpoint that restores, or
    None if there is none. A checkpoint that fails (truncated, deleted or corrupt files,
    missing metadata, an empty directory) is moved aside to corrupt-<step>-<time> with a
    warning, and the one before is tried. A shape or structure mismatch with an intact
    checkpoint (another model) is an error, with nothing moved."""
    self._move_aside_unlisted()
    while True:
      step = self.latest_step()
      if step is None:
        return None
      try:
        return (step, *self.restore(step, model_state, opt_state))
      except Exception as e:  # noqa: BLE001 (orbax/tensorstore raise many kinds)
        if isinstance(e, ValueError) and "does not match the model" in str(e):
          raise
        self._move_aside(step, e)

  def _move_aside(self, step: int, error) -> None:
    d = epath.Path(ckpt_dir(self.workdir))
    dst = d / f"corrupt-{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    if jax.process_index() == 0:  # every process found it broken; one moves it
      (d / str(step)).rename(dst)
    _sync(f"squeezebert_move_aside_{step}")
    logging.warning("checkpoint %d in %s does not restore (%s: %s); moved aside to %s, "
                    "resuming from the checkpoint before it", step, d, type(error).__name__,
                    str(error).splitlines()[0][:300] if str(error) else "", dst)
    self.mngr.reload()

  def _move_aside_unlisted(self) -> None:
    """Step directories orbax does not list (e.g. empty, or without their metadata file)
    would block the next save of that step: move them aside too."""
    listed = set(self.mngr.all_steps())
    for step in checkpoint_steps(self.workdir):
      if step not in listed:
        self._move_aside(step, FileNotFoundError("not a complete orbax checkpoint"))

  def close(self):
    try:
      self.wait()
    finally:
      self.mngr.close()


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _is_enospc(e: BaseException) -> bool:
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
      return True
    if "No space left on device" in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False
