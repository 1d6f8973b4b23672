"""What each inverse-problem method costs against plain sampling at the same steps, in one process.

    python bench/inverse_overhead.py [--batch 64] [--steps 50] [--task box] [--repeats 5] [--json out.json]

A 32x32 RGB UNet (the shapes model's size), randomly initialised: only time and memory matter here.
Every method restores a batch of `--batch` images from one measurement (`--task`, a
`guidance.problems` task) in `--steps` steps; the baseline is `dj.sample` with DDPM at the same
steps. Times are medians of `--repeats` runs after a compiling one; memory is the compiled
program's temporary buffers plus its arguments and outputs (XLA's `memory_analysis`).

The claims checked: DDRM and RePaint without jumps <= 1.05x the baseline; DPS and PiGDM (one
forward and one backward pass per step) <= 2.5x.
"""

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp

import diffjax as dj
from diffjax.guidance import problems
from diffjax.sampling import _sample

CLAIMS = {"ddrm": 1.05, "repaint": 1.05, "dps": 2.5, "pigdm": 2.5}


def timed(fn, repeats):
    jax.block_until_ready(fn())
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def program_bytes(jitted, *args, **static):
    """Temporary + argument + output bytes of the compiled program (None where XLA does not say)."""
    analysis = jitted.lower(*args, **static).compile().memory_analysis()
    if analysis is None:
        return None
    return int(analysis.temp_size_in_bytes + analysis.argument_size_in_bytes + analysis.output_size_in_bytes)


def build(size, batch, task):
    unet = dj.models.UNet(channels=64, channel_mults=(1, 2, 2), num_res_blocks=2, attention_resolutions=(8,),
                          num_groups=16)  # fmt: skip
    event = (size, size, 3)
    params = unet.init(jax.random.key(0), jnp.zeros((2,) + event), jnp.zeros(2))
    den = dj.Denoiser(dj.models.apply_fn(unet), params, schedule=dj.schedules.vp_cosine(), prediction="eps")
    op = problems.task_operator(task, event, jax.random.key(1))
    truth = jax.random.uniform(jax.random.key(2), (batch,) + event, minval=-1, maxval=1)
    y = dj.guidance.operators.measure(op, jax.random.key(3), truth, 0.05)
    return den, op, y, event


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--task", default="box", choices=problems.TASKS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    den, op, y, event = build(args.size, args.batch, args.task)
    ts = dj.timesteps.uniform(den.schedule, args.steps)
    key = jax.random.key(4)
    x_T = dj.prior_sample(jax.random.key(5), den.schedule, ts, (args.batch,) + event)
    base = dj.solvers.ddpm()
    sigma_y = 0.05
    by_sample = {  # method -> (solver, denoiser) run by dj.sample
        "sample": (base, den),
        "ddrm": (dj.guidance.ddrm(op, y, sigma_y), den),
        "dps": (dj.guidance.dps(base, op, y, 1.0), den),
        "steered": (dj.guidance.steered(base, dj.guidance.measurement_loss(op, y, squared=True), 1.0), den),
        "pigdm": (base, dj.guidance.pigdm(den, op, y, sigma_y)),
        "reddiff": (dj.guidance.red_diff(op, y), den),
    }
    rows = []
    for name, (solver, d) in by_sample.items():
        seconds = timed(lambda s=solver, d=d: dj.sample(s, d, ts, key, x_T)[0], args.repeats)
        memory = program_bytes(_sample, solver, d, ts, key, x_T, return_trajectory=False)
        rows.append({"method": name, "seconds": seconds, "bytes": memory})
    if isinstance(op, dj.guidance.operators.Inpainting):
        run = lambda: dj.guidance.repaint(den, ts, key, x_T, y, op.mask, solver=base, jump_length=1, jump_n_sample=1)[0]  # noqa: E731
        rows.append({"method": "repaint", "seconds": timed(run, args.repeats), "bytes": None})
    baseline = rows[0]
    print(f"{jax.devices()[0].device_kind}, JAX {jax.__version__}: {args.batch} images {event}, {args.steps} steps, "
          f"task {args.task}")  # fmt: skip
    print(f"{'method':<10}{'seconds':>10}{'x sample':>10}{'claim':>13}{'memory MB':>11}")
    for r in rows:
        r["ratio"] = r["seconds"] / baseline["seconds"]
        claim = CLAIMS.get(r["method"])
        r["claim"], r["holds"] = claim, None if claim is None else r["ratio"] <= claim
        memory = "-" if r["bytes"] is None else f"{r['bytes'] / 2**20:.1f}"
        mark = "" if claim is None else f"<={claim:g}" + (" ok" if r["holds"] else " NO")
        print(f"{r['method']:<10}{r['seconds']:>10.4f}{r['ratio']:>10.2f}{mark:>13}{memory:>11}")
    if args.json:
        with open(args.json, "w") as f:
            meta = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "python": platform.python_version()}
            json.dump({**meta, **vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
