r"""Search with a verifier: mean score of the best sample against the network evaluations spent, for
random search, zero-order search, search over paths and FK steering (its best particle), on the
toy oracle or a trained model (`configs/search.py`).

Each row: method, budget N (about N samples' worth of NFE), NFE actually spent per output, mean
verifier score of the B outputs, hit rate, diversity and seconds after a compiling run; N = 1 is
plain sampling with the deterministic solver. Writes results.json and scaling.png (score and hit
rate against NFE).

With a workdir, each finished row is appended to `progress.jsonl` (one write, flushed), so a run
killed part-way and started again with the same config skips the rows it has; a workdir whose
progress file holds another config is refused (exit code 2, naming the fields).

    python experiments/search.py --config=configs/search.py:toy --workdir=runs/search_toy
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
from diffjax.training import logs

_CONFIG = cli.define_config("configs/search.py", "search config")
_WORKDIR = flags.DEFINE_string("workdir", None, "where to write results.json and scaling.png")

METHODS = ("random", "zero_order", "paths", "fk")


def run_search(method, n, task, config, ts, key, solver, generator, fk_solver):
    """The B best outputs and the NFE spent per output, or None when the budget is too small."""
    b, event = config.num_conditions, tuple(task.event)
    shape = (b,) + event
    if method == "random":
        return dj.steering.random_search(generator, task.reward, key, shape, num_candidates=n, cond=task.cond)
    if method == "zero_order":
        neighbours = min(3, n - 1)
        if neighbours < 1:
            return None
        kwargs = dict(rounds=n // (neighbours + 1), num_neighbors=neighbours, cosine=config.cosine, cond=task.cond)
        return dj.steering.zero_order_search(generator, task.reward, key, shape, **kwargs)
    if method == "paths":
        if n < 2:
            return None
        steps = len(ts) - 1
        return dj.steering.path_search(solver, task.denoiser, ts, key, task.reward, shape, num_paths=n // 2,
                                       branches=config.branches, start=max(steps // 2, config.forward),
                                       forward=config.forward, backward=config.backward, cond=task.cond)  # fmt: skip
    if n < 2:
        return None
    x_T = dj.prior_sample(key, task.schedule, ts, (b, n) + event)
    p = dj.steering.fk_steer(fk_solver, task.denoiser, ts, key, x_T, task.reward, lmbda=config.lmbda, cond=task.cond)
    best = dj.steering.best_of(p)
    score = p.rewards.max(1)
    return dj.steering.SearchResult(best, score, x_T[:, 0], score[None], p.nfe * n, p.ancestors)


def resume(progress, config):
    """The rows {(method, budget): row} a killed run left in `progress` (none without a workdir or a
    file); the file is started with the config as its first row. A file of another config is refused
    with a ValueError naming the differing fields."""
    if progress is None:
        return {}
    config = json.loads(json.dumps(config))  # as the file holds it (tuples as lists)
    logged = logs.read_log(progress)  # a torn last line (killed mid-write) is dropped
    if not logged:
        os.makedirs(os.path.dirname(progress), exist_ok=True)
        logs.rewrite_log(progress, [{"step": 0, "config": config}])
        return {}
    saved = logged[0].get("config", {})
    if saved != config:
        fields = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        raise ValueError(f"{progress} holds rows of another config (fields: {', '.join(fields)}); use another "
                         "--workdir or delete the file")  # fmt: skip
    logs.rewrite_log(progress, logged)  # without a torn line, so that the next row starts a line
    return {(r["row"]["method"], r["row"]["budget"]): r["row"] for r in logged[1:]}


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    for m in config.methods:
        dj._checks.one_of("config.methods", m, METHODS)
    budgets = [dj._checks.positive_int("config.budgets", n) for n in config.budgets]
    dj._checks.positive_int("config.num_conditions", config.num_conditions)
    steps = dj._checks.positive_int("config.steps", config.steps)
    dj._checks.finite("config.lmbda", config.lmbda)
    task = tasks.build(config)
    ts = dj.specs.parse("config.grid", config.grid, dj.timesteps.REGISTRY)(task.schedule, steps)
    solver = dj.specs.parse("config.solver", config.solver, dj.solvers.REGISTRY)()
    fk_solver = dj.specs.parse("config.fk_solver", config.fk_solver, dj.solvers.REGISTRY)()
    generator = dj.steering.ode_generator(solver, task.denoiser, ts)
    methods = (solver, generator, fk_solver)

    progress = os.path.join(_WORKDIR.value, "progress.jsonl") if _WORKDIR.value else None
    done = resume(progress, config.to_dict())
    rows = []
    for n in budgets:
        for method in config.methods if n > 1 else ("random",):
            name = method if n > 1 else "plain"
            if (name, n) in done:
                rows.append(done[name, n])
                continue
            key = jax.random.key(config.seed)
            result = run_search(method, n, task, config, ts, key, *methods)  # compiles
            if result is None:
                continue
            jax.block_until_ready(result.x)
            start = time.perf_counter()
            result = jax.block_until_ready(run_search(method, n, task, config, ts, key, *methods))
            seconds = time.perf_counter() - start
            rows.append({"method": name, "budget": n, "nfe": int(result.nfe), **tasks.score(task, np.asarray(result.x)),
                         "seconds": seconds})  # fmt: skip
            if progress:
                logs.append_log(progress, {"step": len(rows), "row": rows[-1]})

    print(f"\n{config.task}: verifier {config.reward}, {config.solver} on {steps} steps, "
          f"{config.num_conditions} outputs per row")  # fmt: skip
    header = f"{'method':<12}{'budget':>7}{'NFE':>6}{'score':>10}{'hit':>8}{'diversity':>11}{'seconds':>9}"
    print(header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['method']:<12}{r['budget']:>7}{r['nfe']:>6}{r['reward']:>10.4f}{r['hit']:>8.3f}"
              f"{r['diversity']:>11.3f}{r['seconds']:>9.3f}")  # fmt: skip
    if _WORKDIR.value:
        os.makedirs(_WORKDIR.value, exist_ok=True)
        with open(os.path.join(_WORKDIR.value, "results.json"), "w") as f:
            json.dump({"config": config.to_dict(), "rows": rows}, f, indent=2)
        plots.save_scaling(
            os.path.join(_WORKDIR.value, "scaling.png"), rows, x="nfe", xlabel="NFE per output", baseline="plain"
        )


if __name__ == "__main__":
    cli.run(main)
