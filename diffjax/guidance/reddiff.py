r"""RED-diff (Mardani, Song, Kautz & Vahdat 2024, "A Variational Perspective on Solving Inverse Problems
with Diffusion Models", ICLR): variational inference with q(x0 | y) = delta_mu, regularised by
denoising, as a solver whose state is the estimate mu and its Adam state.

`red_diff(operator, y)` is a solver for `dj.sample`: it starts from mu = A^+ y (x_T only gives the
shape and dtype) and at every grid time t but the last (it visits timesteps[0], ..., timesteps[n-1],
noise to data; the targets are unused) it draws eps ~ N(0, I) from the step's key and takes ONE Adam
step (Adam(lr, b1 = 0.9, b2 = 0.99), the official optimiser) on

    loss(mu) = v mean_{d_y}((y - A mu)^2) / 2 + lambda w(t) mean_D(sg(eps-hat(x_t, t) - eps) * mu),
    x_t = alpha_t mu + sigma_t eps,

per sample: the means run over one sample's d_y measured values (`operator.measurement_size`) and
D event entries, so the gradient is

    grad = lambda w(t) (eps-hat - eps) / D + v A^T (A mu - y) / d_y      (`red_diff_gradient`),

with no backpropagation through the network (one NFE per step). Because the two terms are means
over different sizes, the prior's effective weight relative to the data term is lambda d_y / D
(1/16 of lambda for 4x super-resolution): this is the official code's convention, kept so its
lambda carries over. The official code averages over the batch too; that 1/B cancels in Adam (up to
its epsilon), and here every sample's Adam moments are its own, so samples never couple. The
output is mu after the last step.

w(t) is a function of 1/sqrt(SNR) = sigma/alpha, the official `denoise_term_weight`: "linear"
(sigma/alpha, the default), "sqrt", "square", "log" (log(1 + .)), "trunc_linear" (min(., 1)),
"power2over3" and "const" (1). Defaults are the official configs': lr = 0.1, lambda = 0.25, v = 1, 50
steps (official grid: DDPM steps 980, 960, ..., 0, i.e. `dj.timesteps.uniform` on a `discrete()`
schedule is close; the README's example uses 100 steps and lr = 0.5).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from diffjax import _checks
from diffjax.arrays import Value, broadcast_to_x, noise_like
from diffjax.guidance.dps import _check_operator, check_measurement
from diffjax.guidance.operators import LinearOperator
from diffjax.solvers.base import Solver, StepInfo, take

WEIGHTINGS = ("linear", "sqrt", "square", "log", "trunc_linear", "power2over3", "const")


def snr_weight(weighting: str, schedule, t):
    """w(t) of RED-diff's denoising term as a function of 1/sqrt(SNR) = sigma/alpha = exp(-logSNR/2)."""
    inv = jnp.exp(-0.5 * schedule.logsnr(jnp.asarray(t)))
    return {
        "linear": lambda: inv,
        "sqrt": lambda: jnp.sqrt(inv),
        "square": lambda: inv**2,
        "log": lambda: jnp.log1p(inv),
        "trunc_linear": lambda: jnp.minimum(inv, 1.0),
        "power2over3": lambda: inv ** (2.0 / 3.0),
        "const": lambda: jnp.ones_like(inv),
    }[weighting]()


def _event_size(operator) -> int:
    return math.prod(operator.event_shape)


def red_diff_gradient(mu, eps, eps_hat, *, operator, y, weight, lmbda, obs_weight):
    """The gradient of RED-diff's per-sample loss at mu (module docstring):
    lmbda weight (eps_hat - eps) / D + obs_weight A^T (A mu - y) / d_y.

    Args:
      mu: the estimates, (N, *event).
      eps: the noise that made x_t = alpha mu + sigma eps, (N, *event).
      eps_hat: the denoiser's noise prediction at x_t (treated as a constant), (N, *event).
      operator: the linear measurement operator (D = its event size, d_y its `measurement_size`).
      y: the measurement, (*measurement_shape) or (N, *measurement_shape).
      weight: w(t), a scalar or (N,).
      lmbda: the denoising term's weight lambda.
      obs_weight: the data term's weight v.

    Returns:
      The gradient, (N, *event), in mu's dtype.
    """
    residual = operator(mu) - jnp.asarray(y).astype(mu.dtype)
    data = operator.transpose(residual) / jnp.asarray(operator.measurement_size, mu.dtype)
    prior = broadcast_to_x(weight, mu) * (eps_hat - eps) / _event_size(operator)
    return (lmbda * prior + obs_weight * data).astype(mu.dtype)


def red_diff_loss(mu, eps, t, *, denoise, operator, y, weight, lmbda, obs_weight):
    """RED-diff's loss summed over samples, as the official code writes it, with the network's
    prediction under `stop_gradient` (and fed a stopped x_t, so autodiff never enters the network):
    `jax.grad` of it is `red_diff_gradient`. For tests and for users who differentiate it themselves.

    Args:
      mu: the estimates, (N, *event).
      eps: the noise, (N, *event).
      t: the time.
      denoise: the denoiser.
      operator, y, weight, lmbda, obs_weight: as in `red_diff_gradient`.

    Returns:
      A scalar: sum_b [v ||y_b - A mu_b||^2 / (2 d_y) + lambda w <sg(eps-hat - eps), mu_b> / D].
    """
    sched = denoise.schedule
    x_t = broadcast_to_x(sched.alpha(t), mu) * mu + broadcast_to_x(sched.sigma(t), mu) * eps
    eps_hat = jax.lax.stop_gradient(denoise(jax.lax.stop_gradient(x_t), t).eps)
    residual = jnp.asarray(y).astype(mu.dtype) - operator(mu)
    data = jnp.sum(residual**2) / (2.0 * jnp.asarray(operator.measurement_size, mu.dtype))
    prior = jnp.sum(broadcast_to_x(weight, mu) * jax.lax.stop_gradient(eps_hat - eps) * mu) / _event_size(operator)
    return obs_weight * data + lmbda * prior


class RedDiffState(NamedTuple):
    """RED-diff's state: the estimate mu (as `x`) and its Adam state (per-sample moments, one count)."""

    x: jax.Array
    adam: Any


@struct.dataclass(eq=False)
class RedDiff(Solver, Value):
    """RED-diff as a solver; build it with `red_diff`. The operator, y, lr, lmbda and obs_weight are
    leaves (new measurements and weights never recompile); the weighting and Adam's betas are static.
    """

    operator: Any
    y: jax.Array
    lr: float
    lmbda: float
    obs_weight: float
    weighting: str = struct.field(pytree_node=False, default="linear")
    b1: float = struct.field(pytree_node=False, default=0.9)
    b2: float = struct.field(pytree_node=False, default=0.99)

    def _adam(self):
        return optax.adam(self.lr, b1=self.b1, b2=self.b2)

    def init(self, x, timesteps):
        """mu = A^+ y, broadcast to x's shape (x: only shape and dtype), and a fresh Adam state."""
        del timesteps
        op = self.operator
        if tuple(x.shape[1:]) != tuple(op.event_shape):
            raise ValueError(f"x_T must have shape (N, *{tuple(op.event_shape)}) for this operator, got {x.shape}")
        y = jnp.asarray(self.y)
        if y.ndim > len(op.measurement_shape) and y.shape[0] != x.shape[0]:
            raise ValueError(f"y has {y.shape[0]} rows but x_T has {x.shape[0]}: pass one y per row or one shared y")
        mu = jnp.broadcast_to(op.pinv(y.astype(x.dtype)), x.shape).astype(x.dtype)
        return RedDiffState(mu, self._adam().init(mu))

    def step(self, state, key, t, t_next, denoise):
        del t_next
        sched, mu = denoise.schedule, state.x
        eps = noise_like(key, mu)
        x_t = (broadcast_to_x(sched.alpha(t), mu) * mu + broadcast_to_x(sched.sigma(t), mu) * eps).astype(mu.dtype)
        pred = denoise(x_t, t)
        grad = red_diff_gradient(mu, eps, pred.eps, operator=self.operator, y=self.y,
                                 weight=snr_weight(self.weighting, sched, t), lmbda=self.lmbda,
                                 obs_weight=self.obs_weight)  # fmt: skip
        updates, adam = self._adam().update(grad, state.adam, mu)
        return RedDiffState(optax.apply_updates(mu, updates).astype(mu.dtype), adam), StepInfo(jnp.int32(1), pred.x0)

    @property
    def order(self):
        return 1.0  # an optimiser, not an integrator: no convergence order in the step size

    @property
    def stochastic(self):
        return True

    def gather(self, state, ancestors):
        per_sample = lambda a: take(a, ancestors) if jnp.ndim(a) > 0 else a  # Adam's count is shared
        return RedDiffState(take(state.x, ancestors), jax.tree.map(per_sample, state.adam))


def red_diff(
    operator,
    y,
    *,
    lr: float = 0.1,
    lmbda: float = 0.25,
    obs_weight: float = 1.0,
    weighting: str = "linear",
    b1: float = 0.9,
    b2: float = 0.99,
) -> RedDiff:
    """RED-diff (Mardani, Song, Kautz & Vahdat 2024, "A Variational Perspective on Solving Inverse
    Problems with Diffusion Models") as a solver: `dj.sample(red_diff(op, y), den, ts, key, x_T)`
    returns the estimate mu after one Adam step per grid time (module docstring). NFE 1 per step and
    no backpropagation through the network.

    Args:
      operator: a linear measurement operator with `pinv` (`guidance.operators`).
      y: the measurement, (*measurement_shape) shared by all samples or (N, *measurement_shape).
      lr: Adam's learning rate > 0 (official 0.1; a leaf).
      lmbda: lambda >= 0, the denoising term's weight (official `grad_term_weight` 0.25; a leaf).
      obs_weight: v >= 0, the data term's weight (official 1; a leaf).
      weighting: w(t) of 1/sqrt(SNR), one of `WEIGHTINGS` (official default "linear" = sigma/alpha).
      b1: Adam's first-moment decay in [0, 1) (official 0.9).
      b2: Adam's second-moment decay in [0, 1) (official 0.99).

    Returns:
      A `RedDiff` solver value; its state is `RedDiffState(x=mu, adam)`.

    Raises:
      ValueError: if the operator is not linear, y has the wrong shape or is not finite, lr is not
        > 0, lmbda or obs_weight negative or not finite, weighting unknown or a beta outside [0, 1).
    """
    operator = _check_operator(operator)
    if not isinstance(operator, LinearOperator):
        raise ValueError(f"operator must be linear (RED-diff starts at A^+ y), got {type(operator).__name__}")
    y = check_measurement(operator, y)
    lr = _checks.positive("lr", lr)
    lmbda = _checks.in_range("lmbda", lmbda, 0.0, math.inf)
    obs_weight = _checks.in_range("obs_weight", obs_weight, 0.0, math.inf)
    _checks.one_of("weighting", weighting, WEIGHTINGS)
    for name, beta in (("b1", b1), ("b2", b2)):
        if not 0.0 <= _checks.finite(name, beta) < 1.0:
            raise ValueError(f"{name} must lie in [0, 1), got {beta!r}")
    return RedDiff(operator, y, lr, lmbda, obs_weight, weighting, float(b1), float(b2))
