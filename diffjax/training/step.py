"""The jitted training step, k steps per call with `lax.scan`, and the network in training mode
(`train_apply`: dropout on, classifier-free label dropout).

The step is written for one global batch; under `jit` with the batch sharded over a mesh's 'data'
axis (and the state replicated), XLA turns the batch mean into the all-reduce, so the same code
runs on one CPU, on 8 forced CPU devices or on GPUs (`diffjax.parallel`).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from diffjax import _checks, models
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
        return new, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

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


def train_apply(module, *, label_dropout: float = 0.0) -> Callable:
    """The network in training mode for `make_train_step`: `key -> apply_fn`, with label dropout.

    For a denoising network (MLP, UNet, DiT), `apply_fn(params, x, t, cond)` first replaces each
    label of `cond` by the null label `module.num_classes` with probability `label_dropout`
    (`models.drop_labels`), which trains the conditional and the unconditional model at once for
    classifier-free guidance (Ho & Salimans 2022), then calls
    `module.apply(params, x, t, cond, train=True, rngs={"dropout": ...})`. `cond=None` passes
    through. For a `models.Classifier`, `apply_fn(params, x, time)` (no labels to drop).
    The step's key is split in two: the first half draws the dropped labels, the second is the
    dropout key, whatever the rate.

    Args:
      module: a diffjax network (with `num_classes`) or a `models.Classifier`.
      label_dropout: the probability, in [0, 1], that a label becomes the null label; 0 leaves
        the labels alone. Must be 0 for a classifier or an unconditional network.

    Returns:
      `make(key) -> apply_fn`, the `train_apply` argument of `make_train_step`.
    """
    rate = _checks.in_range("label_dropout", label_dropout, 0.0, 1.0)
    if isinstance(module, models.Classifier):
        if rate > 0:
            raise ValueError(f"label_dropout must be 0 for a Classifier (its labels are targets), got {rate}")
        return lambda key: lambda params, x, t: module.apply(params, x, t, train=True, rngs={"dropout": key})
    num_classes = getattr(module, "num_classes", None)
    if rate > 0 and num_classes is None:
        raise ValueError(f"label_dropout must be 0 for an unconditional network (num_classes=None), got {rate}")

    def make(key):
        key_labels, key_dropout = jax.random.split(key)

        def apply_fn(params, x, t, cond=None):
            if cond is not None and rate > 0:
                cond = models.drop_labels(key_labels, cond, num_classes, rate)
            return module.apply(params, x, t, cond, train=True, rngs={"dropout": key_dropout})

        return apply_fn

    return make
