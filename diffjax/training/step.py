"""The jitted training step, and k steps per call with `lax.scan`.

The step is written for one global batch; under `jit` with the batch sharded over a mesh's 'data'
axis (and the state replicated), XLA turns the batch mean into the all-reduce, so the same code
runs on one CPU, on 8 forced CPU devices or on GPUs (`diffjax.parallel`).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from diffjax.training.optim import ema_update
from diffjax.training.state import TrainState


def make_train_step(loss_fn: Callable, train_apply: Callable, optimizer: optax.GradientTransformation, ema: float):
    """step(state, x0, cond) -> (state, metrics).

    `loss_fn(params, apply_fn, x0, key, cond) -> (loss, aux)` (`diffjax.training.losses`);
    `train_apply(key) -> apply_fn` gives the network in training mode with its dropout key. The
    step's key is fold_in(run key, step): keys depend on the step only, not on history.
    """

    def step(state: TrainState, x0, cond=None):
        key = jax.random.fold_in(state.key, state.step)
        key_loss, key_dropout = jax.random.split(key)
        value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, _), grads = value_and_grad(state.params, train_apply(key_dropout), x0, key_loss, cond)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = state.replace(
            step=state.step + 1,
            params=params,
            ema_params=ema_update(state.ema_params, params, ema),
            opt_state=opt_state,
        )
        return new, {"loss": loss, "grad_norm": optax.global_norm(grads)}

    return step


def scan_steps(step: Callable):
    """k optimizer steps in one call: `multi(state, xs, conds)` with xs of shape (k, B, ...).

    k = 1 calls the step directly rather than through a length-1 `lax.scan`: XLA:CPU runs
    convolutions inside a loop about 20x slower than outside one (a digits UNet step: 2 s against
    0.09 s), so CPU runs of convolutional models should use k = 1. Accelerators gain from k > 1.
    """

    def multi(state, xs, conds=None):
        if xs.shape[0] == 1:
            state, metrics = step(state, xs[0], None if conds is None else conds[0])
            return state, metrics

        def body(state, batch):
            x0, cond = batch
            return step(state, x0, cond)

        state, metrics = jax.lax.scan(body, state, (xs, conds))
        return state, jax.tree.map(jnp.mean, metrics)

    return multi
