"""The DDPM bound (T-VLB) on N(0, 1) data with the exact denoiser, where every term's mean is known.

Linear betas 1e-4..0.02, T = 1000, exact x0_hat = sqrt(abar_t) x_t (Var(x0 | x_t) = 1 - abar_t), the
continuous decoder N(x0_hat(x_1), beta_1): per dimension E[L_T] = -log(1 - abar_T)/2 = 2.018e-5,
E[sum_{t>=2} L_{t-1}] = sum 1/2 (SNR_{t-1} - SNR_t)(1 - abar_t) = 5.070042,
E[L_0] = log(2 pi beta_1)/2 + 1/2 = -3.186232, total 1.883831 nats against the true NLL
log(2 pi e)/2 = 1.418939 (the gap is the finite-T slack). The closed forms must give these numbers
(1e-6, the digits the reference quotes); the Monte Carlo means of ddpm_vlb over 400 samples x 2 dims
(one noise draw per term) must match each within 5 standard errors; L_T, which is deterministic given
x0, must match its formula to rounding. The discretised decoder's bin probabilities must sum to 1.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
import diffjax.likelihood as lik
from diffjax.likelihood.vlb import discretized_gaussian_log_likelihood

SCHED = dj.schedules.discrete(beta_schedule="linear", num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02)
UNIT = dj.data.GaussianMixture([1.0], [[0.0, 0.0]], [[1.0, 1.0]])
N, D = 400, 2


@pytest.fixture(scope="module")
def bound():
    x0 = UNIT.sample(jax.random.key(0), N)
    return x0, lik.ddpm_vlb(UNIT.denoiser(SCHED), x0, jax.random.key(1), decoder="gaussian")


def _closed_forms():
    abar = np.asarray(SCHED.alphas_cumprod)
    snr = abar / (1 - abar)
    prior = -0.5 * np.log1p(-abar[-1])
    diffusion = 0.5 * (snr[:-1] - snr[1:]) * (1 - abar[1:])
    beta1 = 1 - abar[0]
    return prior, diffusion, 0.5 * np.log(2 * np.pi * beta1) + 0.5


def test_the_closed_forms_give_the_reference_numbers():
    prior, diffusion, decoder = _closed_forms()
    np.testing.assert_allclose([prior, diffusion.sum(), decoder], [2.018e-5, 5.070042, -3.186232], atol=1e-6)
    np.testing.assert_allclose(prior + diffusion.sum() + decoder, 1.883831, atol=1e-6)


def test_the_monte_carlo_bound_matches_each_term_within_five_standard_errors(bound):
    x0, res = bound
    prior, diffusion, decoder = _closed_forms()
    assert res.diffusion.shape == (N, 999) and res.nfe == 1000
    abar_T = SCHED.alphas_cumprod[-1]
    exact_prior = 0.5 * jnp.sum(abar_T * x0**2 + (1 - abar_T) - 1 - jnp.log1p(-abar_T), axis=-1)
    np.testing.assert_allclose(res.prior, exact_prior, rtol=1e-12)
    for value, expected in [(res.prior, prior), (res.diffusion.sum(1), diffusion.sum()), (res.decoder, decoder),
                            (res.total, 1.883831)]:  # fmt: skip
        se = np.std(value, ddof=1) / np.sqrt(N)
        assert abs(np.mean(value) - D * expected) < 5 * se, (np.mean(value) / D, expected, se)
    np.testing.assert_allclose(res.total, res.prior + res.diffusion.sum(1) + res.decoder, rtol=1e-12)
    # per-t means: the terms at the smallest t carry the most weight; check the first 50 together
    first = res.diffusion[:, :50].sum(1)
    assert abs(first.mean() - D * diffusion[:50].sum()) < 5 * first.std(ddof=1) / np.sqrt(N)


def test_the_discretised_decoder_is_a_probability_over_the_bins():
    grid = jnp.arange(256) / 255 * 2 - 1
    for mean, std in [(0.3, 0.01), (-0.999, 0.05), (0.7, 2.0), (1.2, 0.003)]:
        log_p = discretized_gaussian_log_likelihood(grid, mean, std, num_bins=256, data_range=(-1.0, 1.0))
        np.testing.assert_allclose(jax.nn.logsumexp(log_p), 0.0, atol=1e-12)


def test_the_discretised_bound_on_8_bit_data_is_finite_and_positive():
    grid = jnp.arange(256) / 255 * 2 - 1
    x0 = jax.random.choice(jax.random.key(2), grid, (8, D)) * 0.5
    res = lik.ddpm_vlb(UNIT.denoiser(SCHED), x0, jax.random.key(3))
    bpd = lik.bits_per_dim(-res.total, D, num_bins=None)
    assert np.all(np.isfinite(res.total)) and np.all(bpd > 0), bpd


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(decoder="laplace"), "decoder"),
        (dict(num_bins=1), "num_bins"),
        (dict(key=0), "key"),
        (dict(data_range=(1.0,)), "data_range"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(kwargs, name):
    args = dict(key=jax.random.key(0)) | kwargs
    with pytest.raises(ValueError, match=name):
        lik.ddpm_vlb(UNIT.denoiser(SCHED), jnp.zeros((2, D)), **args)


def test_a_continuous_schedule_is_refused():
    with pytest.raises(ValueError, match="denoiser.schedule"):
        lik.ddpm_vlb(UNIT.denoiser(dj.schedules.vp_linear()), jnp.zeros((2, D)), jax.random.key(0))
