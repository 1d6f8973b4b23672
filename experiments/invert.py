r"""Solve inverse problems with one trained prior: every method of `diffjax.guidance` on inpainting,
super-resolution and deblurring of held-out images.

For each task (`config.tasks`, `guidance.problems.TASKS`) the held-out images x are measured as
y = A x + sigma_y n, and each method (`config.methods`) restores them; the table reports PSNR and
SSIM against x (dB and [-1, 1]: higher is better), the measurement error ||y - A x_hat|| per image
(lower is better; sigma_y sqrt(d_y) is what the truth itself scores), the network evaluations per
image ("+g": each also has a backward pass) and seconds per batch after a compiling run. "pinv" is
the measurement-only baseline A^+ y. Writes results.json (the table) and grid_<task>.png (rows:
truth, measurement as A^+ y, then each method).

    python experiments/invert.py --config=configs/invert.py:digits --config.run=runs/digits \
        --workdir=runs/invert_digits
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
from diffjax.guidance import problems

_CONFIG = cli.define_config("configs/invert.py", "inverse-problem config")
_WORKDIR = flags.DEFINE_string("workdir", None, "where to write results.json and the image grids")


def check(config):
    """Every field, before any work: a ValueError naming the first bad one."""
    for task in config.tasks:
        dj._checks.one_of("config.tasks", task, problems.TASKS)
    for method in config.methods:
        dj._checks.one_of("config.methods", method, problems.METHODS)
        problems.options(method, config[method].to_dict(), field=f"config.{method}")
        if method == "pigdm" and config.pigdm.data_variance != "data":
            problems.resolve(method, config.pigdm.to_dict(), None, field="config.pigdm")  # a number: checked now
    if not config.run:
        raise ValueError("config.run must name a trained model's workdir (experiments/train.py --workdir)")
    sigma_y = dj._checks.finite("config.sigma_y", config.sigma_y)
    if sigma_y < 0:
        raise ValueError(f"config.sigma_y must be >= 0, got {sigma_y}")
    dj._checks.positive_int("config.num_images", config.num_images)
    dj._checks.positive_int("config.batch_size", config.batch_size)


def held_out(run, n):
    """The first n evaluation images of the run's data (held out from training where the data has a split)."""
    images = run.data.evaluation[0]
    if len(images) < n:
        raise ValueError(f"config.num_images={n} but the run's evaluation data has only {len(images)} images")
    return jnp.asarray(images[:n], jnp.float32)


def restore_all(method, den, op, y, config, key, event, settings):
    """All restorations in batches of config.batch_size, the NFE per image and the backward flag."""
    outs, nfe, backward = [], 0, False
    for start in range(0, len(y), config.batch_size):
        part = y[start : start + config.batch_size]
        batch_den = den if den.cond is None else den.replace(cond=den.cond[: len(part)])
        x, nfe, backward = problems.restore(method, batch_den, op, part, config.sigma_y, jax.random.fold_in(key, start),
                                            (len(part),) + event, settings=settings)  # fmt: skip
        outs.append(x)
    return jnp.concatenate(outs), nfe, backward


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    check(config)
    run = dj.training.load_run(config.run, field="config.run")
    den = run.denoiser if config.use_ema else run.denoiser_for(run.params)
    if run.null_label is not None:  # a class-conditional prior, used unconditionally
        den = den.replace(cond=jnp.full((config.batch_size,), run.null_label, jnp.int32))
    truth = held_out(run, config.num_images)
    event = tuple(run.event_shape)
    print(f"{len(truth)} held-out images {event}, sigma_y = {config.sigma_y}, devices: {jax.devices()}")

    rows, grids = [], {}
    key = jax.random.key(config.seed)
    pairs = [(t, m) for t in config.tasks for m in config.methods]
    for task, method in (bar := tqdm(pairs, desc="restoring", unit="method")):
        bar.set_postfix_str(f"{task}: {method}")
        key_task = jax.random.fold_in(key, problems.TASKS.index(task))
        op = problems.task_operator(task, event, key_task)
        if not problems.applies(method, op):
            continue
        y = dj.guidance.operators.measure(op, jax.random.fold_in(key_task, 1), truth, config.sigma_y)
        settings = problems.resolve(method, config[method].to_dict(), run.data, field=f"config.{method}")
        args = (method, den, op, y, config, jax.random.fold_in(key_task, 2), event, settings)
        jax.block_until_ready(restore_all(*args)[0])  # compiles
        start = time.perf_counter()
        x, nfe, backward = restore_all(*args)
        x = jax.block_until_ready(x)
        seconds = (time.perf_counter() - start) / -(-len(truth) // config.batch_size)
        scores = dict(psnr=dj.metrics.psnr(x, truth), ssim=dj.metrics.ssim(x, truth),
                      measurement_error=problems.measurement_error(op, x, y))  # fmt: skip
        rows.append(dict(task=task, method=method, **{k: float(jnp.mean(v)) for k, v in scores.items()}, nfe=nfe,
                         backward=backward, seconds=seconds, finite=bool(jnp.all(jnp.isfinite(x))),
                         settings=settings))  # fmt: skip
        panels = grids.setdefault(task, [("truth", truth), ("A^+ y", op.pinv(y))])
        if method != "pinv":  # the second row already shows A^+ y
            panels.append((method, x))

    header = f"{'task':<8}{'method':<10}{'PSNR dB':>9}{'SSIM':>8}{'|y - Ax|':>10}{'NFE':>7}{'s/batch':>9}"
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        nfe = f"{r['nfe']}{'+g' if r['backward'] else ''}"
        print(f"{r['task']:<8}{r['method']:<10}{r['psnr']:>9.2f}{r['ssim']:>8.3f}{r['measurement_error']:>10.3f}"
              f"{nfe:>7}{r['seconds']:>9.3f}")  # fmt: skip
    print("(PSNR, SSIM: higher is better; |y - Ax|: lower is better; +g: each evaluation also has a backward pass)")

    if _WORKDIR.value:
        os.makedirs(_WORKDIR.value, exist_ok=True)
        with open(os.path.join(_WORKDIR.value, "results.json"), "w") as f:
            json.dump({"config": config.to_dict(), "rows": rows}, f, indent=2)
        columns = min(8, len(truth))
        for task, panels in grids.items():
            images = np.concatenate([np.asarray(x[:columns]) for _, x in panels])
            title = f"{task}: rows " + ", ".join(name for name, _ in panels)
            plots.save_samples(os.path.join(_WORKDIR.value, f"grid_{task}.png"), images, title, columns=columns)


if __name__ == "__main__":
    cli.run(main)
