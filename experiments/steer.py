r"""Steer a sampler with a reward: FK steering, TDS, importance sampling and best-of-N against the
number of particles K, at equal NFE per output (K particles x steps).

For every method and K, B independent populations (`config.num_conditions`) each give one output:
a resampled particle (FK, TDS, importance sampling: samples of p(x) exp(lambda r(x)) / Z) or the
highest-reward particle (best-of-N: a search result, not a sample). The table reports the outputs'
mean reward, the fraction that hit the target, their diversity (mean pairwise distance: points for
the toy, classifier features for images when a classifier run is given, else pixels), network
evaluations per output (TDS adds one backward pass to each) and seconds per batch after a
compiling run. Writes results.json, scaling.png (reward and hit rate against K) and the outputs of
the largest K per method (samples_<method>.png) next to unsteered samples (samples_K1.png).

    python experiments/steer.py --config=configs/steer.py:toy --workdir=runs/steer_toy
"""

import json
import os
import time

import cli
import jax
import numpy as np
import plots
import tasks
from absl import flags, logging

import diffjax as dj

_CONFIG = cli.define_config("configs/steer.py", "steering config")
_WORKDIR = flags.DEFINE_string("workdir", None, "where to write results.json and the figures")

METHODS = ("fk", "tds", "importance", "best_of_n")


def steer(method, task, config, solver, schedule, ts, key, x_T):
    """One batch of outputs (B, *event) and the network evaluations each cost."""
    reward, den, lmbda = task.reward, task.denoiser, config.lmbda
    key_run, key_pick = jax.random.split(key)
    if method == "tds":
        p = dj.steering.tds(den, ts, key_run, x_T, dj.steering.reward_twist(reward, lmbda), cond=task.cond)
    elif method == "fk":
        p = dj.steering.fk_steer(solver, den, ts, key_run, x_T, reward, lmbda=lmbda, potential=config.potential,
                                 reward_on=config.reward_on, schedule=schedule, cond=task.cond)  # fmt: skip
    else:
        p = dj.steering.importance_sample(solver, den, ts, key_run, x_T, reward, lmbda=lmbda, cond=task.cond)
    x = dj.steering.best_of(p) if method == "best_of_n" else dj.steering.resampled(key_pick, p)
    return x, int(p.nfe) * x_T.shape[1]


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    methods = tuple(config.methods)
    for m in methods:
        dj._checks.one_of("config.methods", m, METHODS)
    particles = [dj._checks.positive_int("config.particles", k) for k in config.particles]
    b = dj._checks.positive_int("config.num_conditions", config.num_conditions)
    steps = dj._checks.positive_int("config.steps", config.steps)
    lmbda = dj._checks.finite("config.lmbda", config.lmbda)
    threshold = dj._checks.in_range("config.ess_threshold", config.ess_threshold, 0.0, 1.0)
    solver = dj.specs.parse("config.solver", config.solver, dj.solvers.REGISTRY)()
    grid = dj.specs.parse("config.grid", config.grid, dj.timesteps.REGISTRY)
    task = tasks.build(config)
    ts = grid(task.schedule, steps)
    schedule = dj.steering.resampling_schedule(steps, start=config.resample_start, interval=config.resample_interval,
                                               threshold=threshold or None)  # fmt: skip

    rows, outputs = [], {}
    for k in particles:
        x_T = dj.prior_sample(jax.random.key(config.seed), task.schedule, ts, (b, k) + tuple(task.event))
        for method in methods if k > 1 else ("importance",):  # K = 1: plain sampling
            args = (method, task, config, solver, schedule, ts, jax.random.key(config.seed + 1), x_T)
            jax.block_until_ready(steer(*args)[0])  # compiles
            start = time.perf_counter()
            x, nfe = steer(*args)
            x = np.asarray(jax.block_until_ready(x))
            seconds = time.perf_counter() - start
            name = method if k > 1 else "unsteered"
            rows.append({"method": name, "K": k, "nfe": nfe, "grad": method == "tds" and k > 1, **tasks.score(task, x),
                         "seconds": seconds})  # fmt: skip
            outputs[name] = x
    exact = None if task.exact is None else tasks.score(task, task.exact, diversity_of=b)

    print(f"\n{config.task}: reward {config.reward}, lambda {lmbda:g}, {steps} steps, {b} outputs per row")
    header = f"{'method':<12}{'K':>4}{'NFE':>6}{'reward':>10}{'hit':>8}{'diversity':>11}{'seconds':>9}"
    print(header + "\n" + "-" * len(header))
    for r in rows:
        nfe = f"{r['nfe']}{'+g' if r['grad'] else ''}"
        print(f"{r['method']:<12}{r['K']:>4}{nfe:>6}{r['reward']:>10.4f}{r['hit']:>8.3f}{r['diversity']:>11.3f}"
              f"{r['seconds']:>9.3f}")  # fmt: skip
    if exact is not None:
        print(f"{'exact target':<22}{exact['reward']:>10.4f}{exact['hit']:>8.3f}{exact['diversity']:>11.3f}")
    print("(+g: each network evaluation also has a backward pass)")

    if _WORKDIR.value:
        os.makedirs(_WORKDIR.value, exist_ok=True)
        with open(os.path.join(_WORKDIR.value, "results.json"), "w") as f:
            json.dump({"config": config.to_dict(), "rows": rows, "exact_target": exact}, f, indent=2)
        plots.save_scaling(
            os.path.join(_WORKDIR.value, "scaling.png"),
            rows,
            x="K",
            xlabel="particles K (NFE = K x steps)",
            baseline="unsteered",
            exact=exact,
        )
        for name, x in outputs.items():
            title = f"{name}, K = {particles[-1] if name != 'unsteered' else 1}"
            file = "samples_K1.png" if name == "unsteered" else f"samples_{name}.png"
            plots.save_samples(os.path.join(_WORKDIR.value, file), x[:256] if x.ndim > 2 else x, title)


if __name__ == "__main__":
    cli.run(main)
