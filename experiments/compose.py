r"""Compose trained digits models at sampling time (`diffjax.compose`): two experts trained on disjoint
label sets sampled alone, averaged (the naive baseline), superposed by SuperDiff's OR (their mixture)
and AND (where both densities are equal), and mixed by a learned router (the decentralized ensemble),
next to one model trained on every digit.

For each method the table reports, from a clean digits classifier (`--config.classifier`): the share
of samples classified into the first expert's classes, how many of the 10 classes occur in at least
2% of the samples, the classifier's mean confidence (max probability), and the Frechet distance of
its features to the held-out digits (digits-FID: lower is better; with few samples it is biased
upwards, so compare rows, not papers). OR and AND also report the median |log q1 - log q2| of their
running Itô estimates at the end (AND drives it towards 0). `grid.png` shows one row per method;
results.json holds the table and the class histograms.

    python experiments/compose.py --config=configs/compose.py:digits \
        --config.experts="('runs/expert0', 'runs/expert1')" --config.router=runs/router \
        --config.full=runs/digits --config.classifier=runs/digits_classifier --workdir=runs/compose
"""

import json
import os
import time

import cli
import jax
import jax.numpy as jnp
import numpy as np
import plots
from absl import flags, logging
from tqdm import tqdm

import diffjax as dj
from diffjax import compose

_CONFIG = cli.define_config("configs/compose.py", "composition config")
_WORKDIR = flags.DEFINE_string("workdir", None, "where to write results.json and grid.png")

METHODS = ("expert0", "expert1", "average", "or", "and", "ensemble", "full")
NEEDS = {"ensemble": "router", "full": "full"}  # method -> the config field naming the run it needs


def check(config):
    """Every field, before any work: a ValueError naming the first bad one."""
    if len(config.experts) != 2 or not all(config.experts):
        raise ValueError(f"config.experts must name two expert workdirs, got {tuple(config.experts)!r}")
    for method in config.methods:
        dj._checks.one_of("config.methods", method, METHODS)
    dj._checks.positive_int("config.num_samples", config.num_samples)
    dj._checks.positive_int("config.steps", config.steps)
    dj._checks.finite("config.temperature", config.temperature)
    dj._checks.positive_int("config.num_probes", config.num_probes)
    dj.specs.parse("config.grid", config.grid, dj.timesteps.REGISTRY)
    solvers = {f: dj.specs.parse(f"config.{f}", config[f], dj.solvers.REGISTRY)() for f in
               ("solver", "or_solver", "and_solver")}  # fmt: skip
    compose.superdiff(solvers["and_solver"], "and")  # a ValueError if AND cannot use it
    return solvers


def _unconditional(run):
    """The run's EMA denoiser, with its null label where it is class-conditional."""
    den = run.denoiser
    return den if run.null_label is None else den.replace(cond=jnp.full((1,), run.null_label, jnp.int32))


def _batched(den, n):
    return den if den.cond is None else den.replace(cond=jnp.broadcast_to(den.cond[:1], (n,)))


def draw(method, models, solvers, ts, key, x_T, config):
    """(samples, extra) for one method; extra holds OR's/AND's final |log q1 - log q2|."""
    n = len(x_T)
    experts = [_batched(d, n) for d in models["experts"]]
    if method in ("expert0", "expert1"):
        return dj.sample(solvers["solver"], experts[int(method[-1])], ts, key, x_T)[0], {}
    if method == "average":
        return dj.sample(solvers["and_solver"], compose.average(*experts), ts, key, x_T)[0], {}
    if method in ("or", "and"):
        inner = solvers["or_solver" if method == "or" else "and_solver"]
        options = dict(temperature=config.temperature) if method == "or" else {}
        sd = compose.superdiff(inner, method, num_probes=config.num_probes, **options)
        x, info = compose.sample_with_density(sd, compose.stack(*experts), ts, key, x_T)
        gap = jnp.abs(info.log_q[:, 0] - info.log_q[:, 1])
        return x, {"median_log_q_gap": float(jnp.median(gap))}
    if method == "ensemble":
        return dj.sample(solvers["solver"], compose.ensemble(experts, models["router"]), ts, key, x_T)[0], {}
    return dj.sample(solvers["solver"], _batched(models["full"], n), ts, key, x_T)[0], {}


def class_statistics(logits, first_classes):
    """Share in `first_classes`, classes present (>= 2%), mean confidence and the histogram, from logits."""
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))
    labels = probs.argmax(-1)
    histogram = np.bincount(labels, minlength=probs.shape[-1]) / len(labels)
    return dict(first_share=float(np.isin(labels, first_classes).mean()), classes=int(np.sum(histogram >= 0.02)),
                confidence=float(probs.max(-1).mean()), histogram=histogram.tolist())  # fmt: skip


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    solvers = check(config)
    runs = {f"expert{k}": dj.training.load_run(p, field=f"config.experts[{k}]") for k, p in enumerate(config.experts)}
    models = {"experts": [_unconditional(runs[f"expert{k}"]) for k in range(2)]}
    if config.router:
        router = dj.training.load_run(config.router, field="config.router")
        models["router"] = compose.classifier_router(router.module, router.ema_params, router.schedule)
    if config.full:
        models["full"] = _unconditional(dj.training.load_run(config.full, field="config.full"))
    judge = real = None
    if config.classifier:
        classifier = dj.training.load_run(config.classifier, field="config.classifier")
        judge = dj.training.classifier_apply(classifier.module, classifier.ema_params)
        real = judge(classifier.data.evaluation[0]).features  # the held-out digits of every class
    first_classes = list(runs["expert0"].config.data.get("classes", None) or range(10))
    sched = models["experts"][0].schedule
    ts = dj.specs.parse("config.grid", config.grid, dj.timesteps.REGISTRY)(sched, config.steps)
    event = tuple(runs["expert0"].event_shape)
    key = jax.random.key(config.seed)
    x_T = dj.prior_sample(jax.random.fold_in(key, 0), sched, ts, (config.num_samples,) + event)
    print(f"{config.num_samples} samples {event} per method, {config.steps} steps, devices: {jax.devices()}")

    rows, panels = [], []
    for method in (bar := tqdm(config.methods, desc="composing", unit="method")):
        bar.set_postfix_str(method)
        if method in NEEDS and NEEDS[method] not in models:
            print(f"{method} skipped: config.{NEEDS[method]} is not set")
            continue
        start = time.perf_counter()
        x, extra = draw(method, models, solvers, ts, jax.random.fold_in(key, 1), x_T, config)
        x = np.asarray(jax.block_until_ready(x))
        row = dict(method=method, seconds=time.perf_counter() - start, finite=bool(np.all(np.isfinite(x))), **extra)
        if judge is not None:
            out = judge(np.clip(x, -1.0, 1.0))
            row.update(class_statistics(out.logits, first_classes))
            row["fid"] = dj.metrics.frechet_distance(out.features, real)
        rows.append(row)
        panels.append(x[:16])

    header = f"{'method':<10}{'share 1st':>10}{'classes':>8}{'conf':>7}{'FID':>9}{'|dlog q|':>10}{'s':>8}"
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        stats = (f"{r['first_share']:>10.3f}{r['classes']:>8d}{r['confidence']:>7.3f}{r['fid']:>9.2f}" if "fid" in r
                 else f"{'-':>10}{'-':>8}{'-':>7}{'-':>9}")  # fmt: skip
        gap = f"{r['median_log_q_gap']:>10.3f}" if "median_log_q_gap" in r else f"{'-':>10}"
        print(f"{r['method']:<10}{stats}{gap}{r['seconds']:>8.1f}")
    print(f"(share 1st: samples classified into {first_classes}; classes: those with >= 2% of the samples; "
          "conf: mean max probability; FID: lower is better; |dlog q|: median final |log q1 - log q2|)")  # fmt: skip

    if _WORKDIR.value:
        os.makedirs(_WORKDIR.value, exist_ok=True)
        with open(os.path.join(_WORKDIR.value, "results.json"), "w") as f:
            json.dump({"config": config.to_dict(), "rows": rows}, f, indent=2)
        title = "rows: " + ", ".join(r["method"] for r in rows)
        plots.save_samples(os.path.join(_WORKDIR.value, "grid.png"), np.concatenate(panels), title, columns=16)


if __name__ == "__main__":
    cli.run(main)
