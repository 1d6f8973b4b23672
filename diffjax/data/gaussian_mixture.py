r"""An exact oracle: a Gaussian mixture with diagonal covariances, diffused in closed form.

p_0 = sum_k w_k N(m_k, diag(s_k^2)). Under x_t = alpha x_0 + sigma eps every component stays
Gaussian, N(alpha m_k, diag(alpha^2 s_k^2 + sigma^2)), so for any schedule and time we have the
exact log-density, score, component posteriors, denoiser E[x_0 | x_t], samples of p_t, the
exact reverse kernel p(x_s | x_t) (a DDPM sampler with zero discretisation error) and, through
diffrax, the probability-flow ODE solved to tolerance 1e-10.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffjax import gaussian
from diffjax.arrays import broadcast_to_x
from diffjax.denoiser import Denoiser
from diffjax.schedules import Schedule
from diffjax.solvers.base import Solver, State, StepInfo


def _coefficients(schedule, t, x):
    return broadcast_to_x(schedule.alpha(t), x[..., 0]), broadcast_to_x(schedule.sigma(t), x[..., 0])


@jax.tree_util.register_pytree_node_class
class GaussianMixture:
    """Mixture of diagonal Gaussians: weights (K,), means (K, d), scales (K, d) per-dimension std.

    The weights must be positive and sum to 1 (within 1e-6; they are renormalised to the last bit),
    the means finite and the scales positive and finite: otherwise a ValueError names the field."""

    def __init__(self, weights, means, scales):
        arrays = {}
        for name, a in (("weights", weights), ("means", means), ("scales", scales)):
            try:
                arrays[name] = np.asarray(a, dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{name} must be an array of real numbers, got {a!r}") from err
        weights, means, scales = arrays["weights"], arrays["means"], arrays["scales"]
        if weights.ndim != 1 or weights.size < 1 or not np.all(np.isfinite(weights)) or not np.all(weights > 0):
            raise ValueError(f"weights must be a 1-D array of positive finite numbers, got {weights!r}")
        if abs(weights.sum() - 1.0) > 1e-6:
            raise ValueError(f"weights must sum to 1 (within 1e-6), got sum {weights.sum()!r} for weights {weights!r}")
        if means.ndim != 2 or means.shape[0] != weights.size or means.shape[1] < 1:
            raise ValueError(f"means must have shape (K, d) = ({weights.size}, d >= 1), got shape {means.shape}")
        if not np.all(np.isfinite(means)):
            raise ValueError(f"means must be finite, got {means!r}")
        if scales.shape != means.shape:
            raise ValueError(f"scales must have the shape of means {means.shape}, got shape {scales.shape}")
        if not np.all(np.isfinite(scales)) or not np.all(scales > 0):
            raise ValueError(f"scales (per-dimension stds) must be positive and finite, got {scales!r}")
        self.weights = jnp.asarray(weights / weights.sum())
        self.means = jnp.asarray(means)
        self.scales = jnp.asarray(scales)

    def tree_flatten(self):
        """The pytree leaves (weights, means, scales)."""
        return (self.weights, self.means, self.scales), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        """A mixture from its leaves, unchecked (they may be tracers)."""
        obj = object.__new__(cls)
        obj.weights, obj.means, obj.scales = children
        return obj

    @property
    def dim(self) -> int:
        """d, the dimension of the data."""
        return self.means.shape[1]

    # --- densities at time t, given alpha and sigma (shapes (B,) or ()) ---------------------

    def _component_log_probs(self, x, alpha, sigma):
        """log w_k + log N(x; alpha m_k, alpha^2 s_k^2 + sigma^2), shape (B, K)."""
        var = alpha[..., None, None] ** 2 * self.scales**2 + sigma[..., None, None] ** 2
        diff = x[..., None, :] - alpha[..., None, None] * self.means
        log_normal = -0.5 * jnp.sum(diff**2 / var + jnp.log(2 * jnp.pi * var), axis=-1)
        return jnp.log(self.weights) + log_normal

    def _x0_means(self, x, alpha, sigma):
        """E[x_0 | x_t, k] = m_k + alpha s_k^2 / (alpha^2 s_k^2 + sigma^2) (x - alpha m_k), (B, K, d)."""
        a, s = alpha[..., None, None], sigma[..., None, None]
        gain = a * self.scales**2 / (a**2 * self.scales**2 + s**2)
        return self.means + gain * (x[..., None, :] - a * self.means)

    def log_prob(self, x, schedule: Schedule | None = None, t=0.0):
        """log p_t(x) of the diffused mixture (the data density p_0 without a schedule)."""
        alpha, sigma = _coefficients(schedule, t, x) if schedule is not None else (jnp.ones(()), jnp.zeros(()))
        return jax.nn.logsumexp(self._component_log_probs(x, alpha, sigma), axis=-1)

    def posterior(self, x, schedule: Schedule, t):
        """Component responsibilities p(k | x_t), shape (B, K)."""
        return jax.nn.softmax(self._component_log_probs(x, *_coefficients(schedule, t, x)), axis=-1)

    def x0_mean(self, x, schedule: Schedule, t):
        """The exact denoiser E[x_0 | x_t = x]."""
        alpha, sigma = _coefficients(schedule, t, x)
        r = jax.nn.softmax(self._component_log_probs(x, alpha, sigma), axis=-1)
        return jnp.einsum("...k,...kd->...d", r, self._x0_means(x, alpha, sigma))

    def score(self, x, schedule: Schedule, t):
        """grad_x log p_t(x) = (alpha E[x_0|x] - x) / sigma^2, per component, mixed by p(k|x)."""
        alpha, sigma = _coefficients(schedule, t, x)
        a, s = alpha[..., None, None], sigma[..., None, None]
        r = jax.nn.softmax(self._component_log_probs(x, alpha, sigma), axis=-1)
        var = a**2 * self.scales**2 + s**2
        return jnp.einsum("...k,...kd->...d", r, (a * self.means - x[..., None, :]) / var)

    # --- samples ---------------------------------------------------------------------------------

    def sample(self, key, n: int, schedule: Schedule | None = None, t=0.0):
        """n exact samples of p_t (of p_0 without a schedule), shape (n, d)."""
        k_comp, k_x0, k_eps = jax.random.split(key, 3)
        comp = jax.random.categorical(k_comp, jnp.log(self.weights), shape=(n,))
        x0 = self.means[comp] + self.scales[comp] * jax.random.normal(k_x0, (n, self.dim), self.means.dtype)
        if schedule is None:
            return x0
        eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
        return schedule.alpha(t) * x0 + schedule.sigma(t) * eps

    def reverse_sample(self, key, x, schedule: Schedule, t, t_next):
        """One exact draw of x_{t_next} ~ p(x_{t_next} | x_t = x) for t_next < t.

        Given component k, x0 | x_t ~ N(m_k(x_t), C_k), and x_s | x_t, x0 is the forward posterior
        q(x_s | x_t, x0) = N(c_0 x0 + c_e eps, std^2) (`gaussian.posterior`), eps = (x_t - alpha_t x0)/sigma_t;
        integrating x0 out gives N(posterior mean at m_k, std^2 + c1^2 C_k) with c1 = c_0 - c_e alpha_t/sigma_t.
        Then mix by p(k | x_t).
        """
        a_t, s_t = _coefficients(schedule, t, x)
        c = gaussian.posterior_coefficients(schedule, t, t_next)
        m = self._x0_means(x, a_t, s_t)  # (B, K, d)
        eps = (x[..., None, :] - a_t[..., None, None] * m) / s_t[..., None, None]
        mean = c.x0_coef * m + c.eps_coef * eps
        post_var = self.scales**2 * s_t[..., None, None] ** 2 / (a_t[..., None, None] ** 2 * self.scales**2
                                                                 + s_t[..., None, None] ** 2)  # fmt: skip
        c1 = c.x0_coef - c.eps_coef * a_t[..., None, None] / s_t[..., None, None]
        var = jnp.broadcast_to(c.std**2 + c1**2 * post_var, mean.shape)
        k_comp, k_noise = jax.random.split(key)
        comp = jax.random.categorical(k_comp, self._component_log_probs(x, a_t, s_t), axis=-1)
        take = lambda arr: jnp.take_along_axis(arr, comp[..., None, None], axis=-2)[..., 0, :]
        noise = jax.random.normal(k_noise, x.shape, x.dtype)
        return take(mean) + jnp.sqrt(take(var)) * noise

    # --- as a model ------------------------------------------------------------------------------

    def denoiser(self, schedule: Schedule) -> Denoiser:
        """The exact denoiser as a `Denoiser` (predicts x0, fed diffjax time)."""
        return Denoiser(_oracle_apply, (self, schedule), schedule=schedule, prediction="x0", time_fn=_identity)

    def exact_solver(self, schedule: Schedule) -> Solver:
        """A `Solver` that takes exact reverse-kernel steps (ancestral sampling with zero error).

        It ignores the denoiser it is given and spends no network evaluations. It is a value whose
        mixture and schedule are pytree leaves: a new mixture of the same shapes does not recompile."""
        return ExactSolver(self, schedule)

    # --- exactly tilted mixtures: the targets of steering ----------------------------------------

    def tilted_linear(self, direction, lmbda: float):
        """p(x) exp(lmbda a.x) / Z and log Z: component k moves to m_k + lmbda s_k^2 a with weight
        propto w_k exp(lmbda a.m_k + lmbda^2 a.diag(s_k^2) a / 2)."""
        a, var = jnp.asarray(direction, self.means.dtype), self.scales**2
        log_terms = jnp.log(self.weights) + lmbda * self.means @ a + 0.5 * lmbda**2 * (var * a**2).sum(1)
        return self._reweighted(log_terms, self.means + lmbda * var * a, self.scales)

    def tilted_quadratic(self, center, precision, lmbda: float):
        """p(x) exp(-lmbda/2 sum_d q_d (x_d - c_d)^2) / Z and log Z: per component and coordinate a
        Gaussian product with precision 1/s^2 + lmbda q, mean (m/s^2 + lmbda q c) / precision and mass
        (1 + lmbda q s^2)^(-1/2) exp(-lmbda q (m - c)^2 / (2 (1 + lmbda q s^2)))."""
        c, lq = jnp.asarray(center, self.means.dtype), lmbda * jnp.asarray(precision, self.means.dtype)
        var = self.scales**2
        log_mass = -0.5 * jnp.log1p(lq * var) - 0.5 * lq * (self.means - c) ** 2 / (1 + lq * var)
        post_var = var / (1 + lq * var)
        means = post_var * (self.means / var + lq * c)
        return self._reweighted(jnp.log(self.weights) + log_mass.sum(1), means, jnp.sqrt(post_var))

    def _reweighted(self, log_terms, means, scales):
        log_z = jax.nn.logsumexp(log_terms)
        return GaussianMixture(np.exp(np.asarray(log_terms - log_z)), np.asarray(means), np.asarray(scales)), log_z

    def pf_ode(self, x, schedule: Schedule, t, t_next, *, rtol: float | None = None, atol: float | None = None):
        """Solve the probability-flow ODE from time t to t_next with diffrax (Dopri8, PID control).

        In EDM's variables x_bar = x/alpha, s = sigma/alpha the ODE is dx_bar/ds = eps_hat(x_bar, s)
        for every schedule; eps_hat = sum_k p(k|x) s (x_bar - m_k)/(s_k^2 + s^2) has no 1/s.

        The default tolerances follow x's precision: 1e-10 in float64; 1e-6 in float32, where a
        tighter one buys nothing (float32 rounding leaves about 2e-6 of error at every tolerance
        below 1e-6 on the ring mixture) and costs hundreds of times the steps (19766 at 1e-10 against
        47 at 1e-6 there).

        Args:
          x: (B, d) states at time t.
          schedule: the forward process.
          t: the start time.
          t_next: the end time (t_next < t integrates towards the data).
          rtol: the controller's relative tolerance (None: by x's dtype, as above).
          atol: its absolute tolerance (None: the same as rtol's default).

        Returns:
          The exact flow's states (B, d) at t_next, to the tolerance.
        """
        import diffrax  # imported here: `import diffjax` stays fast

        default = 1e-10 if jnp.result_type(x) == jnp.float64 else 1e-6
        rtol = default if rtol is None else rtol
        atol = default if atol is None else atol

        alpha, alpha_next = schedule.alpha(t), schedule.alpha(t_next)
        s0, s1 = schedule.sigma(t) / alpha, schedule.sigma(t_next) / alpha_next

        def eps_hat(s, x_bar, args):
            s_ = jnp.broadcast_to(s, x_bar.shape[:-1])
            r = jax.nn.softmax(self._component_log_probs(x_bar, jnp.ones_like(s_), s_), axis=-1)
            per_comp = s * (x_bar[..., None, :] - self.means) / (self.scales**2 + s**2)
            return jnp.einsum("...k,...kd->...d", r, per_comp)

        solution = diffrax.diffeqsolve(
            diffrax.ODETerm(eps_hat),
            diffrax.Dopri8(),
            t0=s0,
            t1=s1,
            dt0=None,
            y0=x / alpha,
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            max_steps=100_000,
        )
        return alpha_next * solution.ys[-1]


@struct.dataclass
class ExactSolver(Solver):
    """The mixture's exact reverse kernel as a solver (`GaussianMixture.exact_solver`)."""

    mixture: GaussianMixture
    schedule: Schedule

    def step(self, state, key, t, t_next, denoise):
        del denoise
        x_next = self.mixture.reverse_sample(key, state.x, self.schedule, t, t_next).astype(state.x.dtype)
        x0 = self.mixture.x0_mean(state.x, self.schedule, t).astype(state.x.dtype)
        return State(x_next), StepInfo(jnp.int32(0), x0)

    @property
    def order(self):
        return float("inf")  # no discretisation error at any step size

    @property
    def stochastic(self):
        return True


def _oracle_apply(params, x, t, cond):
    del cond
    mixture, schedule = params
    return mixture.x0_mean(x, schedule, t)


def _identity(t):
    return t


def ring(num_modes: int = 8, radius: float = 2.0, scale: float = 0.05) -> GaussianMixture:
    """Equal-weight 2-D Gaussians on a circle: the standard multimodal test of samplers."""
    angles = 2 * np.pi * np.arange(num_modes) / num_modes
    means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    return GaussianMixture(np.full(num_modes, 1.0 / num_modes), means, np.full_like(means, scale))
