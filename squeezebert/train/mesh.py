"""Device placement: the mesh, the state's sharding and the global batch assembly."""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from squeezebert.data import batching


class Mesh:
  """Data parallel over `devices` (default: every device): batch sharded on 'data', state
  replicated."""

  def __init__(self, devices=None):
    devices = jax.devices() if devices is None else list(devices)
    self.mesh = jax.make_mesh((len(devices),), ("data",), devices=devices,
                              axis_types=(jax.sharding.AxisType.Auto,))
    self.replicated = NamedSharding(self.mesh, P())
    self.data = NamedSharding(self.mesh, P("data"))

  def put_batch(self, batch: dict) -> dict:
    local = batching.shard_batch_for_process(batch, jax.process_index(), jax.process_count())
    return {k: jax.make_array_from_process_local_data(self.data, v) for k, v in local.items()}

  def fetch(self, tree):
    if jax.process_count() > 1:
      tree = multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, tree)
