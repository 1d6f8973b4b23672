r"""A tour of diffjax, README's first command: train, sample and steer, and write a report.

    python experiments/tour.py [--config=configs/tour.py:cpu] [--workdir=runs/tour]

1. Solvers on the exact 8-mode ring mixture (its denoiser is exact, so only the solver errs): each
   solver's distance to the exact probability-flow ODE's answer from the same noise, against NFE.
2. A toy MLP trained on two moons (`configs/train.py:moons`), sampled at several NFEs and scored by
   the sliced Wasserstein distance to fresh moons, beside the distance between two fresh sets.
3. A class-conditional digits UNet and the digits classifier (`configs/train.py:digits_unet`,
   `configs/classifier.py:digits`), the classifier's accuracy on the model's class-conditional samples.
4. Steering the digits model, sampled unconditionally, towards one class with the classifier's
   log-probability as reward: FK steering against best-of-N and random search over initial noises,
   at equal network evaluations (NFE) per output.

Writes `report.md` with the tables and figures (`error_vs_nfe.png`, `moons.png`, `digits.png`,
`reward_vs_nfe.png`, `steered.png`) and `results.json` to the workdir, and the trained runs beside
them (`moons/`, `digits/`, `digits_classifier/`, each loadable with `dj.training.load_run`); a second
tour reuses them. Trains with experiments/train.py, whose progress bars show.
"""

import datetime
import json
import os
import subprocess
import sys
import time

import cli
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import plots
import tasks
import tqdm
from absl import flags, logging

import diffjax as dj

_CONFIG = cli.define_config("configs/tour.py", "tour config")
_WORKDIR = flags.DEFINE_string("workdir", "runs/tour", "where to write report.md, its figures and the trained runs")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def train(workdir, name, config, overrides):
    """The run `workdir/name` trained by experiments/train.py (reused if it has finished); exits with
    train.py's code if it fails (its own message is on stderr)."""
    path = os.path.join(workdir, name)
    cmd = [sys.executable, os.path.join(HERE, "train.py"), f"--config={os.path.join(ROOT, 'configs', config)}",
           f"--workdir={path}", *overrides]  # fmt: skip
    print(f"\n[{name}] {' '.join(cmd[1:])}", flush=True)
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # train.py's progress bar is on stderr
    if done.returncode:
        print(f"error: training {name} exited with code {done.returncode}", file=sys.stderr)
        sys.exit(done.returncode)
    return path


def markdown(rows, columns):
    """A markdown table of `rows` (dicts) with `columns` as (header, key, format)."""
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join("-" if r[k] is None else format(r[k], f) for _, k, f in columns) + " |")
    return "\n".join(lines)


def error_table(rows, label):
    """The markdown table of error rows (solver, steps, nfe, error), the error's column headed `label`."""
    return markdown(
        rows, [("solver", "solver", "s"), ("steps", "steps", "d"), ("NFE", "nfe", "d"), (label, "error", ".2e")]
    )


def exact_solvers(c, key):
    """Part 1: rows (solver, steps, nfe, rmse) on the ring mixture, against the exact PF-ODE."""
    gmm = dj.data.ring()
    sched = dj.specs.parse("config.solvers.schedule", c.schedule, dj.schedules.REGISTRY)()
    grid = dj.specs.parse("config.solvers.grid", c.grid, dj.timesteps.REGISTRY)
    solvers = {s: dj.specs.parse("config.solvers.names", s, dj.solvers.REGISTRY)() for s in c.names}
    den, rows, references = gmm.denoiser(sched), [], {}
    progress = tqdm.tqdm(total=len(c.steps) * len(solvers), desc="1. solvers", dynamic_ncols=True)
    for n in c.steps:
        ts = grid(sched, n)
        ends = (float(ts[0]), float(ts[-1]))  # grids of every size share them: one adaptive solve (the slow part)
        if ends not in references:
            x_T = gmm.sample(key, c.num, sched, ts[0])
            references[ends] = x_T, gmm.pf_ode(x_T, sched, ts[0], ts[-1])
        x_T, reference = references[ends]
        for spec, solver in solvers.items():
            x, info = dj.sample(solver, den, ts, key, x_T)
            rmse = float(jnp.sqrt(jnp.mean((x - reference) ** 2)))
            rows.append({"solver": spec, "steps": n, "nfe": int(info.nfe), "error": rmse})
            progress.update()
    progress.close()
    return rows


def toy_model(c, run, key):
    """Part 2: rows (solver, steps, nfe, sliced W2^2 to fresh moons), the data-vs-data floor, samples."""
    fresh = lambda seed: np.asarray(run.data.fresh(jax.random.key(seed), c.num))  # noqa: E731
    floor = float(dj.metrics.sliced_w2_squared(key, fresh(1), fresh(2)))
    grid = dj.specs.parse("config.sample.grid", run.config.sample.grid, dj.timesteps.REGISTRY)
    rows, samples = [], None
    progress = tqdm.tqdm(total=len(c.steps) * len(c.solvers), desc="2. moons", dynamic_ncols=True)
    for spec in c.solvers:
        solver = dj.specs.parse("config.toy.solvers", spec, dj.solvers.REGISTRY)()
        for n in c.steps:
            ts = grid(run.schedule, n)
            x_T = dj.prior_sample(jax.random.fold_in(key, n), run.schedule, ts, (c.num, 2))
            samples, info = dj.sample(solver, run.denoiser, ts, key, x_T)
            sw2 = float(dj.metrics.sliced_w2_squared(key, samples, fresh(1)))
            rows.append({"solver": spec, "steps": n, "nfe": int(info.nfe), "error": sw2})
            progress.update()
    progress.close()
    return rows, floor, np.asarray(samples)


def digits_model(c, run, judge, key):
    """Part 3: class-conditional samples (labels 0..9 cycling) and the classifier's accuracy on them."""
    ts = dj.timesteps.logsnr_uniform(run.schedule, c.steps)
    labels = jnp.arange(c.num) % run.num_classes
    x_T = dj.prior_sample(key, run.schedule, ts, (c.num,) + run.event_shape)
    solver = dj.specs.parse("config.digits.solver", c.solver, dj.solvers.REGISTRY)()
    x, info = dj.sample(solver, run.denoiser, ts, key, x_T, cond=labels)
    x = np.asarray(x)
    accuracy = float(np.mean(judge(x).logits.argmax(-1) == np.asarray(labels)))
    return x, accuracy, int(info.nfe)


def steer(c, task, key):
    """Part 4: rows (method, K, nfe per output, reward, hit, diversity) and the outputs at the largest K."""
    ts = dj.timesteps.logsnr_uniform(task.schedule, c.steps)
    solver = dj.specs.parse("config.steer.solver", c.solver, dj.solvers.REGISTRY)()
    search = dj.specs.parse("config.steer.search_solver", c.search_solver, dj.solvers.REGISTRY)()
    generator = dj.steering.ode_generator(search, task.denoiser, ts)
    b, event = c.num_conditions, tuple(task.event)
    key_run, key_pick = jax.random.split(key)

    def run(method, k):
        x_T = dj.prior_sample(key, task.schedule, ts, (b, k) + event)
        common = (solver, task.denoiser, ts, key_run, x_T, task.reward)
        if method == "unsteered":
            p = dj.steering.importance_sample(*common, lmbda=c.lmbda, cond=task.cond)
            return dj.steering.resampled(key_pick, p), int(p.nfe) * k
        if method == "FK":
            p = dj.steering.fk_steer(*common, lmbda=c.lmbda, cond=task.cond)
            return dj.steering.resampled(key_pick, p), int(p.nfe) * k
        if method == "best-of-N":
            p = dj.steering.importance_sample(*common, lmbda=c.lmbda, cond=task.cond)
            return dj.steering.best_of(p), int(p.nfe) * k
        result = dj.steering.random_search(generator, task.reward, key_run, (b,) + event, num_candidates=k,
                                           cond=task.cond)  # fmt: skip
        return result.x, int(result.nfe)

    plan = [("unsteered", 1)] + [(m, k) for k in c.particles if k > 1 for m in ("FK", "best-of-N", "random search")]
    rows, outputs = [], {}
    for method, k in tqdm.tqdm(plan, desc="4. steering", dynamic_ncols=True):
        x, nfe = run(method, k)
        x = np.asarray(x)
        rows.append({"method": method, "K": k, "nfe": nfe, **tasks.score(task, x)})
        outputs[method] = x
    return rows, outputs


def device_line() -> str:
    devices = jax.devices()
    return f"{len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), JAX {jax.__version__}"


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    config, workdir = _CONFIG.value, _WORKDIR.value
    for name, n in [("config.solvers.steps", s) for s in config.solvers.steps] + [
        ("config.toy.steps", s) for s in config.toy.steps
    ]:
        dj._checks.positive_int(name, n)
    for k in config.steer.particles:
        dj._checks.positive_int("config.steer.particles", k)
    if 1 not in config.steer.particles:
        raise ValueError(f"config.steer.particles must include 1 (unsteered), got {tuple(config.steer.particles)}")
    for name in ("num_conditions", "steps"):
        dj._checks.positive_int(f"config.steer.{name}", config.steer[name])
    dj._checks.finite("config.steer.lmbda", config.steer.lmbda)
    os.makedirs(workdir, exist_ok=True)
    key = jax.random.key(config.seed)
    print(f"diffjax tour on {device_line()}; writing {os.path.abspath(workdir)}", flush=True)
    seconds = {}

    tick = time.perf_counter()
    solver_rows = exact_solvers(config.solvers, key)
    seconds["1. solvers"] = time.perf_counter() - tick

    tick = time.perf_counter()
    moons = dj.training.load_run(train(workdir, "moons", "train.py:moons", config.toy.train))
    toy_rows, floor, toy_samples = toy_model(config.toy, moons, key)
    seconds["2. moons"] = time.perf_counter() - tick

    tick = time.perf_counter()
    digits_path = train(workdir, "digits", "train.py:digits_unet", config.digits.train)
    classifier_path = train(workdir, "digits_classifier", "classifier.py:digits", config.digits.classifier_train)
    digits = dj.training.load_run(digits_path)
    classifier = dj.training.load_run(classifier_path)
    judge = dj.training.classifier_apply(classifier.module, classifier.ema_params)
    digit_samples, accuracy, digits_nfe = digits_model(config.digits, digits, judge, key)
    held_out = json.load(open(os.path.join(classifier_path, "final.json")))["held_out_accuracy"]
    seconds["3. digits"] = time.perf_counter() - tick

    tick = time.perf_counter()
    task = tasks.image_task(
        ml_collections.ConfigDict(dict(run=digits_path, classifier_run=classifier_path, use_ema=True,
                                       reward=f"classifier(target={config.steer.target})",
                                       num_conditions=config.steer.num_conditions, hit_threshold=0.0))
    )  # fmt: skip
    steer_rows, outputs = steer(config.steer, task, key)
    seconds["4. steering"] = time.perf_counter() - tick

    plots.save_error_vs_nfe(os.path.join(workdir, "error_vs_nfe.png"), [
        (solver_rows, "exact 8-mode mixture", "RMSE to the exact PF-ODE", None),
        (toy_rows, "two moons, trained MLP", "sliced W2² to fresh moons", floor),
    ])  # fmt: skip
    plots.save_samples(os.path.join(workdir, "moons.png"), toy_samples,
                       f"{config.toy.solvers[-1]}, {config.toy.steps[-1]} steps")  # fmt: skip
    title = f"labels 0-9 by column, {config.digits.solver}, {config.digits.steps} steps"
    plots.save_samples(os.path.join(workdir, "digits.png"), digit_samples, title, columns=10)
    k = max(config.steer.particles)
    plots.save_scaling(os.path.join(workdir, "reward_vs_nfe.png"), steer_rows, x="nfe",
                       xlabel=f"NFE per output (K particles x {config.steer.steps} steps)", baseline="unsteered",
                       ylabels={"reward": f"log p(class {config.steer.target} | x)",
                                "hit": f"fraction classified {config.steer.target}"})  # fmt: skip
    last = [outputs["unsteered"]] + [outputs[m] for m in ("FK", "best-of-N", "random search") if m in outputs]
    plots.save_samples(os.path.join(workdir, "steered.png"), np.concatenate([x[:8] for x in last]),
                       f"rows: unsteered, FK, best-of-N, random search (K = {k})", columns=8)  # fmt: skip

    report = [
        "# diffjax tour",
        f"{datetime.date.today()}, {device_line()}; "
        + ", ".join(f"{part} {s:.0f} s" for part, s in seconds.items())
        + ". Command: `python experiments/tour.py "
        + " ".join(sys.argv[1:])
        + "`",
        "## 1. Solvers on an exact mixture",
        f"The 8-mode ring's denoiser is exact, so a sample's error is the solver's alone: the RMSE between "
        f"{config.solvers.num} samples and the exact probability-flow ODE's answer from the same noise "
        f"(diffrax, `GaussianMixture.pf_ode`), schedule {config.solvers.schedule}, grid {config.solvers.grid}. "
        "Lower is better.",
        error_table(solver_rows, "RMSE to the exact ODE (lower is better)"),
        "![error against NFE](error_vs_nfe.png)",
        "## 2. A toy model: two moons",
        f"The MLP of `configs/train.py:moons` ({moons.config.optim.total_steps} steps), sampled with each solver: "
        f"squared sliced 2-Wasserstein distance of {config.toy.num} samples to fresh moons (lower is better). "
        f"Two fresh sets of moons are {floor:.2e} apart, the floor.",
        error_table(toy_rows, "sliced W2^2 (lower is better)"),
        "![moons](moons.png)",
        "## 3. A digits model",
        f"A class-conditional UNet on scikit-learn's 8x8 digits ({digits.config.optim.total_steps} steps), "
        f"sampled with {config.digits.solver} in {digits_nfe} NFE. The project's digits classifier "
        f"(held-out accuracy {held_out:.3f}) classifies {accuracy:.3f} of the samples as the label asked "
        "for (higher is better).",
        "![digits](digits.png)",
        "## 4. Steering against search",
        f"The digits model sampled unconditionally (its null label), steered towards class {config.steer.target}"
        f" with the classifier's log-probability of that class as reward r(x), lambda = {config.steer.lmbda:g}. "
        f"{config.steer.num_conditions} outputs per row. FK steering resamples K particles by the reward "
        "(outputs are samples of p(x) exp(lambda r(x)) / Z); best-of-N keeps the best of K independent "
        f"samples; random search keeps the best of K noises sampled by {config.steer.search_solver}. "
        "Reward and hit rate: higher is better; diversity is the mean distance between outputs in the "
        "classifier's feature space (higher: less collapsed).",
        markdown(
            steer_rows,
            [
                ("method", "method", "s"),
                ("K", "K", "d"),
                ("NFE per output", "nfe", "d"),
                ("reward log p(class given x) (higher is better)", "reward", ".3f"),
                ("hit rate (higher is better)", "hit", ".3f"),
                ("diversity", "diversity", ".3f"),
            ],
        ),
        "![reward against NFE](reward_vs_nfe.png)",
        "![steered samples](steered.png)",
    ]
    text = "\n\n".join(report) + "\n"
    with open(os.path.join(workdir, "report.md"), "w") as f:
        f.write(text)
    results = {"config": config.to_dict(), "device": device_line(), "seconds": seconds, "solvers": solver_rows,
               "toy": {"rows": toy_rows, "floor": floor}, "digits": {"accuracy": accuracy,
               "classifier_held_out_accuracy": held_out}, "steering": steer_rows}  # fmt: skip
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print("\n" + text.split("\n\n", 2)[2].replace("![", "figure: ["))
    print(f"report: {os.path.abspath(os.path.join(workdir, 'report.md'))}")


if __name__ == "__main__":
    cli.run(main)
