"""Deterministic, resumable, shardable batches: batch = f(seed, step), with no iterator state.

Resuming a run at step k needs only (seed, k), and gives bit-identical batches to an
uninterrupted run. Two sources:

- `ArrayBatches`, for a finite pytree of host arrays with a common leading axis of length N:
  epoch e = step // steps_per_epoch is the permutation ``jax.random.permutation(fold_in(key(seed), e), N)``
  and step k takes its slice number k % steps_per_epoch of batch_size entries
  (steps_per_epoch = N // batch_size; the last N % batch_size entries of each epoch's order are dropped).
- `SamplerBatches`, for a synthetic sampler ``sample(key, n)`` (e.g. the toy 2-D sets, or
  ``functools.partial(shapes.sample, image_size=16)``): step k is
  ``sample(fold_in(key(seed), k), batch_size)``, computed in one ``jit``.

Sharding: given a ``jax.sharding.Mesh`` with a ``'data'`` axis (e.g. ``diffjax.parallel.data_mesh()``),
a batch is a global ``jax.Array`` with ``parallel.batch_sharding(mesh)``, i.e.
``NamedSharding(mesh, P('data'))``: split over 'data', replicated over any other axis. Since
every process can compute the same global batch, `ArrayBatches` builds it with
``jax.make_array_from_callback`` and each device's callback gathers only its own rows, and
`SamplerBatches` asks ``jit`` for that output sharding (JAX's partitionable threefry draws the same
bits however the output is sharded). Without a mesh, batches go to the default device.
"""

import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from diffjax import _checks, parallel


def _sharding(mesh: Mesh, batch_size: int) -> NamedSharding:
    """`parallel.batch_sharding` after checking the mesh has a 'data' axis that divides batch_size."""
    if parallel.DATA not in mesh.axis_names:
        raise ValueError(f"mesh must have a {parallel.DATA!r} axis, got axes {mesh.axis_names}")
    parallel.check_batch(batch_size, mesh)
    return parallel.batch_sharding(mesh)


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The epoch's permutation of range(n), cached because consecutive steps share it."""
    order = np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.key(seed), epoch), n))
    order.setflags(write=False)
    return order


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayBatches:
    """Batches of a finite data set: ``batches(step)`` is the pytree ``data`` at ``batches.indices(step)``.

    data: a pytree of host arrays (e.g. ``(images, labels)``) sharing the leading length N;
    batch_size: 1..N, divisible by the mesh's 'data' size; seed: an integer >= 0; mesh: optional.
    """

    data: Any
    batch_size: int
    seed: int = 0
    mesh: Mesh | None = None

    def __post_init__(self):
        lengths = {len(leaf) for leaf in jax.tree.leaves(self.data)}
        if len(lengths) != 1:
            raise ValueError(f"data must be a pytree of arrays with one common leading length, got lengths {lengths}")
        _checks.positive_int("batch_size", self.batch_size)
        if self.batch_size > self.size:
            raise ValueError(f"batch_size must be <= the number of examples {self.size}, got {self.batch_size}")
        _checks.positive_int("seed", self.seed, minimum=0)
        if self.mesh is not None:
            _sharding(self.mesh, self.batch_size)

    @property
    def size(self) -> int:
        """The number of examples."""
        return len(jax.tree.leaves(self.data)[0])

    @property
    def steps_per_epoch(self) -> int:
        """Full batches per pass over the data (a partial last batch is dropped)."""
        return self.size // self.batch_size

    def indices(self, step: int) -> np.ndarray:
        """The (batch_size,) indices into data of the batch at this step."""
        _checks.positive_int("step", step, minimum=0)
        epoch, i = divmod(step, self.steps_per_epoch)
        return _epoch_order(self.seed, epoch, self.size)[i * self.batch_size : (i + 1) * self.batch_size]

    def __call__(self, step: int):
        idx = self.indices(step)
        if self.mesh is None:
            return jax.tree.map(lambda leaf: jax.device_put(leaf[idx]), self.data)
        sharding = _sharding(self.mesh, self.batch_size)
        return jax.tree.map(
            # P('data') splits only the leading axis: a device's shard is rows idx[index[0]] of the leaf.
            lambda leaf: jax.make_array_from_callback(
                (self.batch_size, *leaf.shape[1:]), sharding, lambda index: leaf[idx[index[0]]]
            ),
            self.data,
        )


@dataclasses.dataclass(frozen=True, eq=False)
class SamplerBatches:
    """Batches of a synthetic sampler: ``batches(step) = sample(fold_in(key(seed), step), batch_size)``.

    sample: a jit-able ``sample(key, n)`` returning a pytree of arrays with leading length n;
    batch_size: >= 1, divisible by the mesh's 'data' size; seed: an integer >= 0; mesh: optional.
    """

    sample: Callable
    batch_size: int
    seed: int = 0
    mesh: Mesh | None = None
    _draw: Callable = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        _checks.positive_int("batch_size", self.batch_size)
        _checks.positive_int("seed", self.seed, minimum=0)
        sharding = None if self.mesh is None else _sharding(self.mesh, self.batch_size)
        draw = lambda step: self.sample(jax.random.fold_in(jax.random.key(self.seed), step), self.batch_size)
        object.__setattr__(self, "_draw", jax.jit(draw, out_shardings=sharding))

    def __call__(self, step: int):
        _checks.positive_int("step", step, minimum=0)
        return self._draw(np.uint32(step))


def iterate(batches: Callable[[int], Any], start: int = 0, stop: int | None = None) -> Iterator[tuple[int, Any]]:
    """Yield ``(step, batches(step))`` for step = start, start + 1, ... (up to stop, exclusive, if given).

    Resuming from a checkpoint at step k is ``iterate(batches, start=k)``; nothing else is saved."""
    step = start
    while stop is None or step < stop:
        yield step, batches(step)
        step += 1
