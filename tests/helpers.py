"""Shared test helpers: training commands, trace counting, schedules of every kind and a small exact mixture."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

import diffjax as dj

# XLA:CPU flags for fast compiling, which conftest.py sets for the whole suite (a test that sets XLA_FLAGS
# for a command it starts keeps them there): LLVM at -O0, and the elemental IR emitters instead of the
# fusion emitters (measured: one 12-step PNDM sampler compiles in 0.41 s against 1.53 s, and
# test_solvers_common.py runs in 100 s against 250 s). Both make slower code: see `optimized_env`.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def optimized_env():
    """os.environ for a command on the CPU with XLA:CPU's default optimizations and emitters back on: for
    the long training runs, whose running outweighs their compiling (measured: the text fixture's run 69 s
    against 227 s at -O0, the digits fixture's 63 s against 94 s; the 400-step moons run 49 s against 59 s
    with the fusion emitters off). Its numbers differ from FAST_COMPILE_FLAGS' in the last bits, so
    whatever is compared bit for bit with such a run must run under this environment too."""
    flags = os.environ.get("XLA_FLAGS", "").replace(FAST_COMPILE_FLAGS, "").strip()
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_env(devices=None, optimized=True):
    """The training commands' environment: optimized XLA:CPU (`optimized_env`), so whatever is compared
    bit for bit with a run here runs in a process with this environment too. Runs of a few steps, whose
    compiling outweighs their running, keep the suite's -O0 (optimized=False: the tiny tour took 203 s
    optimized against 168 s at -O0). `devices` forces that many CPU devices."""
    env = optimized_env() if optimized else {**os.environ, "JAX_PLATFORMS": "cpu"}
    if devices:
        env["XLA_FLAGS"] = f"{env['XLA_FLAGS']} --xla_force_host_platform_device_count={devices}".strip()
    return env


def train_command(workdir, *overrides, config="configs/train.py:moons"):
    """experiments/train.py's command line for `config` in `workdir` with `overrides`."""
    return [sys.executable, "experiments/train.py", f"--config={config}", f"--workdir={workdir}", *overrides]


def train(workdir, *overrides, config="configs/train.py:moons", devices=None, wait=True, optimized=True):
    """Run experiments/train.py to the end and return its final.json (asserting exit code 0), or with
    wait=False the started process (stdout discarded, stderr piped)."""
    cmd = train_command(workdir, *overrides, config=config)
    env = train_env(devices, optimized)
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads((workdir / "final.json").read_text())


# the digits runs that conftest.py's session fixtures train once for test_training.py and test_tour.py
# (the tour is given the same overrides, so it reuses them). The UNet: 200 steps of batch 64, 16 channels,
# learning rate 1e-3 (CI time: 52 s, against 93 s for 300 steps of 32 channels at the config's 2e-4, whose
# final loss 0.357 this run beats with 0.338).
DIGITS_TRAIN = ("--config.optim.total_steps=200", "--config.log_every=20", "--config.checkpoint_every=200",
                "--config.batch_size=64", "--config.model.args.channels=16", "--config.optim.learning_rate=1e-3",
                "--config.optim.warmup_steps=20", "--config.sample.num=16", "--config.sample.steps=10")  # fmt: skip
# the clean digits classifier: 300 steps on the 80% training split
DIGITS_CLASSIFIER_TRAIN = ("--config.optim.total_steps=300", "--config.checkpoint_every=300")


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
