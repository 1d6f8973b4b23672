r"""Sample a model with several solvers and grid sizes, and score the samples.

For the built-in Gaussian-mixture oracle (`configs/gmm.py`) every sample is scored against the
exact answer: the probability-flow ODE solved by diffrax from the same start (deterministic
solvers), the mean exact log-density, the mode weights and the within-mode spread, with the
exact reverse-kernel sampler as the Monte Carlo floor. Scores use the exact marginal at the grid's
last time (p_t there, which is p_0 when the grid ends at sigma = 0).

    python experiments/sample.py --config=configs/gmm.py [--workdir=runs/gmm]
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

import diffjax as dj

_CONFIG = config_flags.DEFINE_config_file("config", "configs/gmm.py", "sampling config", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where to write results.json and samples.png")


def _blobs():
    means = np.array(
        [
            [1.5, -1.0, 0.5, 0.0, 1.0, -0.5, 0.2, 2.0],
            [-2.0, 0.5, 1.0, 1.0, -1.0, 0.0, -0.7, 0.3],
            [0.3, 2.0, -1.5, -1.0, 0.0, 1.5, 1.1, -1.2],
        ]
    )
    scales = np.array(
        [
            [0.3, 0.5, 0.2, 0.7, 0.1, 0.4, 0.25, 0.6],
            [0.1, 0.4, 1.0, 0.2, 0.3, 0.6, 0.5, 0.15],
            [0.6, 0.2, 0.35, 0.4, 0.8, 0.1, 0.3, 0.45],
        ]
    )
    return dj.data.GaussianMixture([0.2, 0.5, 0.3], means, scales)


def main(argv):
    del argv
    config = _CONFIG.value
    jax.config.update("jax_enable_x64", bool(config.x64))
    gmm = dj.data.ring() if config.data == "ring" else _blobs()
    sched = dj.specs.parse("config.schedule", config.schedule, dj.schedules.REGISTRY)()
    grid = dj.specs.parse("config.grid", config.grid, dj.timesteps.REGISTRY)
    solvers = {spec: dj.specs.parse("config.solvers", spec, dj.solvers.REGISTRY)() for spec in config.solvers}
    steps = [dj._checks.positive_int("config.steps", n) for n in config.steps]
    den = gmm.denoiser(sched)
    key_start, key_solver, key_exact = jax.random.split(jax.random.key(config.seed), 3)

    rows = []
    for n in steps:
        ts = grid(sched, n)
        x_T = gmm.sample(key_start, config.num_samples, sched, ts[0])  # exact p_T: no prior mismatch
        reference = gmm.pf_ode(x_T, sched, ts[0], ts[-1])
        exact, _ = dj.sample(gmm.exact_solver(sched), den, ts, key_exact, x_T)
        rows.append(
            {
                "solver": "exact reverse kernel",
                "steps": n,
                "nfe": 0,
                "pf_ode_rmse": None,
                **dj.metrics.mixture_scores(gmm, exact, sched, ts[-1]),
                "seconds": None,
            }
        )
        for spec, solver in solvers.items():
            x, info = dj.sample(solver, den, ts, key_solver, x_T)
            jax.block_until_ready(x)
            start = time.perf_counter()
            x, info = dj.sample(solver, den, ts, key_solver, x_T)
            x = jax.block_until_ready(x)
            seconds = time.perf_counter() - start
            other_key, _ = dj.sample(solver, den, ts, key_exact, x_T)
            deterministic = bool(jnp.array_equal(x, other_key))
            rmse = float(jnp.sqrt(jnp.mean((x - reference) ** 2))) if deterministic else None
            rows.append(
                {
                    "solver": spec,
                    "steps": n,
                    "nfe": int(info.nfe),
                    "pf_ode_rmse": rmse,
                    **dj.metrics.mixture_scores(gmm, x, sched, ts[-1]),
                    "seconds": seconds,
                }
            )

    t_end = grid(sched, steps[0])[-1]
    truth = dj.metrics.mixture_scores(gmm, gmm.sample(key_exact, 200_000, sched, t_end), sched, t_end)
    print(
        f"\n{config.data} mixture, schedule {config.schedule}, grid {config.grid}, {config.num_samples} samples;"
        f" scored against the exact p_t at the grid's end t = {float(t_end):g},"
        f" where E[log p_t] = {truth['mean_log_p']:.4f}"
    )
    header = f"{'solver':<22}{'steps':>6}{'NFE':>6}{'PF-ODE RMSE':>13}{'E log p':>10}{'mode TV':>9}{'std err':>9}"
    print(header + "\n" + "-" * len(header))
    for r in rows:
        rmse = "-" if r["pf_ode_rmse"] is None else f"{r['pf_ode_rmse']:.2e}"
        print(
            f"{r['solver']:<22}{r['steps']:>6}{r['nfe']:>6}{rmse:>13}{r['mean_log_p']:>10.4f}"
            f"{r['mode_tv']:>9.4f}{r['std_rel_err']:>9.3f}"
        )

    if _WORKDIR.value:
        os.makedirs(_WORKDIR.value, exist_ok=True)
        with open(os.path.join(_WORKDIR.value, "results.json"), "w") as f:
            json.dump({"config": config.to_dict(), "exact": truth, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    app.run(main)
