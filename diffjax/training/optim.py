"""Optimizer and parameter EMA.

AdamW with linear warm-up then cosine decay (optax.warmup_cosine_decay_schedule) after global-norm
clipping. The EMA of parameters (not optax.ema, which averages updates) uses a fixed decay or
EDM's half-life: decay = 0.5 ** (1 / half_life_steps).
"""

import jax
import optax

from diffjax import _checks


def adamw(
    learning_rate: float,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    end_fraction: float = 0.0,
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    clip_norm: float | None = 1.0,
    skip_nonfinite: int = 0,
) -> optax.GradientTransformation:
    """AdamW with warmup, cosine decay and gradient clipping: the configs' optimizer.

    Args:
      learning_rate: the peak learning rate.
      total_steps: the run's number of optimizer steps (the cosine's length).
      warmup_steps: linear warmup from 0 over this many steps (< total_steps).
      end_fraction: the final learning rate as a fraction of the peak, in [0, 1].
      weight_decay: decoupled weight decay.
      b1: Adam's first-moment decay.
      b2: Adam's second-moment decay.
      clip_norm: clip gradients to this global norm first (None: no clipping).
      skip_nonfinite: if > 0, an update whose gradients hold a NaN or inf is skipped (parameters and
        moments unchanged), up to this many in a row; the next one is applied, so a run that keeps
        failing still turns non-finite and is stopped (`optax.apply_if_finite`; `nonfinite_steps`
        counts the skips). 0 applies every update.

    Returns:
      An `optax.GradientTransformation`."""
    learning_rate = _checks.positive("learning_rate", learning_rate)
    total_steps = _checks.positive_int("total_steps", total_steps)
    warmup_steps = _checks.positive_int("warmup_steps", warmup_steps, 0)
    if warmup_steps >= total_steps:
        raise ValueError(f"warmup_steps must be < total_steps={total_steps}, got {warmup_steps}")
    end_fraction = _checks.in_range("end_fraction", end_fraction, 0.0, 1.0)
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup_steps else learning_rate,
        peak_value=learning_rate,
        warmup_steps=warmup_steps,
        decay_steps=total_steps,
        end_value=learning_rate * end_fraction,
    )
    steps = [optax.adamw(schedule, b1=b1, b2=b2, weight_decay=_checks.in_range("weight_decay", weight_decay, 0, 1))]
    if clip_norm is not None:
        steps.insert(0, optax.clip_by_global_norm(_checks.positive("clip_norm", clip_norm)))
    chained = optax.chain(*steps)
    skip_nonfinite = _checks.positive_int("skip_nonfinite", skip_nonfinite, 0)
    return optax.apply_if_finite(chained, skip_nonfinite) if skip_nonfinite else chained


def nonfinite_steps(opt_state) -> int | None:
    """How many updates `adamw(..., skip_nonfinite=k)` has skipped so far (None for an optimizer without).

    Args:
      opt_state: the optimizer state (`TrainState.opt_state`).

    Returns:
      The count of skipped updates, or None when the optimizer skips none.
    """
    if isinstance(opt_state, optax.ApplyIfFiniteState):
        return int(jax.device_get(opt_state.total_notfinite))
    return None


def ema_decay(*, decay: float | None = None, half_life_steps: float | None = None) -> float:
    """The per-step EMA decay from `decay` or from a half-life in optimizer steps (exactly one)."""
    if (decay is None) == (half_life_steps is None):
        raise ValueError(f"give exactly one of decay and half_life_steps, got {decay=}, {half_life_steps=}")
    if decay is not None:
        return _checks.in_range("decay", decay, 0.0, 1.0)
    return 0.5 ** (1.0 / _checks.positive("half_life_steps", half_life_steps))


def ema_update(ema_params, params, decay):
    """decay * ema + (1 - decay) * params, leaf by leaf: one step of the parameters' moving average."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)
