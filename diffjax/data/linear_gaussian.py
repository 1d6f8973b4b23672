r"""An exact oracle for inverse problems: a Gaussian prior N(mu, Sigma) with full covariance, measured
linearly with Gaussian noise, y = A x0 + sigma_y n.

Under x_t = alpha x0 + sigma eps the prior stays Gaussian with covariance S_t = alpha^2 Sigma + sigma^2 I,
so everything guidance and inverse-problem methods approximate is known in closed form:

    denoiser       E[x0 | x_t]      = mu + alpha Sigma S_t^{-1} (x_t - alpha mu)
    Jacobian       J_t              = d E[x0 | x_t] / d x_t = alpha Sigma S_t^{-1}
    covariance     Cov(x0 | x_t)    = C_t = sigma^2 Sigma S_t^{-1} = (sigma^2 / alpha) J_t
    likelihood     p_t(y | x_t)     = N(y; A E[x0 | x_t], A C_t A^T + sigma_y^2 I)
    posterior      p(x0 | y)        = N(m, C), C = (Sigma^{-1} + A^T A / sigma_y^2)^{-1},
                                      m = C (Sigma^{-1} mu + A^T y / sigma_y^2)
    conditional    E[x0 | x_t, y]   = E[x0 | x_t] + C_t A^T (A C_t A^T + sigma_y^2 I)^{-1} (y - A E[x0 | x_t])

`posterior` also takes sigma_y = 0 (a noiseless measurement), where C is the Gaussian conditional
given A x0 = y. `anchors-inverse-discrete.md` G0 is the reference; its fixtures F-a and F-b are
`LinearGaussian(zeros(2), eye(2))` with A = [[1, 0]], sigma_y = 0.5, y = 1, and the correlated prior
[[1, .8], [.8, 1]] measured without noise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.arrays import broadcast_to_x
from diffjax.denoiser import Denoiser
from diffjax.schedules import Schedule


@jax.tree_util.register_pytree_node_class
class LinearGaussian:
    """The prior N(mean, cov) on R^d (mean (d,), cov (d, d) symmetric positive definite)."""

    def __init__(self, mean, cov):
        mean, cov = np.asarray(mean, np.float64), np.asarray(cov, np.float64)
        if mean.ndim != 1:
            raise ValueError(f"mean must be a 1-D array, got shape {mean.shape}")
        if cov.shape != (mean.size, mean.size) or not np.allclose(cov, cov.T):
            raise ValueError(f"cov must be a symmetric ({mean.size}, {mean.size}) matrix, got shape {cov.shape}")
        if np.linalg.eigvalsh(cov).min() <= 0:
            raise ValueError(f"cov must be positive definite, got eigenvalues {np.linalg.eigvalsh(cov)}")
        self.mean, self.cov = jnp.asarray(mean), jnp.asarray(cov)

    def tree_flatten(self):
        """The pytree leaves (mean, cov)."""
        return (self.mean, self.cov), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        """A prior from its leaves, unchecked (they may be tracers)."""
        obj = object.__new__(cls)
        obj.mean, obj.cov = children
        return obj

    @property
    def dim(self) -> int:
        """d, the dimension of the data."""
        return self.mean.shape[0]

    def _gain(self, schedule: Schedule, t, x):
        """alpha Sigma S_t^{-1} per sample, (B, d, d), and alpha, sigma as (B, 1)."""
        alpha = broadcast_to_x(schedule.alpha(t), x)
        sigma = broadcast_to_x(schedule.sigma(t), x)
        a, s = alpha[..., 0], sigma[..., 0]
        eye = jnp.eye(self.dim, dtype=self.cov.dtype)
        s_t = a[:, None, None] ** 2 * self.cov + s[:, None, None] ** 2 * eye
        gain = a[:, None, None] * jnp.linalg.solve(s_t, jnp.broadcast_to(self.cov, s_t.shape)).transpose(0, 2, 1)
        return gain, alpha, sigma

    def x0_mean(self, x, schedule: Schedule, t):
        """E[x0 | x_t = x] for x (B, d) at time t (scalar or (B,))."""
        gain, alpha, _ = self._gain(schedule, t, x)
        return self.mean + jnp.einsum("bij,bj->bi", gain, x - alpha * self.mean)

    def jacobian(self, x, schedule: Schedule, t):
        """J_t = d E[x0 | x_t] / d x_t = alpha Sigma S_t^{-1}, (B, d, d) (symmetric)."""
        return self._gain(schedule, t, x)[0]

    def x0_covariance(self, x, schedule: Schedule, t):
        """Cov(x0 | x_t) = (sigma^2 / alpha) J_t, (B, d, d); it does not depend on x."""
        gain, alpha, sigma = self._gain(schedule, t, x)
        return (sigma[..., 0] ** 2 / alpha[..., 0])[:, None, None] * gain

    def sample(self, key, n: int, schedule: Schedule | None = None, t=0.0):
        """n draws of x_t (of x0 when schedule is None), (n, d)."""
        z = jax.random.multivariate_normal(key, jnp.zeros(self.dim, self.cov.dtype), self.cov, (n,))
        x0 = self.mean + z
        if schedule is None:
            return x0
        noise = jax.random.normal(jax.random.fold_in(key, 1), x0.shape, x0.dtype)
        return schedule.alpha(t) * x0 + schedule.sigma(t) * noise

    def denoiser(self, schedule: Schedule) -> Denoiser:
        """The exact denoiser E[x0 | x_t] as a `Denoiser` (predicts x0, fed diffjax time)."""
        return Denoiser(_apply, (self, schedule), schedule=schedule, prediction="x0", time_fn=_identity)

    def posterior(self, matrix, y, sigma_y: float):
        """p(x0 | y) = N(m, C) for y = matrix x0 + sigma_y n, y of shape (m,); sigma_y = 0 conditions
        on matrix x0 = y exactly. Returns (m (d,), C (d, d))."""
        a = jnp.asarray(matrix, self.cov.dtype)
        gram = a @ self.cov @ a.T + sigma_y**2 * jnp.eye(a.shape[0], dtype=a.dtype)
        gain = jnp.linalg.solve(gram, a @ self.cov).T  # Sigma A^T (A Sigma A^T + sigma_y^2)^{-1}
        return self.mean + gain @ (jnp.asarray(y) - a @ self.mean), self.cov - gain @ a @ self.cov

    def conditional_x0_mean(self, x, schedule: Schedule, t, matrix, y, sigma_y: float):
        """E[x0 | x_t = x, y] (Kalman form), (B, d): what an exact guided denoiser returns."""
        a = jnp.asarray(matrix, self.cov.dtype)
        x0 = self.x0_mean(x, schedule, t)
        c_t = self.x0_covariance(x, schedule, t)
        gram = jnp.einsum("ij,bjk,lk->bil", a, c_t, a) + sigma_y**2 * jnp.eye(a.shape[0], dtype=a.dtype)
        residual = jnp.asarray(y) - x0 @ a.T
        return x0 + jnp.einsum("bij,kj,bk->bi", c_t, a, jnp.linalg.solve(gram, residual[..., None])[..., 0])


def _identity(t):
    return t


def _apply(params, x, t, cond):
    del cond
    prior, schedule = params
    return prior.x0_mean(x, schedule, t)
