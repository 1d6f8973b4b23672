"""Bad arguments fail at the boundary with a ValueError naming the argument and the value."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj

S = dj.schedules
T = dj.timesteps
GMM = dict(weights=[0.5, 0.5], means=[[0.0], [1.0]], scales=[[1.0], [1.0]])


def _den(**kw):
    return dj.Denoiser(lambda p, x, t, c: x, None, **{"schedule": S.vp_linear(), **kw})


CASES = [
    (lambda: S.vp_linear(beta_min=-1.0), "beta_min"),
    (lambda: S.vp_linear(beta_min=1.0, beta_max=0.5), "beta_max"),
    (lambda: S.vp_linear(t_min=0.5, t_max=0.2), "t_min"),
    (lambda: S.vp_cosine(s=0.0), "s must be > 0"),
    (lambda: S.ve(sigma_min=2.0, sigma_max=1.0), "sigma_min"),
    (lambda: S.edm(sigma_data=0.0), "sigma_data"),
    (lambda: S.edm(sigma_max=float("inf")), "sigma_max"),
    (lambda: S.rectified_flow(t_max=1.5), "t_max"),
    (lambda: S.interpolant(1.0, jnp.sin), "alpha_fn"),
    (lambda: S.discrete(beta_schedule="cosine"), "beta_schedule"),
    (lambda: S.discrete(betas=[0.5, 1.5]), "betas"),
    (lambda: S.discrete(alphas_cumprod=[0.5, 0.9]), "alphas_cumprod"),
    (lambda: S.discrete(betas=[0.1, 0.2], alphas_cumprod=[0.9, 0.8]), "betas or alphas_cumprod"),
    (lambda: S.discrete(num_train_timesteps=1), "num_train_timesteps"),
    (lambda: S.shifted(S.rectified_flow(), 0.0), "shift"),
    (lambda: S.shifted("flow", 2.0), "base"),
    (lambda: T.uniform(S.vp_linear(), 0), "n must be"),
    (lambda: T.uniform(S.vp_linear(), 10, t_min=0.9, t_max=0.1), "t_min"),
    (lambda: T.logsnr_uniform(S.rectified_flow(), 10), "logsnr is infinite"),
    (lambda: T.karras(S.ve(), 10), "append_zero"),
    (lambda: T.karras(S.edm(), 10, rho=-1.0), "rho"),
    (lambda: T.karras(S.rectified_flow(), 10), "pass sigma_min and sigma_max"),
    (lambda: T.diffusers(S.vp_linear(), 10), "discrete"),
    (lambda: T.diffusers(S.discrete(), 10, spacing="uniform"), "spacing"),
    (lambda: T.diffusers(S.discrete(), 10, family="lms"), "family"),
    (lambda: T.diffusers(S.discrete(), 10, final="one"), "final"),
    (lambda: T.diffusers(S.discrete(), 2000), "num_train_timesteps"),
    (lambda: _den(prediction="noise"), "prediction"),
    (lambda: _den(schedule="vp"), "schedule"),
    (lambda: dj.Denoiser("net", None, schedule=S.vp_linear()), "apply_fn"),
    (lambda: dj.solvers.ddim(eta=2.0), "eta"),
    (lambda: dj.data.GaussianMixture([-1.0, 2.0], GMM["means"], GMM["scales"]), "weights"),
    (lambda: dj.data.GaussianMixture(GMM["weights"], [[0.0]], GMM["scales"]), "means"),
    (lambda: dj.data.GaussianMixture(GMM["weights"], GMM["means"], [[1.0], [0.0]]), "scales"),
    (
        lambda: dj.sample(dj.solvers.ddim(), _den(), jnp.array([0.5, 0.9]), jax.random.key(0), jnp.ones((2, 1))),
        "timesteps must decrease",
    ),
    (
        lambda: dj.sample(dj.solvers.ddim(), _den(), jnp.array([0.5]), jax.random.key(0), jnp.ones((2, 1))),
        "timesteps must be a 1-D",
    ),
    (
        lambda: dj.sample(dj.solvers.ddim(), _den(), jnp.array([0.9, 0.5]), jax.random.PRNGKey(0), jnp.ones((2, 1))),
        "key must be a typed PRNG key",
    ),
    (lambda: dj.sample("ddim", _den(), jnp.array([0.9, 0.5]), jax.random.key(0), jnp.ones((2, 1))), "solver"),
    (
        lambda: dj.sample(
            dj.solvers.ddim(), lambda x, t: x, jnp.array([0.9, 0.5]), jax.random.key(0), jnp.ones((2, 1))
        ),
        "denoiser",
    ),
    (lambda: dj.prior_sample(jax.random.key(0), S.vp_linear(), np.array([0.9, 0.5]), (2,), data_std=-1.0), "data_std"),
]


@pytest.mark.parametrize("make,message", CASES, ids=[m for _, m in CASES])
def test_bad_arguments_raise_a_value_error_that_names_them(make, message):
    with pytest.raises(ValueError, match=message):
        make()
