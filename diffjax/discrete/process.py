r"""The forward masking process, the SUBS parameterisation and masked-diffusion denoisers.

Tokens are int32 arrays (B, L) with values in [0, V); the mask token is id V, so a network sees
V + 1 input ids and predicts V logits (a (V + 1)-th logit, MDLM's, is dropped).

Forward process: q(z_t | x) = prod_l [alpha_t 1(z^l = x^l) + (1 - alpha_t) 1(z^l = m)].

SUBS (MDLM `_subs_parameterization`): the mask gets zero probability (its logit is removed, where
MDLM sets it to -1e6), the logits are log-softmaxed, and unmasked input positions carry over a
one-hot of their input token (log-probability 0 there, -inf elsewhere). Hence unmasked tokens never
change in a sampler and the loss counts masked positions only.

A masked-diffusion denoiser is any value callable as `den(z, t) -> log_probs (B, L, V)` with a
`.schedule` (a masking schedule) and a `.time_agnostic` flag (True when its output does not depend
on t, which lets the caching sampler reuse it). `masked_denoiser` wraps a network; the exact
Markov-chain denoiser of `diffjax.discrete.markov` is another.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffjax import _checks
from diffjax.arrays import Value
from diffjax.discrete.schedules import MaskingSchedule, check_schedule


def check_tokens(name: str, x, vocab_size: int, *, allow_mask: bool = False, length: int | None = None) -> None:
    """A ValueError naming `name` unless x is an integer (B, L) token array in range.

    Values must lie in [0, vocab_size) or, with `allow_mask`, in [0, vocab_size] (the mask is id
    vocab_size). With `length`, L must equal it. Values are only inspected when x is concrete.
    """
    shape = np.shape(x)
    if len(shape) != 2:
        raise ValueError(f"{name} must be a (batch, length) token array, got shape {shape}")
    dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"{name} must hold integer token ids, got dtype {dtype}")
    if length is not None and shape[1] != length:
        raise ValueError(f"{name} must have length {length}, got shape {shape}")
    if _checks.is_concrete(x) and np.size(x):
        values = np.asarray(x)
        high = vocab_size + 1 if allow_mask else vocab_size
        low_v, high_v = int(values.min()), int(values.max())
        if low_v < 0 or high_v >= high:
            what = f"[0, {vocab_size}] (mask id {vocab_size} allowed)" if allow_mask else f"[0, {vocab_size})"
            bad = low_v if low_v < 0 else high_v
            note = " (the mask token may not appear in data)" if not allow_mask and bad == vocab_size else ""
            raise ValueError(f"{name} must hold token ids in {what}, got {bad}{note}")


def _time(t, batch: int, dtype=None):
    t = jnp.asarray(t, dtype=dtype or jnp.result_type(t, float))
    return jnp.broadcast_to(t, (batch,))


def mask_tokens(key, x, alpha, vocab_size: int):
    """Draw z ~ q(z | x) for keep probability alpha (scalar or (B,)): each token becomes the mask
    id `vocab_size` independently with probability 1 - alpha."""
    alpha = jnp.asarray(alpha)
    alpha = alpha.reshape(alpha.shape + (1,) * (x.ndim - alpha.ndim))
    u = jax.random.uniform(key, x.shape, dtype=jnp.result_type(alpha, float))
    return jnp.where(u < 1.0 - alpha, jnp.asarray(vocab_size, x.dtype), x)


def forward(key, x, t, schedule: MaskingSchedule, vocab_size: int):
    """Sample the forward process z_t ~ q(z_t | x) at time t (scalar or (B,)).

    Args:
      key: a typed key.
      x: clean tokens (B, L) in [0, vocab_size).
      t: time in [0, 1], a scalar or one per sequence.
      schedule: a masking schedule.
      vocab_size: V; the mask id is V.

    Returns:
      z_t (B, L), masked positions holding V.
    """
    return mask_tokens(key, x, schedule.alpha(_time(t, x.shape[0])), vocab_size)


def subs(logits, z):
    """The SUBS parameterisation: log mu_theta (B, L, V) from network logits and the input z.

    Args:
      logits: (B, L, V) logits of the clean token (no mask logit: slice a (V + 1)-th one off first).
      z: the input tokens (B, L), mask id V.

    Returns:
      log-probabilities (B, L, V) in at least float32: log-softmax of the logits at masked positions,
      a one-hot (0 / -inf) of z at unmasked ones; the mask never has probability.
    """
    dtype = jnp.promote_types(logits.dtype, jnp.float32)
    log_probs = jax.nn.log_softmax(logits.astype(dtype), axis=-1)
    vocab_size = log_probs.shape[-1]
    visible = z < vocab_size
    carry = jnp.where(jnp.arange(vocab_size) == z[..., None], 0.0, -jnp.inf).astype(dtype)
    return jnp.where(visible[..., None], carry, log_probs)


@struct.dataclass(eq=False)
class MaskedDenoiser(Value):
    """A network as a masked-diffusion denoiser (build it with `masked_denoiser`).

    `den(z, t) -> log mu_theta (B, L, V)` calls `apply_fn(params, z, time, cond)` and applies
    `subs`; time is t per sequence when time-conditioned, else zeros (MDLM feeds zeros too).
    """

    apply_fn: Callable = struct.field(pytree_node=False)
    params: Any
    schedule: MaskingSchedule = struct.field(pytree_node=False)
    vocab_size: int = struct.field(pytree_node=False)
    time_conditioned: bool = struct.field(pytree_node=False, default=False)
    cond: Any = None

    @property
    def time_agnostic(self) -> bool:
        """True when the output does not depend on t (not time-conditioned)."""
        return not self.time_conditioned

    def __call__(self, z, t):
        time = _time(t, z.shape[0])
        if not self.time_conditioned:
            time = jnp.zeros_like(time)
        logits = self.apply_fn(self.params, z, time, self.cond)
        if logits.shape == z.shape + (self.vocab_size + 1,):
            logits = logits[..., : self.vocab_size]
        if logits.shape != z.shape + (self.vocab_size,):
            raise ValueError(f"apply_fn must return logits of shape {z.shape + (self.vocab_size,)}, got {logits.shape}")
        return subs(logits, z)


def masked_denoiser(
    apply_fn: Callable, params, schedule: MaskingSchedule, vocab_size: int, *, time_conditioned: bool = False, cond=None
) -> MaskedDenoiser:
    """Wrap a token network as a masked-diffusion denoiser applying SUBS.

    Args:
      apply_fn: `apply_fn(params, z, time, cond) -> logits (B, L, V)` (or (B, L, V + 1): the mask's
        logit is dropped), z holding ids in [0, V] with V the mask.
      params: the network's parameters (pytree leaves: new weights never recompile).
      schedule: the masking schedule it was trained with.
      vocab_size: V, the number of non-mask tokens.
      time_conditioned: feed t to the network; False (MDLM's default) feeds zeros and makes the
        denoiser time-agnostic, so the caching sampler may reuse its output.
      cond: a condition passed to apply_fn (or None).

    Returns:
      A `MaskedDenoiser` value.
    """
    if not callable(apply_fn):
        raise ValueError(f"apply_fn must be callable as apply_fn(params, z, time, cond), got {apply_fn!r}")
    check_schedule("schedule", schedule)
    vocab_size = _checks.positive_int("vocab_size", vocab_size)
    if not isinstance(time_conditioned, bool):
        raise ValueError(f"time_conditioned must be True or False, got {time_conditioned!r}")
    return MaskedDenoiser(apply_fn, params, schedule, vocab_size, time_conditioned, cond)


def check_denoiser(name: str, denoiser) -> None:
    """A ValueError naming `name` unless it is callable as den(z, t) with a masking `.schedule`."""
    if not callable(denoiser) or not isinstance(getattr(denoiser, "schedule", None), MaskingSchedule):
        raise ValueError(f"{name} must be callable as {name}(z, t) and have a masking .schedule, got {denoiser!r}")
