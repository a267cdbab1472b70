"""JAX's multi-controller runtime: starting it, and the few host-level agreements a run needs.

One process per host (TPU pod slice), per GPU or per node (GPU clusters), or N processes on one
CPU machine; every process runs the same command. `initialize` must run before any other JAX
call (it is the first thing `train_and_evaluate` does). Where it gets its settings, first wins:
  1. explicit arguments (main.py's --coordinator_address / --num_processes / --process_id);
  2. the environment: JAX_COORDINATOR_ADDRESS (read by JAX itself), JAX_NUM_PROCESSES,
     JAX_PROCESS_ID;
  3. JAX's cluster auto-detection (Cloud TPU, SLURM, Open MPI, Kubernetes).
config.distributed: "auto" (initialize when 1 or 2 gives a coordinator or 3 detects a cluster),
True (always: a missing setting is an error from JAX), False (never; a single process).
"""

from __future__ import annotations

import os
import signal

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

ENV_ADDRESS, ENV_COUNT, ENV_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"
MODES = ("auto", True, False)


def _mode(value):
  if isinstance(value, str) and value.lower() in ("true", "false"):
    value = value.lower() == "true"
  if value not in MODES:
    raise ValueError(f"config.distributed must be 'auto', True or False, got {value!r}")
  return value


def detected_cluster() -> str | None:
  """The cluster JAX's auto-detection would use (its own probes), or None."""
  try:
    from jax._src import clusters  # the detection jax.distributed.initialize() runs itself
    for env in clusters.ClusterEnv._cluster_types:  # noqa: SLF001 (no public probe exists)
      if getattr(env, "opt_in_only_method", False):
        continue
      if env.is_env_present():
        return getattr(env, "name", env.__name__)
  except Exception as e:  # noqa: BLE001 (a probe that fails means: not that cluster)
    logging.debug("cluster detection failed: %s", e)
  return None


def initialize(mode="auto", coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None) -> bool:
  """Starts the multi-controller runtime if asked (see the module docstring); True if this
  process is (now) part of a multi-process run. Idempotent."""
  mode = _mode(mode)
  if jax.distributed.is_initialized():
    return True
  coordinator_address = coordinator_address or os.environ.get(ENV_ADDRESS) or None
  if num_processes is None and os.environ.get(ENV_COUNT):
    num_processes = int(os.environ[ENV_COUNT])
  if process_id is None and os.environ.get(ENV_ID):
    process_id = int(os.environ[ENV_ID])
  if mode is False:
    if coordinator_address or num_processes:
      logging.warning("config.distributed=False: ignoring the coordinator settings (%s, %s "
                      "processes); this process runs alone", coordinator_address, num_processes)
    return False
  if mode == "auto" and not coordinator_address and not detected_cluster():
    return False
  # CPU processes talk through gloo (JAX's CPU collectives); no effect on GPU/TPU devices.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  except RuntimeError as e:
    if "before any JAX" in str(e):
      raise RuntimeError(
          "jax.distributed.initialize() must run before any other JAX call, but this process "
          "already used JAX; start distributed runs through python -m squeezebert.main (or call "
          "squeezebert.train.distributed.initialize() first thing)") from None
    raise
  logging.info("distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True


def is_main() -> bool:
  """Process 0 writes the run files, metrics and TensorBoard events."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """A barrier across processes (no-op alone)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def allgather(x: np.ndarray) -> np.ndarray:
  """[process_count, *x.shape]: every process's `x` (host arrays; x[None] alone)."""
  x = np.asarray(x)
  if jax.process_count() == 1:
    return x[None]
  return np.asarray(multihost_utils.process_allgather(x, tiled=False))


def agree_max(x: np.ndarray) -> np.ndarray:
  """The elementwise maximum of `x` over all processes (e.g. the padded length of each step)."""
  return allgather(x).max(0)


def all_ok(ok: bool) -> bool:
  """Whether every process reports ok (a check that failed on one fails on all)."""
  return bool(allgather(np.array(ok, np.int32)).min())


class Preemption:
  """Stops a run cleanly at a step every process agrees on: on SIGTERM (the notice that TPU
  VMs, GKE and SLURM send before preempting), `reached(step)` turns True, the trainer saves a
  checkpoint and exits. Multi-process runs use JAX's preemption sync point (the coordination
  service makes all processes stop at the same step); a single process catches SIGTERM itself."""

  def __init__(self):
    self.flag = False
    self._previous = None
    self.multi = jax.process_count() > 1
    if not self.multi:
      try:
        self._previous = signal.signal(signal.SIGTERM, self._on_term)
      except ValueError:  # not the main thread (e.g. a notebook worker): no handler
        self._previous = None

  def _on_term(self, signum, frame):
    logging.warning("SIGTERM: saving a checkpoint at the end of this step, then stopping")
    self.flag = True

  def reached(self, step: int) -> bool:
    if self.multi:
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # no preemption sync manager in this runtime
        return False
    return self.flag

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
