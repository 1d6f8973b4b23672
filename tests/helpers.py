"""Shared test helpers: trace counting, schedules of every kind and a small exact mixture."""

import os

import jax
import jax.numpy as jnp
import numpy as np

import diffjax as dj

# XLA:CPU's LLVM at -O0, which conftest.py sets for the whole suite; a test that sets XLA_FLAGS for a
# command it starts keeps it there
OPTIMIZATION_FLAG = "--xla_backend_optimization_level=0"


def optimized_env():
    """os.environ for a command on the CPU with XLA:CPU's optimizations back on: for the long training
    runs, whose running outweighs their compiling (measured: the text fixture's run 69 s against 227 s
    at -O0, the digits fixture's 63 s against 94 s). Its numbers differ from -O0's in the last bits, so
    whatever is compared bit for bit with such a run must run under this environment too."""
    flags = os.environ.get("XLA_FLAGS", "").replace(OPTIMIZATION_FLAG, "").strip()
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}


def largest_file(directory):
    """The largest file under `directory` (a checkpoint's array data)."""
    files = [os.path.join(root, f) for root, _, names in os.walk(directory) for f in names]
    return max(files, key=os.path.getsize)


def flip_bytes(path):
    """Invert four bytes in the middle of the file: a bad disk sector that still reads."""
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2
    data[middle : middle + 4] = bytes(b ^ 0xFF for b in data[middle : middle + 4])
    open(path, "wb").write(bytes(data))


def counting_jit(fn):
    """jax.jit(fn) and a list whose length is the number of times fn was traced."""
    traces = []

    def traced(*args):
        traces.append(None)
        return fn(*args)

    return jax.jit(traced), traces


def all_schedules():
    """(name, schedule, interior times) for every schedule kind, avoiding endpoints and knots."""
    interior = jnp.linspace(0.05, 0.95, 19) + 1.3e-3  # off the discrete knots at multiples of 1/N
    trig = dj.schedules.interpolant(lambda t: jnp.cos(0.5 * jnp.pi * t), lambda t: jnp.sin(0.5 * jnp.pi * t))
    return [
        ("vp_linear", dj.schedules.vp_linear(), interior),
        ("vp_cosine", dj.schedules.vp_cosine(), interior),
        ("ve", dj.schedules.ve(), interior),
        ("edm", dj.schedules.edm(), jnp.geomspace(0.003, 70.0, 19)),
        ("rectified_flow", dj.schedules.rectified_flow(), interior),
        ("interpolant_trig", trig, interior),
        ("discrete_linear", dj.schedules.discrete(), interior),
        (
            "discrete_scaled_linear",
            dj.schedules.discrete(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
            interior,
        ),
        ("discrete_cosine", dj.schedules.discrete(beta_schedule="squaredcos_cap_v2"), interior * 0.98),
        ("shifted_flow", dj.schedules.shifted(dj.schedules.rectified_flow(), 3.0), interior),
        ("shifted_vp", dj.schedules.shifted(dj.schedules.vp_linear(), 2.0), interior),
        ("shifted_discrete", dj.schedules.shifted(dj.schedules.discrete(), 0.5), interior),
    ]


def mixture(dim=3):
    """Three well-separated components with distinct per-dimension scales."""
    means = jnp.array(
        [
            [1.5, -1.0, 0.5, 0.0, 1.0, -0.5, 0.2, 2.0],
            [-2.0, 0.5, 1.0, 1.0, -1.0, 0.0, -0.7, 0.3],
            [0.3, 2.0, -1.5, -1.0, 0.0, 1.5, 1.1, -1.2],
        ]
    )[:, :dim]
    scales = jnp.array(
        [
            [0.3, 0.5, 0.2, 0.7, 0.1, 0.4, 0.25, 0.6],
            [0.1, 0.4, 1.0, 0.2, 0.3, 0.6, 0.5, 0.15],
            [0.6, 0.2, 0.35, 0.4, 0.8, 0.1, 0.3, 0.45],
        ]
    )[:, :dim]
    return dj.data.GaussianMixture(jnp.array([0.2, 0.5, 0.3]), means, scales)


def gaussian(dim=16, seed=0):
    """N(mu, diag s^2) with s log-uniform on [0.05, 2] and mu ~ N(0, 1): a non-trivial exact PF-ODE."""
    rng = np.random.default_rng(seed)
    scales = np.exp(rng.uniform(np.log(0.05), np.log(2.0), dim))
    return dj.data.GaussianMixture([1.0], rng.normal(size=(1, dim)), scales[None])


def gaussian_flow(g, x, sched, t0, t1):
    """Exact PF-ODE map of a single Gaussian: x_bar(s') = m + sqrt((s_k^2 + s'^2)/(s_k^2 + s^2)) (x_bar(s) - m)."""
    m, sk = g.means[0], g.scales[0]
    s0, s1 = sched.ve_sigma(t0), sched.ve_sigma(t1)
    return sched.alpha(t1) * (m + jnp.sqrt((sk**2 + s1**2) / (sk**2 + s0**2)) * (x / sched.alpha(t0) - m))


def convergence(solver, sched, grid, ns=(8, 16, 32, 64, 128, 256, 512), batch=32):
    """RMS error against the exact Gaussian PF-ODE for each n, and the slopes log2(e_n / e_2n).

    `grid(sched, n)` builds the time grid; the error is taken at the grid's last time, from the exact
    marginal at its first time."""
    g = gaussian()
    errors = []
    for n in ns:
        ts = grid(sched, n)
        x_T = g.sample(jax.random.key(0), batch, sched, ts[0])
        x, _ = dj.sample(solver, g.denoiser(sched), ts, jax.random.key(1), x_T)
        errors.append(float(jnp.sqrt(jnp.mean((x - gaussian_flow(g, x_T, sched, ts[0], ts[-1])) ** 2))))
    errors = np.array(errors)
    return errors, np.log2(errors[:-1] / errors[1:])


def prediction_views(x0, eps, *, alpha, sigma, dalpha, dsigma, sigma_data):
    """(x, {prediction: what a perfect network of that kind outputs}) for x = alpha x0 + sigma eps."""
    P = dj.predictions
    x = alpha * x0 + sigma * eps
    return x, {
        "eps": eps,
        "x0": x0,
        "v": P.v_from_x0_eps(x0=x0, eps=eps, alpha=alpha, sigma=sigma),
        "score": P.score_from_eps(eps=eps, sigma=sigma),
        "velocity": P.velocity_from_x0_eps(x0=x0, eps=eps, dalpha=dalpha, dsigma=dsigma),
        "edm": P.edm_from_x0(x=x, x0=x0, alpha=alpha, sigma=sigma, sigma_data=sigma_data),
    }
