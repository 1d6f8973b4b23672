"""The training state: everything a resumed run needs to continue bit-identically.

Batches are a pure function of (data seed, step) (`diffjax.data.iterators`), so the data position
is `step` itself and no iterator state is saved. The PRNG key is stored as raw key data so that
checkpoints hold plain arrays.
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct


@struct.dataclass
class TrainState:
    """A training run's whole state, checkpointed as one pytree: the step, parameters, their EMA, the
    optimizer state and the run's key (as raw key data, which Orbax can save)."""

    step: jax.Array  # int32: optimizer steps taken (= batches consumed)
    params: Any
    ema_params: Any
    opt_state: Any
    rng: jax.Array  # uint32 key data of the run's key; per-step keys are fold_in(key, step)

    @property
    def key(self):
        """The run's typed key; step i uses `fold_in(key, i)`."""
        return jax.random.wrap_key_data(self.rng)


def init_state(params, optimizer: optax.GradientTransformation, key) -> TrainState:
    """The state at step 0: the EMA starts at the parameters.

    Args:
      params: the network's initial parameters.
      optimizer: the optax transformation whose state is initialised.
      key: the run's typed key.

    Returns:
      A `TrainState`."""
    return TrainState(
        step=jnp.int32(0),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=optimizer.init(params),
        rng=jax.random.key_data(key),
    )
