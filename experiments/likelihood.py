r"""Likelihood of a trained model on held-out images: NLL (nats per image) and bits/dim by the
probability-flow ODE (`diffjax.likelihood.log_likelihood`) with each divergence estimator, and the DDPM
variational bound (`ddpm_vlb`) where the run's schedule is discrete.

The images are dequantised uniformly on their `num_bins` levels (`dequantize`, the same noise for
every estimator), so bits/dim = -log2 p / D + log2(num_bins / range) bounds the discrete model's.
The table reports per estimator the mean bits/dim and its standard error over images, the standard
error from the probes (Hutchinson: the spread of the per-probe integrals, combined over images), the
denoiser evaluations and the accepted / rejected steps per solve, and seconds per batch after the
compiling first batch (with one batch only, its time includes compilation).
`--config.compare_untrained=True` also scores the same network with freshly initialised parameters (a
trained model must score fewer bits); both go through the same compiled solves (parameters are data).
Writes results.json to --workdir.

    python experiments/likelihood.py --config=configs/likelihood.py:digits --config.run=runs/digits \
        --workdir=runs/likelihood_digits
"""

import json
import math
import os
import time

import cli
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging
from tqdm import tqdm

import diffjax as dj
import diffjax.likelihood as lik
from diffjax.training import build

_CONFIG = cli.define_config("configs/likelihood.py", "likelihood config")
_WORKDIR = flags.DEFINE_string("workdir", None, "where to write results.json")


def check(config):
    """Every field, before any work: a ValueError naming the first bad one."""
    if not config.run:
        raise ValueError("config.run must name a trained model's workdir (experiments/train.py --workdir)")
    if not config.estimators:
        raise ValueError("config.estimators must name at least one of " + str(lik.pf_ode.DIVERGENCES))
    for estimator in config.estimators:
        dj._checks.one_of("config.estimators", estimator, lik.pf_ode.DIVERGENCES)
    dj._checks.one_of("config.method", config.method, lik.pf_ode.METHODS)
    dj._checks.one_of("config.probe", config.probe, lik.divergence.DISTRIBUTIONS)
    dj._checks.positive("config.rtol", config.rtol)
    dj._checks.positive("config.atol", config.atol)
    minimum = 3 if "hutch++" in config.estimators else 1
    dj._checks.positive_int("config.num_probes", config.num_probes, minimum)
    dj._checks.positive_int("config.num_images", config.num_images)
    dj._checks.positive_int("config.batch_size", config.batch_size)
    dj._checks.positive_int("config.num_bins", config.num_bins, 2)
    try:
        lik.bits_offset(config.num_bins, tuple(config.data_range))
    except ValueError as error:
        raise ValueError(f"config.data_range: {error}") from error


def held_out(run, n):
    """The first n evaluation images of the run's data."""
    images = run.data.evaluation[0]
    if len(images) < n:
        raise ValueError(f"config.num_images={n} but the run's evaluation data has only {len(images)} images")
    return jnp.asarray(images[:n], jnp.float32)


def _batches(n, size):
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def _for_batch(den, run, size):
    return den if run.null_label is None else den.replace(cond=jnp.full((size,), run.null_label, jnp.int32))


def score(estimator, den, run, x, config, key):
    """log_likelihood over the batches: per-image log p and probe SE, per-solve NFE, steps and seconds."""
    out = dict(log_p=[], std_err=[], nfe=[], accepted=[], rejected=[], seconds=[])
    for start, stop in tqdm(_batches(len(x), config.batch_size), desc=estimator, unit="batch", leave=False):
        begin = time.perf_counter()
        res = lik.log_likelihood(_for_batch(den, run, stop - start), x[start:stop], key=jax.random.fold_in(key, start),
                                 divergence=estimator, num_probes=config.num_probes, probe=config.probe,
                                 method=config.method, rtol=config.rtol, atol=config.atol)  # fmt: skip
        out["log_p"].append(np.asarray(res.log_p))
        out["seconds"].append(time.perf_counter() - begin)
        out["std_err"].append(np.asarray(res.std_err))
        for name, value in [
            ("nfe", res.nfe),
            ("accepted", res.num_accepted_steps),
            ("rejected", res.num_rejected_steps),
        ]:
            out[name].append(int(value))
    return {k: np.concatenate(v) if k in ("log_p", "std_err") else v for k, v in out.items()}


def _seconds(per_batch):
    """Seconds per batch after the first (which compiles); the first's, compilation included, if alone."""
    return float(np.mean(per_batch[1:] if len(per_batch) > 1 else per_batch))


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    check(config)
    run = dj.training.load_run(config.run, field="config.run")
    models = [("trained", run.denoiser if config.use_ema else run.denoiser_for(run.params))]
    if config.compare_untrained:
        params = build.init_params(run.module, jax.random.key(config.seed + 1), run.event_shape, run.num_classes)
        models.append(("untrained", run.denoiser_for(params)))
    event = tuple(run.event_shape)
    dim = math.prod(event)
    data_range = tuple(config.data_range)
    key = jax.random.key(config.seed)
    x = lik.dequantize(jax.random.fold_in(key, 0), held_out(run, config.num_images), config.num_bins, data_range)
    n = len(x)
    print(f"{n} held-out images {event}, {config.num_bins} levels on {data_range}, "
          f"parameters: {', '.join(name for name, _ in models)}, devices: {jax.devices()}")  # fmt: skip

    def to_bits(log_p):
        return np.asarray(lik.bits_per_dim(log_p, dim, num_bins=config.num_bins, data_range=data_range))

    rows = []
    runs = [(name, den, index, estimator) for name, den in models for index, estimator in enumerate(config.estimators)]
    for name, den, index, estimator in tqdm(runs, desc="estimators", unit="estimator"):
        key_est = jax.random.fold_in(key, index + 1)  # the same probes for trained and untrained parameters
        out = score(estimator, den, run, x, config, key_est)
        bpd = to_bits(out["log_p"])
        probe_se = float(np.sqrt(np.sum(out["std_err"] ** 2)) / n / (dim * math.log(2.0)))
        rows.append(dict(parameters=name, estimator=estimator, nll=float(-out["log_p"].mean()),
                         bits_per_dim=float(bpd.mean()),
                         se_images=float(bpd.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
                         se_probes=probe_se if estimator == "hutchinson" else (0.0 if estimator == "exact" else None),
                         nfe=float(np.mean(out["nfe"])), accepted=float(np.mean(out["accepted"])),
                         rejected=float(np.mean(out["rejected"])), seconds=_seconds(out["seconds"]),
                         finite=bool(np.all(np.isfinite(bpd)))))  # fmt: skip
    skipped = None
    if config.vlb and isinstance(run.schedule, dj.schedules.Discrete):
        den = models[0][1]
        raw = held_out(run, config.num_images)
        start, totals = time.perf_counter(), []
        for lo, hi in tqdm(_batches(n, config.batch_size), desc="ddpm vlb", unit="batch", leave=False):
            res = lik.ddpm_vlb(_for_batch(den, run, hi - lo), raw[lo:hi], jax.random.fold_in(key, 1000 + lo),
                               num_bins=config.num_bins, data_range=data_range)  # fmt: skip
            totals.append(np.asarray(res.total))
        total = np.concatenate(totals)
        bpd = np.asarray(lik.bits_per_dim(-total, dim, num_bins=None))
        rows.append(dict(parameters="trained", estimator="ddpm_vlb", nll=float(total.mean()),
                         bits_per_dim=float(bpd.mean()),
                         se_images=float(bpd.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"), se_probes=None,
                         nfe=float(res.nfe), accepted=None, rejected=None,
                         seconds=(time.perf_counter() - start) / len(totals),
                         finite=bool(np.all(np.isfinite(bpd)))))  # fmt: skip
    elif config.vlb:
        skipped = f"ddpm_vlb skipped: the run's schedule ({type(run.schedule).__name__}) is not discrete"
        print(skipped)

    header = (f"{'parameters':<11}{'estimator':<12}{'NLL nats':>11}{'bits/dim':>10}{'SE imgs':>9}{'SE probes':>10}"
              f"{'NFE':>8}{'acc':>6}"
              f"{'rej':>5}{'s/batch':>9}")  # fmt: skip
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        se_p = "-" if r["se_probes"] is None else f"{r['se_probes']:.4f}"
        acc = "-" if r["accepted"] is None else f"{r['accepted']:.0f}"
        rej = "-" if r["rejected"] is None else f"{r['rejected']:.0f}"
        print(f"{r['parameters']:<11}{r['estimator']:<12}{r['nll']:>11.2f}{r['bits_per_dim']:>10.4f}"
              f"{r['se_images']:>9.4f}{se_p:>10}{r['nfe']:>8.0f}{acc:>6}{rej:>5}{r['seconds']:>9.3f}")  # fmt: skip
    print("(bits/dim: lower is better; NFE, acc, rej: per solve, i.e. per batch; the VLB's NFE is per image)")

    if _WORKDIR.value:
        os.makedirs(_WORKDIR.value, exist_ok=True)
        with open(os.path.join(_WORKDIR.value, "results.json"), "w") as f:
            json.dump({"config": config.to_dict(), "rows": rows, "skipped": skipped}, f, indent=2)


if __name__ == "__main__":
    cli.run(main)
