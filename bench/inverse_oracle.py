"""How far each inverse-problem method lands from the exact posterior of a Gaussian prior measured
linearly with Gaussian noise (`dj.data.LinearGaussian`, fixtures F-a and F-b of
anchors-inverse-discrete.md G0), in float64 on the CPU.

    python bench/inverse_oracle.py [--samples 4096] [--json out.json]

F-a: prior N(0, I_2), y = x_1 + 0.5 n, y = 1: posterior mean (0.8, 0), covariance diag(0.2, 1).
F-b: prior N(0, [[1, .8], [.8, 1]]), y = x_1 exactly, y = 1: x_2 | y ~ N(0.8, 0.36).
Every method samples with the exact denoiser, so what is left is the method's own approximation
(and the sampler's discretisation). The table gives, per fixture, the largest error of the sample
mean and of the sample covariance against the exact posterior, and the Monte Carlo standard error
of a mean (sqrt(max var / N)) to read them against. DPS and RED-diff are not samplers of the
posterior: their rows measure how far they are from it, not a bug.
"""

import argparse
import json
import platform

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import diffjax as dj  # noqa: E402

SCHED = dj.schedules.vp_cosine()
A = np.array([[1.0, 0.0]])
FIXTURES = {"F-a": (np.eye(2), 0.5), "F-b": (np.array([[1.0, 0.8], [0.8, 1.0]]), 0.0)}


def methods(op, y, sigma_y):
    """name -> (solver, denoiser factory, steps): every method run by `dj.sample`."""
    ddpm, plain = dj.solvers.ddpm(), lambda den: den
    rows = {f"dps zeta={z}": (dj.guidance.dps(ddpm, op, y, z), plain, 200) for z in (0.1, 0.3, 1.0)}
    for cov in ("pigdm", "exact"):
        for name, solver in (("ddpm", ddpm), ("dpmpp_2m", dj.solvers.dpmpp_2m())):
            guided = lambda den, cov=cov: dj.guidance.pigdm(den, op, y, sigma_y, covariance=cov)  # noqa: E731
            rows[f"pigdm {cov} {name}"] = (solver, guided, 200)
    for steps in (20, 200):
        rows[f"ddrm {steps} steps"] = (dj.guidance.ddrm(op, y, sigma_y), plain, steps)
    rows["red_diff (lr 0.02)"] = (dj.guidance.red_diff(op, y, lr=0.02), plain, 200)
    return rows


def errors(x, m, c):
    x = np.asarray(x)
    return float(np.abs(x.mean(0) - m).max()), float(np.abs(np.cov(x.T) - c).max())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    y = jnp.ones((args.samples, 1))  # one measurement per sample: every method takes (N, *measurement_shape)
    op = dj.guidance.operators.matrix(A, (2,))
    results = []
    for fixture, (cov, sigma_y) in FIXTURES.items():
        prior = dj.data.LinearGaussian(np.zeros(2), cov)
        m, c = (np.asarray(v) for v in prior.posterior(A, y[0], sigma_y))
        se = float(np.sqrt(np.diag(c).max() / args.samples))
        for name, (solver, guide, steps) in methods(op, y, sigma_y).items():
            ts = dj.timesteps.logsnr_uniform(SCHED, steps)
            x_T = prior.sample(jax.random.key(0), args.samples, SCHED, ts[0])
            x, _ = dj.sample(solver, guide(prior.denoiser(SCHED)), ts, jax.random.key(1), x_T)
            mean_err, cov_err = errors(x, m, c)
            results.append(dict(fixture=fixture, method=name, steps=steps, mean_error=mean_err, cov_error=cov_err,
                                mc_se=se))  # fmt: skip
        mask = jnp.array([1.0, 0.0])
        for r in (1, 5) if sigma_y == 0 else ():  # RePaint takes the observed entries as exact
            ts = dj.timesteps.logsnr_uniform(SCHED, 30)
            x_T = prior.sample(jax.random.key(0), args.samples, SCHED, ts[0])
            ys = jnp.broadcast_to(jnp.array([1.0, 0.0]), x_T.shape)
            x, _ = dj.guidance.repaint(prior.denoiser(SCHED), ts, jax.random.key(1), x_T, ys, mask,
                                       jump_length=5, jump_n_sample=r)  # fmt: skip
            mean_err, cov_err = errors(x, m, c)
            results.append(dict(fixture=fixture, method=f"repaint r={r}", steps=30, mean_error=mean_err,
                                cov_error=cov_err, mc_se=se))  # fmt: skip
    print(f"CPU float64, JAX {jax.__version__}, {args.samples} samples per row")
    print(f"{'fixture':<8}{'method':<26}{'steps':>6}{'|mean err|':>12}{'|cov err|':>11}{'MC se':>8}")
    for r in results:
        print(f"{r['fixture']:<8}{r['method']:<26}{r['steps']:>6}{r['mean_error']:>12.4f}{r['cov_error']:>11.4f}"
              f"{r['mc_se']:>8.4f}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"jax": jax.__version__, "python": platform.python_version(), "rows": results}, f, indent=2)


if __name__ == "__main__":
    main()
