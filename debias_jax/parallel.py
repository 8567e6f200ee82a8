"""Data parallelism as jit over one device mesh: the batch is split over the 'data' axis, the state replicated.

The same code runs on 1 CPU, 8 fake CPU devices, a GPU, a TPU VM or a multi-host pod: the mesh spans every
device of every process, each process supplies its own slice of the global batch, and the compiler inserts the
gradient all-reduce.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def create_mesh(devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices).reshape(-1), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, leading_axes: int = 0) -> NamedSharding:
  """Examples split over devices; `leading_axes` unsplit axes come first (e.g. steps of a multi-step call)."""
  return NamedSharding(mesh, P(*([None] * leading_axes), DATA_AXIS))


def global_batch(local_batch: dict, mesh: Mesh, leading_axes: int = 0) -> dict:
  """This process's numpy slice of every array -> global jax.Arrays sharded over the mesh."""
  sharding = batch_sharding(mesh, leading_axes)
  return {name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
          for name, value in local_batch.items()}
