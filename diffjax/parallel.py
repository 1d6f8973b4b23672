"""Meshes and shardings: the same code on one CPU (a 1-device mesh), many GPUs or a pod.

The convention is data parallelism over a mesh axis named 'data': batches are sharded along
their first axis, parameters and optimizer state are replicated, and `jit` with these shardings
inserts the collectives. Meshes use `AxisType.Auto`, so sharding propagation is XLA's.
Multi-host runs start with `jax.distributed.initialize()` before building the mesh.
"""

import jax
from jax.sharding import NamedSharding, PartitionSpec

from diffjax import _checks

DATA = "data"


def data_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh over the first `num_devices` devices (all by default) with axis 'data'."""
    available = jax.device_count()
    n = available if num_devices is None else _checks.positive_int("num_devices", num_devices)
    if n > available:
        raise ValueError(f"num_devices must be <= the {available} devices present, got {n}")
    return jax.make_mesh((n,), (DATA,), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:n])


def batch_sharding(mesh) -> NamedSharding:
    """Shard the leading (batch) axis over 'data'."""
    return NamedSharding(mesh, PartitionSpec(DATA))


def replicated(mesh) -> NamedSharding:
    """Replicate over every device of the mesh (parameters, optimizer state, keys)."""
    return NamedSharding(mesh, PartitionSpec())


def check_batch(batch_size: int, mesh) -> None:
    """Raise a ValueError unless `batch_size` divides evenly over the mesh's 'data' axis."""
    if batch_size % mesh.shape[DATA]:
        raise ValueError(f"batch_size must be divisible by the {mesh.shape[DATA]} devices of the 'data' axis, "
                         f"got {batch_size}")  # fmt: skip
