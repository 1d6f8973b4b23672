"""DDIM (Song, Meng & Ermon 2021) for any schedule, with its noise drawn from the step's key.

    x' = alpha' x0 + sqrt(sigma'^2 - c^2) eps + c z,   z ~ N(0, I),
    c  = eta sigma' sqrt(1 - SNR(t)/SNR(t'))

eta = 0 is the deterministic sampler (the exponential-integrator / Euler step of the probability
flow ODE); eta = 1 draws from the DDPM posterior q(x_t' | x_t, x0) with variance beta-tilde
(`diffjax.gaussian.posterior`, the one home of this formula).
"""

from diffjax import _checks, gaussian
from diffjax.solvers.base import GaussianSolver, solver_value


@solver_value
class DDIM(GaussianSolver):
    """DDIM with noise level `eta`; build it with `ddim`."""

    eta: float = 0.0

    def transition(self, state, pred, t, t_next, schedule):
        del state
        return gaussian.posterior(schedule, pred.x0, pred.eps, t, t_next, eta=self.eta)

    @property
    def stochastic(self):
        return self.eta > 0

    @property
    def order(self):
        return 1.0


def ddim(eta: float = 0.0) -> DDIM:
    """DDIM (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models"), for any schedule.

    Each step from t to t' is x' = alpha' x0 + sigma' sqrt(1 - eta^2 g) eps + eta sigma' sqrt(g) z
    with g = 1 - SNR(t)/SNR(t') and z ~ N(0, I) drawn from the step's key. It keeps the model's
    marginals for every eta.

    Args:
      eta: noise level in [0, 1]. 0 is the deterministic DDIM sampler (first order on the
        probability-flow ODE, equal to `euler()`); 1 samples the DDPM posterior q(x_t' | x_t, x0)
        (equal to `ddpm()`); values between interpolate the injected noise.

    Returns:
      A `GaussianSolver` value: `ddim(0.5) == ddim(0.5)`, and both share one compiled sampler.
    """
    return DDIM(_checks.in_range("eta", eta, 0.0, 1.0))
