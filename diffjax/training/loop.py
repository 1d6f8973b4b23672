"""The training loop in memory: `fit(config)` trains what a config describes and returns the `Run`,
for notebooks and scripts. `experiments/train.py` drives the same compiled steps over the same
batches and adds checkpoints, resumption, logs and samples, so `fit` and a train.py run of one
config end with bit-identical parameters on one machine. Both stop with `NonFiniteError` when the
loss or the state turns NaN or inf (`check_finite`), rather than train on.
"""

import math

import jax
import jax.numpy as jnp
import tqdm

from diffjax import parallel
from diffjax.training import build, checkpoints
from diffjax.training.runs import Run
from diffjax.training.step import make_train_step, scan_steps


class NonFiniteError(FloatingPointError):
    """Training turned non-finite (a NaN or inf loss, parameter or optimizer moment); the message names
    the steps between which it happened."""


def check_finite(state, loss: float | None, *, step: int, since: int, skip_nonfinite: int = 0) -> None:
    """Raise `NonFiniteError` if the train state, or the logged loss, is not finite.

    Args:
      state: the `TrainState` after `step` (every floating-point leaf is checked, on its device).
      loss: the loss logged at `step`, or None when nothing was logged. With `skip_nonfinite` > 0 a
        non-finite loss is allowed (that update was skipped) as long as the state stays finite.
      step: the step just done.
      since: the last step known to be finite (the last check).
      skip_nonfinite: the config's `optim.skip_nonfinite`.

    Raises:
      NonFiniteError: naming the steps and what is not finite.
    """
    what = None
    if loss is not None and not math.isfinite(loss) and not skip_nonfinite:
        what = f"the loss is {loss}"
    elif not bool(checkpoints.all_finite(state)):
        what = "the parameters or optimizer state hold NaN or inf"
    if what is not None:
        raise NonFiniteError(
            f"training turned non-finite between step {since} and step {step} ({what}); lower "
            "config.optim.learning_rate, check the data, or set config.optim.skip_nonfinite=N to skip up "
            "to N non-finite updates in a row"
        )


def stacked_batches(batches, start: int, count: int):
    """`count` consecutive batches from step `start`, stacked on a new leading axis: (count, B, ...).

    Args:
      batches: a `Dataset.batches`, `step -> (x, labels)` (labels None when unconditional).
      start: the first step.
      count: how many steps (the config's `steps_per_call`).

    Returns:
      (x, labels) with leading axis `count`; labels None when unconditional.
    """
    parts = [batches(step) for step in range(start, start + count)]
    x = jnp.stack([p[0] for p in parts])
    labels = None if parts[0][1] is None else jnp.stack([p[1] for p in parts])
    return x, labels


def compiled_steps(config, module, training, mesh):
    """The jitted `(state, xs, labels) -> (state, metrics)` that takes `config.steps_per_call`
    optimizer steps per call (`scan_steps` of `make_train_step`), its state replicated over `mesh`
    and donated."""
    step_fn = make_train_step(training.loss, build.build_train_apply(config, module), training.optimizer, training.ema)
    return jax.jit(scan_steps(step_fn), out_shardings=(parallel.replicated(mesh), None), donate_argnums=0)


def fit(config, *, mesh=None, progress: bool = True) -> tuple[Run, list[dict]]:
    """Train the model `config` describes from step 0 to `config.optim.total_steps`, in memory.

    The data, network, loss, optimizer, EMA, keys and steps per call are those of
    `experiments/train.py` (`build.build`), which adds checkpoints and logs; nothing is written.

    Args:
      config: a training config (`configs/train.py` or `configs/classifier.py`, any overrides).
      mesh: a mesh with a 'data' axis (default: `config.num_devices` devices, 0 for all).
      progress: show a progress bar.

    Returns:
      (run, history): the trained `Run` (its `denoiser`, or for a classifier `classifier_apply`), and
      the metrics every `config.log_every` steps as dicts with "step", "loss" and the loss's metrics.

    Raises:
      NonFiniteError: when the loss or the state turns non-finite (checked every `log_every` steps).
    """
    mesh = parallel.data_mesh(config.num_devices or None) if mesh is None else mesh
    data, training, module = build.build(config, mesh)
    total, per_call = config.optim.total_steps, config.steps_per_call
    state = jax.device_put(build.initial_state(config, module, training.optimizer, data), parallel.replicated(mesh))
    steps = compiled_steps(config, module, training, mesh)
    history, checked, skip = [], 0, config.optim.get("skip_nonfinite", 0)
    for step in tqdm.trange(0, total, per_call, desc="fit", disable=not progress, dynamic_ncols=True):
        state, metrics = steps(state, *stacked_batches(data.batches, step, per_call))
        if (done := step + per_call) % config.log_every == 0 or done == total:
            row = {"step": done, **{k: float(v) for k, v in jax.device_get(metrics).items()}}
            check_finite(state, row["loss"], step=done, since=checked, skip_nonfinite=skip)
            checked = done
            if done % config.log_every == 0:
                history.append(row)
    return Run(config, module, training.schedule, data, state, None), history
