r"""Masked-diffusion NELBOs: continuous time, discrete T steps, bits per token.

Continuous NELBO (MDLM eq. 10, MD4 eq. 5), per sequence, in nats:

    L(x) = int_0^1 w(t) E_{z_t ~ q(.|x)} [ sum_{l: z_t^l = m} -log mu_theta(x^l | z_t) ] dt,
    w(t) = -alpha'(t) / (1 - alpha(t)).

`MaskedNELBO` estimates it with t uniform on [t_min, 1] (antithetic across the batch by default, as
MDLM: t_i = t_min + (1 - t_min) ((u_0 + i / B) mod 1)) and one z_t per sequence. Unlike MDLM, which
averages w(t) CE over t in [eps, 1] without the factor (1 - eps), the estimate is multiplied by
(1 - t_min): it is unbiased for the integral over [t_min, 1].

Discrete T steps on a grid 1 = t_0 > ... > t_T = 0 (s_i = t_{i+1}):

    L_T(x) = sum_i [(alpha_{s_i} - alpha_{t_i}) / (1 - alpha_{t_i})] E_{z_{t_i}} [ sum_masked -log mu_theta ],

(MD4 writes the weight expm1(gamma_t - gamma_s) alpha_s, gamma = logit alpha). Reconstruction and
prior terms are left out (zero when alpha(0) = 1 and alpha(1) = 0). With the exact denoiser of a
data distribution p, E_p[L_T] >= H(p), decreasing towards it as the grid is refined, and L = -log p(x)
exactly for every x when alpha(0) = 1, alpha(1) = 0 (tests/test_markov.py).

`exact_masked_cross_entropy` computes E_{z_t}[...] exactly by enumerating the 2^L mask patterns
(tests, small L). Bits per token = L(x) / (L ln 2) (MD4 `loss2bpt`).
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffjax import _checks
from diffjax.discrete.process import forward, masked_denoiser
from diffjax.discrete.schedules import MaskingSchedule, check_schedule
from diffjax.training.losses import LossAux


def masked_cross_entropy(log_probs, x, z, vocab_size: int):
    """sum over masked positions (z == V) of -log mu(x^l | z), (B,)."""
    picked = jnp.take_along_axis(log_probs, x[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jnp.sum(jnp.where(z == vocab_size, -picked, 0.0), axis=-1)


def nelbo_times(key, batch: int, t_min: float, antithetic: bool = True):
    """Times (B,) uniform on [t_min, 1]: antithetic (one u_0 per batch, u_i = (u_0 + i/B) mod 1) or iid."""
    if antithetic:
        u0 = jax.random.uniform(key, (), dtype=jnp.result_type(float))
        u = jnp.mod(u0 + jnp.arange(batch) / batch, 1.0)
    else:
        u = jax.random.uniform(key, (batch,), dtype=jnp.result_type(float))
    return t_min + (1.0 - t_min) * u


def continuous_nelbo(denoiser, x, key, *, t_min: float = 1e-3, antithetic: bool = True):
    """One-sample estimates (B,) of the continuous NELBO of each sequence, in nats.

    Args:
      denoiser: a masked-diffusion denoiser `den(z, t) -> log mu (B, L, V)` with `.schedule`.
      x: clean tokens (B, L) in [0, V).
      key: a typed key.
      t_min: lower end of the time range (MDLM: 1e-3).
      antithetic: stratify t across the batch.

    Returns:
      (per-sequence estimates (B,), times (B,)).
    """
    key_t, key_z = jax.random.split(key)
    t = nelbo_times(key_t, x.shape[0], t_min, antithetic)
    vocab_size = _vocab(denoiser, x)
    z = forward(key_z, x, t, denoiser.schedule, vocab_size)
    ce = masked_cross_entropy(denoiser(z, t), x, z, vocab_size)
    return (1.0 - t_min) * denoiser.schedule.weight(t) * ce, t


def _vocab(denoiser, x):
    del x
    return denoiser.vocab_size


@struct.dataclass(eq=False)
class MaskedNELBO:
    """The continuous NELBO as a training loss (build it with `masked_nelbo`).

    `loss(params, apply_fn, x0, key, cond=None) -> (scalar, LossAux(per_example, t))`, the scalar the
    batch mean of the per-sequence NELBO divided by L (nats per token), `per_example` in nats per
    sequence. `apply_fn(params, z, time, cond) -> logits (B, L, V)`.
    """

    schedule: MaskingSchedule = struct.field(pytree_node=False)
    vocab_size: int = struct.field(pytree_node=False)
    t_min: float = struct.field(pytree_node=False)
    antithetic: bool = struct.field(pytree_node=False)
    time_conditioned: bool = struct.field(pytree_node=False)

    def __call__(self, params, apply_fn, x0, key, cond=None):
        _checks.typed_key("key", key)
        den = masked_denoiser(
            apply_fn, params, self.schedule, self.vocab_size, time_conditioned=self.time_conditioned, cond=cond
        )
        per_example, t = continuous_nelbo(den, x0, key, t_min=self.t_min, antithetic=self.antithetic)
        return jnp.mean(per_example) / x0.shape[1], LossAux(per_example, t)


def masked_nelbo(
    schedule: MaskingSchedule,
    vocab_size: int,
    *,
    t_min: float = 1e-3,
    antithetic: bool = True,
    time_conditioned: bool = False,
) -> MaskedNELBO:
    """The continuous masked-diffusion NELBO as a loss `loss(params, apply_fn, x0, key, cond)`.

    Args:
      schedule: a masking schedule (`diffjax.discrete.schedules`).
      vocab_size: V (the mask id is V).
      t_min: times are drawn on [t_min, 1]; in [0, 1).
      antithetic: MDLM's antithetic (stratified) times.
      time_conditioned: feed t to the network (else zeros, MDLM's default).

    Returns:
      A `MaskedNELBO` value; its scalar is nats per token, `aux.per_example` nats per sequence.
    """
    check_schedule("schedule", schedule)
    vocab_size = _checks.positive_int("vocab_size", vocab_size)
    t_min = _checks.finite("t_min", t_min)
    if not 0.0 <= t_min < 1.0:
        raise ValueError(f"t_min must lie in [0, 1), got {t_min!r}")
    return MaskedNELBO(schedule, vocab_size, t_min, bool(antithetic), bool(time_conditioned))


def discrete_weights(schedule: MaskingSchedule, timesteps):
    """(alpha_s - alpha_t) / (1 - alpha_t) for consecutive grid pairs (t, s), (T,)."""
    ts = jnp.asarray(timesteps)
    a_t, a_s = schedule.alpha(ts[:-1]), schedule.alpha(ts[1:])
    return (a_s - a_t) / (1.0 - a_t)


def discrete_nelbo(denoiser, x, key, timesteps):
    """One-sample estimates (B,) of the discrete-T NELBO on `timesteps` (decreasing, noise to data).

    A step i is drawn uniformly per sequence and T w_i CE(z_{t_i}) returned, unbiased for L_T(x).
    """
    ts = jnp.asarray(timesteps)
    num = ts.shape[0] - 1
    key_i, key_z = jax.random.split(key)
    i = jax.random.randint(key_i, (x.shape[0],), 0, num)
    t = ts[i]
    vocab_size = _vocab(denoiser, x)
    z = forward(key_z, x, t, denoiser.schedule, vocab_size)
    ce = masked_cross_entropy(denoiser(z, t), x, z, vocab_size)
    return num * discrete_weights(denoiser.schedule, ts)[i] * ce


def _mask_patterns(length: int) -> np.ndarray:
    return np.array(list(itertools.product([0, 1], repeat=length)), dtype=bool).reshape(-1, length)


@jax.jit
def _ce_per_pattern(denoiser, x, masks, t):
    """sum_masked -log mu(x^l | z_M) for every mask pattern M (rows of masks) and row of x: (M, B)."""
    vocab_size = denoiser.vocab_size
    z = jnp.where(masks[:, None, :], vocab_size, x[None]).reshape(-1, x.shape[1])
    xs = jnp.broadcast_to(x[None], (masks.shape[0],) + x.shape).reshape(-1, x.shape[1])
    return masked_cross_entropy(denoiser(z, t), xs, z, vocab_size).reshape(masks.shape[0], x.shape[0])


def exact_masked_cross_entropy(denoiser, x, alpha, t=0.0):
    """E_{z ~ q(.|x, alpha)} [sum_masked -log mu(x^l | z)] (B,) exactly, by enumerating 2^L masks.

    For small L only (tests). `t` is what the denoiser is fed.
    """
    x = jnp.asarray(x, jnp.int32)
    masks = _mask_patterns(x.shape[1])
    k = masks.sum(axis=1)
    prob = (1.0 - alpha) ** k * alpha ** (x.shape[1] - k)
    ce = _ce_per_pattern(denoiser, x, jnp.asarray(masks), jnp.asarray(t, jnp.result_type(float)))
    return jnp.asarray(prob) @ ce


def exact_discrete_nelbo(denoiser, x, timesteps):
    """L_T(x) (B,) exactly on `timesteps` (enumerating mask patterns; small L)."""
    ts = np.asarray(timesteps)
    w = np.asarray(discrete_weights(denoiser.schedule, ts))
    alphas = np.asarray(denoiser.schedule.alpha(ts))
    return sum(w[i] * exact_masked_cross_entropy(denoiser, x, alphas[i], ts[i]) for i in range(len(w)))


def exact_continuous_nelbo(denoiser, x):
    """The continuous NELBO (B,) of a time-agnostic denoiser, exactly, for alpha(0) = 1, alpha(1) = 0.

    With u = 1 - alpha the integral becomes sum over mask sets M of
    B(|M|, L - |M| + 1) sum_{l in M} -log mu(x_l | z_M), whatever the schedule.
    """
    x = jnp.asarray(x, jnp.int32)
    length = x.shape[1]
    masks = _mask_patterns(length)[1:]  # the empty pattern contributes nothing
    beta = np.array([math.gamma(k) * math.gamma(length - k + 1) / math.gamma(length + 1) for k in masks.sum(axis=1)])
    ce = _ce_per_pattern(denoiser, x, jnp.asarray(masks), jnp.asarray(0.0, jnp.result_type(float)))
    return jnp.asarray(beta) @ ce


def bits_per_token(nelbo, length: int):
    """NELBO in nats per sequence of `length` tokens -> bits per token: nelbo / (length ln 2)."""
    return jnp.asarray(nelbo) / (length * math.log(2.0))
