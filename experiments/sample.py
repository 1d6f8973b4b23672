r"""Sample a model with several solvers and grid sizes, and score the samples.

A trained run (`configs/sample.py`, `--config.run=<train workdir>`): samples from its newest
checkpoint for every guidance scale x solver x step count, timed, with a sample grid per guidance
scale; with `--config.classifier_run` scored by a project-trained classifier's features: FID
against held-out real images (mean and sd over equal-size chunks of samples, and the same for real
images the model could have drawn: the floor), KID, and the accuracy of class-conditional samples.

    python experiments/sample.py --config=configs/sample.py --config.run=runs/digits \
        --config.classifier_run=runs/digits_classifier --workdir=runs/digits/eval

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

import cli
import jax
import jax.numpy as jnp
import numpy as np
import plots
from absl import flags, logging

import diffjax as dj

_CONFIG = cli.define_config("configs/gmm.py", "sampling config")
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


def draw(run, den, solver, ts, key, num, batch_size, labels):
    """`num` samples in batches (labels[i] for sample i, or None), and the seconds the batches took
    after a first, compiling batch."""
    shape = run.event_shape

    def batch(i):
        key_start, key_solver = jax.random.split(jax.random.fold_in(key, i))
        x_T = dj.prior_sample(key_start, run.schedule, ts, (batch_size,) + shape)
        cond = None if labels is None else labels[i * batch_size : (i + 1) * batch_size]
        return dj.sample(solver, den, ts, key_solver, x_T, cond=cond)

    jax.block_until_ready(batch(0))
    start = time.perf_counter()
    parts = [batch(i) for i in range(-(-num // batch_size))]
    x = np.concatenate([np.asarray(p[0]) for p in parts])[:num]
    return x, time.perf_counter() - start, int(parts[0][1].nfe)


def real_sets(data, num: int, key):
    """(real, other, n): the images samples are scored against; real images the model could have
    produced, for the FID floor; and the set size n at which every FID is computed.

    Held-out data (real = the evaluation set, n = min(num, its size)): other = up to 5 n fresh draws
    of a synthetic set, or training images. Otherwise real = half of the training set and other =
    the other half, where memorising the training set scores better than the floor.
    """
    x = data.evaluation[0]
    order = np.asarray(jax.random.permutation(key, len(x)))
    if not data.held_out:
        n = min(num, len(x) // 2)
        return x[order[len(x) // 2 :]], x[order[:n]], n
    n = min(num, len(x))
    if data.fresh is not None:
        return x, np.asarray(data.fresh(key, 5 * n)), n
    return x, data.train_x[np.asarray(jax.random.permutation(key, len(data.train_x)))[: 5 * n]], n


def fid_spread(features, real, n: int) -> tuple[float, float]:
    """Mean and standard deviation of the FID of disjoint n-row chunks of `features` against `real`
    (the sd is 0 for a single chunk): FID is biased and noisy at small n, so the spread matters."""
    scores = [dj.metrics.frechet_distance(features[i : i + n], real) for i in range(0, len(features) - n + 1, n)]
    return float(np.mean(scores)), float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0


def sample_trained(config):
    run = dj.training.load_run(config.run, field="config.run")
    num_classes = run.num_classes
    num = dj._checks.positive_int("config.num", config.num)
    batch_size = dj._checks.positive_int("config.batch_size", config.batch_size)
    labels = None if num_classes is None else np.arange(-(-num // batch_size) * batch_size) % num_classes
    grid = dj.specs.parse("config.grid", config.grid, dj.timesteps.REGISTRY)
    solvers = {spec: dj.specs.parse("config.solvers", spec, dj.solvers.REGISTRY)() for spec in config.solvers}
    steps = [dj._checks.positive_int("config.steps", n) for n in config.steps]
    scales = [dj._checks.finite("config.guidance", w) for w in config.guidance]
    if num_classes is None and scales != [1.0]:
        raise ValueError(f"config.guidance must be (1.0,) for an unconditional model, got {tuple(scales)}")
    den = run.denoiser if config.use_ema else run.denoiser_for(run.params)

    judge = None
    if config.classifier_run:
        classifier = dj.training.load_run(config.classifier_run, field="config.classifier_run")
        judge = dj.training.classifier_apply(classifier.module, classifier.ema_params)
        real, other, n_fid = real_sets(run.data, num, jax.random.key(config.seed))
        real, other = judge(real).features, judge(other).features
    name = f"{run.config.data.name}-FID"

    rows, grids = [], {}
    for scale in scales:
        guided = den if scale == 1.0 else dj.guidance.classifier_free(den, scale, num_classes)
        for spec, solver in solvers.items():
            for n in steps:
                ts = grid(run.schedule, n)
                x, seconds, nfe = draw(run, guided, solver, ts, jax.random.key(config.seed), num, batch_size, labels)
                row = {"guidance": scale, "solver": spec, "steps": n, "nfe": nfe, "images_per_s": num / seconds}
                if judge is not None:
                    out = judge(x)
                    row["fid"], row["fid_sd"] = fid_spread(out.features, real, n_fid)
                    row["kid"] = dj.metrics.kid(jax.random.key(1), out.features, real)
                    if labels is not None:
                        row["accuracy"] = float(np.mean(out.logits.argmax(-1) == labels[:num]))
                rows.append(row)
                grids[scale] = x[:100]

    which = "EMA" if config.use_ema else "raw"
    print(f"\n{config.run}: step {run.step}, {which} parameters, {num} samples per row")
    floor = None
    if judge is not None:
        fid, sd = fid_spread(other, real, n_fid)
        floor = {"fid": fid, "fid_sd": sd, "kid": dj.metrics.kid(jax.random.key(1), other, real), "n": n_fid}
        against = "held-out" if run.data.held_out else "training (memorisation scores well here)"
        print(f"{name}: mean (sd) over chunks of {n_fid} samples, each against {len(real)} {against} images;")
        print(f"KID of all samples against them. Real images the model could have drawn (the floor): "
              f"{name} {fid:.3f} ({sd:.3f}) over {len(other) // n_fid} chunks, KID {floor['kid']:.4f}")  # fmt: skip
    header = f"{'guidance':>8}  {'solver':<16}{'steps':>6}{'NFE':>5}{'images/s':>10}"
    header += f"{name + ' (sd)':>20}{'KID':>9}{'accuracy':>10}" if judge is not None else ""
    print(header + "\n" + "-" * len(header))
    for r in rows:
        line = f"{r['guidance']:>8.2f}  {r['solver']:<16}{r['steps']:>6}{r['nfe']:>5}{r['images_per_s']:>10.0f}"
        if judge is not None:
            fid = f"{r['fid']:.3f} ({r['fid_sd']:.3f})"
            line += f"{fid:>20}{r['kid']:>9.4f}{r.get('accuracy', float('nan')):>10.3f}"
        print(line)
    if _WORKDIR.value:
        os.makedirs(_WORKDIR.value, exist_ok=True)
        for scale, x in grids.items():
            columns = num_classes if num_classes else None  # one class per column
            title = f"guidance {scale:g}, {list(solvers)[-1]}, {steps[-1]} steps"
            plots.save_samples(os.path.join(_WORKDIR.value, f"samples_guidance_{scale:g}.png"), x, title, columns)
        with open(os.path.join(_WORKDIR.value, "results.json"), "w") as f:
            json.dump({"config": config.to_dict(), "floor": floor, "rows": rows}, f, indent=2)


def sample_oracle(config):
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


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax reports every file at INFO
    config = _CONFIG.value
    if "run" in config:
        sample_trained(config)
    else:
        sample_oracle(config)


if __name__ == "__main__":
    cli.run(main)
