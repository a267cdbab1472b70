"""Device placement: the mesh, the state's sharding and the global batch assembly.

Mesh axes ('data', 'fsdp'): the batch is split over both; parameters and optimizer state are
replicated over 'data' and, with fsdp > 1, split over 'fsdp' (ZeRO-3 / FSDP: each device keeps
1/fsdp of every large array; XLA gathers a layer's weights where it is used and reduce-scatters
its gradients). Pure data parallel is fsdp=1, the default.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from squeezebert.data import batching

# Arrays smaller than this stay replicated under FSDP: splitting biases and LayerNorm scales
# saves nothing and costs a collective each.
FSDP_MIN_SIZE = 1 << 14
BATCH_AXES = ("data", "fsdp")


def mesh_shape(n_devices: int, data: int = -1, fsdp: int = 1) -> tuple[int, int]:
  """(data, fsdp) for `n_devices`; -1 takes what the other axis leaves."""
  if data == 0 or fsdp == 0 or data < -1 or fsdp < -1 or (data == -1 and fsdp == -1):
    raise ValueError(f"config.mesh: data={data}, fsdp={fsdp}: each must be >= 1, or one of "
                     "them -1 (all the devices the other leaves)")
  if data == -1:
    data = n_devices // fsdp if n_devices % fsdp == 0 else 0
  if fsdp == -1:
    fsdp = n_devices // data if n_devices % data == 0 else 0
  if data * fsdp != n_devices:
    raise ValueError(f"config.mesh: data={data} x fsdp={fsdp} does not cover the "
                     f"{n_devices} devices")
  return data, fsdp


def fsdp_spec(shape, fsdp: int) -> P:
  """The FSDP rule: split the largest dimension that `fsdp` divides (arrays of at least
  FSDP_MIN_SIZE elements); anything else is replicated. One rule for parameters and the
  optimizer's moments, which have the parameters' shapes, so they shard alike."""
  if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < FSDP_MIN_SIZE:
    return P()
  dims = sorted(range(len(shape)), key=lambda d: -shape[d])
  for d in dims:
    if shape[d] % fsdp == 0:
      return P(*[("fsdp" if i == d else None) for i in range(len(shape))])
  return P()


class Mesh:
  """The run's device mesh and shardings."""

  def __init__(self, devices=None, data: int = -1, fsdp: int = 1):
    devices = jax.devices() if devices is None else list(devices)
    self.data_size, self.fsdp_size = mesh_shape(len(devices), data, fsdp)
    self.mesh = jax.make_mesh((self.data_size, self.fsdp_size), ("data", "fsdp"),
                              devices=devices, axis_types=(jax.sharding.AxisType.Auto,) * 2)
    self.replicated = NamedSharding(self.mesh, P())
    self.data = NamedSharding(self.mesh, P(BATCH_AXES))

  @classmethod
  def from_config(cls, config) -> "Mesh":
    m = config.get("mesh") or {}
    return cls(data=int(m.get("data", -1)), fsdp=int(m.get("fsdp", 1)))

  @property
  def size(self) -> int:
    return self.data_size * self.fsdp_size

  def state_sharding(self, state):
    """NamedShardings for a state pytree (parameters, optimizer state) by `fsdp_spec`."""
    return jax.tree.map(
        lambda x: NamedSharding(self.mesh, fsdp_spec(np.shape(x), self.fsdp_size)), state)

  def put_state(self, state):
    return jax.device_put(state, self.state_sharding(state))

  def put_batch(self, batch: dict) -> dict:
    """This process's rows of the global batch -> global arrays split over the batch axes.
    (Alone, the process's rows are the whole batch.)"""
    return {k: jax.make_array_from_process_local_data(self.data, v) for k, v in batch.items()}

  def put_global_batch(self, batch: dict) -> dict:
    """A global batch every process built alike (replicated eval data): each process puts its
    contiguous share of the rows."""
    return self.put_batch(batching.shard_batch_for_process(batch, jax.process_index(),
                                                           jax.process_count()))

  def fetch(self, tree):
    """Global arrays -> host numpy on every process."""
    if jax.process_count() > 1:
      tree = multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, tree)
