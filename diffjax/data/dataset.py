"""`Dataset`: what training, sampling and evaluation need of a data set, built by name from a config.

Each data set that configs can name has one builder, `dataset(*, batch_size, seed, mesh, field,
**options) -> Dataset`, beside its data (`toy2d.dataset`, `digits.dataset`, `shapes.dataset`,
`arrays.dataset`), and one line in `diffjax.data.REGISTRY`. `options` are the fields of the config's
`data` section other than `name` (`set="moons"`, `size=8, split="train"`, ...); `field` names that
section in error messages (`"config.data"`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A data set as a training run sees it.

    batches: `step -> (x, labels)` (labels None when unconditional), global arrays sharded over the
        mesh's 'data' axis; a pure function of (seed, step), so resuming needs only the step.
    event_shape: the shape of one sample x, e.g. (2,) or (8, 8, 1).
    num_classes: labels are 0..num_classes - 1 and num_classes is the null label; None when
        unconditional.
    fresh: `(key, n) -> (n, *event_shape)` new samples for synthetic sets, None for finite ones.
    load_evaluation: `() -> (x, labels)` host arrays to evaluate against (labels None when
        unconditional), or None; read through `evaluation`, computed once on first use.
    held_out: whether `evaluation` was never trained on (else it is the training set).
    train_x: the training set's x (host) for finite data sets, else None.
    """

    batches: Callable
    event_shape: tuple[int, ...]
    num_classes: int | None = None
    fresh: Callable | None = None
    load_evaluation: Callable[[], tuple] | None = dataclasses.field(default=None, repr=False)
    held_out: bool = False
    train_x: np.ndarray | None = dataclasses.field(default=None, repr=False)

    @functools.cached_property
    def evaluation(self) -> tuple | None:
        """(x, labels) host arrays to evaluate against, or None (drawn or loaded on first use)."""
        return None if self.load_evaluation is None else self.load_evaluation()

    def variance(self, n: int = 1024, seed: int = 0) -> float:
        """The variance of one entry of x over the training data, pooled over all entries (what a
        Gaussian prior N(m, v I) fitted to the data would use, e.g. PiGDM's `data_variance`).

        Args:
          n: how many fresh samples to draw for synthetic sets (finite sets use all of `train_x`).
          seed: the seed of those draws.

        Returns:
          The pooled variance of x as a float.

        Raises:
          ValueError: if the data set has neither `train_x` nor `fresh`.
        """
        if self.train_x is not None:
            x = np.asarray(self.train_x, np.float64)
        elif self.fresh is not None:
            x = self.fresh(jax.random.key(seed), n)
            x = np.asarray(x[0] if isinstance(x, tuple) else x, np.float64)
        else:
            raise ValueError("this data set has neither train_x nor a fresh sampler to measure its variance from")
        return float(np.var(x))

    @property
    def null_label(self) -> int | None:
        """The label that means "no class" (classifier-free guidance), or None when unconditional."""
        return self.num_classes


def event_shape_of(sample: Callable) -> tuple[int, ...]:
    """The shape of one sample of a jit-able sampler `sample(key, n) -> (n, *event)`, without drawing.

    Args:
      sample: a sampler returning an array (or a tuple whose first element is the samples).

    Returns:
      The event shape, from `jax.eval_shape` of a one-sample draw.
    """
    out = jax.eval_shape(lambda key: sample(key, 1), jax.random.key(0))
    x = out[0] if isinstance(out, tuple) else out
    return tuple(x.shape[1:])
