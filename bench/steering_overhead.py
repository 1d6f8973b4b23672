"""What FK steering costs on top of sampling its particles and evaluating its rewards.

    python bench/steering_overhead.py [--conditions 16] [--particles 4 16] [--steps 25] [--repeats 5]

A 32x32 RGB UNet (the shapes model's size) and a classifier reward (log p(class 0 | x0-hat), the
project's shapes classifier's size), randomly initialised: only time matters here. For B
conditions x K particles, in one process, median of `--repeats` timed runs after a compiling one:

- sample: `dj.sample` of B K independent images with DDIM(eta=1), the proposal FK uses;
- rewards: the classifier on B K images as many times as FK evaluates it (every scheduled step
  and the final correction), in a `lax.scan` of chained calls;
- fk: `fk_steer` (resampling every step but the last, rewards on x0-hat) and fk (free reward):
  the same with a reward that costs nothing, i.e. the resampling machinery alone;
- tds: `tds` with the reward as twist (a forward and a backward pass of UNet and classifier per step).

The claim checked: fk <= 1.1 (sample + rewards).
"""

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp

import diffjax as dj


def timed(fn, repeats):
    jax.block_until_ready(fn())
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def build(size=32):
    unet = dj.models.UNet(channels=64, channel_mults=(1, 2, 2), num_res_blocks=2, attention_resolutions=(8,),
                          num_groups=16)  # fmt: skip
    classifier = dj.models.Classifier(channels=32, channel_mults=(1, 2, 2), num_res_blocks=1, num_groups=8,
                                      feature_dim=64, num_classes=4)  # fmt: skip
    x = jnp.zeros((2, size, size, 3))
    params = unet.init(jax.random.key(0), x, jnp.zeros(2))
    c_params = classifier.init(jax.random.key(1), x)
    sched = dj.schedules.vp_cosine()
    den = dj.Denoiser(dj.models.apply_fn(unet), params, schedule=sched, prediction="eps")
    reward = dj.steering.rewards.classifier_reward(classifier, c_params, target=0)  # weights are data
    return den, sched, reward


def free_reward(x, cond):
    del cond
    return jnp.zeros(x.shape[:1], x.dtype)


def bench(b, k, steps, repeats, den, sched, reward):
    ts = dj.timesteps.logsnr_uniform(sched, steps)
    x_T = jax.random.normal(jax.random.key(2), (b, k, 32, 32, 3))
    flat = x_T.reshape((b * k,) + x_T.shape[2:])
    solver = dj.solvers.ddim(eta=1.0)
    key = jax.random.key(3)
    evaluations = steps  # scheduled steps 0..steps-2, and the final correction

    @jax.jit
    def rewards_scan(x):
        def body(total, i):
            return total + reward(x + 1e-3 * i, None).sum(), None

        return jax.lax.scan(body, jnp.zeros(()), jnp.arange(evaluations, dtype=x.dtype))[0]

    row = {"B": b, "K": k, "steps": steps}
    row["sample_s"] = timed(lambda: dj.sample(solver, den, ts, key, flat)[0], repeats)
    row["rewards_s"] = timed(lambda: rewards_scan(flat), repeats)
    row["fk_s"] = timed(lambda: dj.steering.fk_steer(solver, den, ts, key, x_T, reward, lmbda=1.0).x, repeats)
    row["fk_free_s"] = timed(lambda: dj.steering.fk_steer(solver, den, ts, key, x_T, free_reward, lmbda=1.0).x,
                             repeats)  # fmt: skip
    twist = dj.steering.reward_twist(reward, 1.0)
    row["tds_s"] = timed(lambda: dj.steering.tds(den, ts, key, x_T, twist).x, repeats)
    row["fk_ratio"] = row["fk_s"] / (row["sample_s"] + row["rewards_s"])
    row["machinery_ratio"] = row["fk_free_s"] / row["sample_s"]
    return row


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--conditions", type=int, default=16)
    parser.add_argument("--particles", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    den, sched, reward = build()
    device = jax.devices()[0].device_kind
    print(f"device: {device}, JAX {jax.__version__}, Python {platform.python_version()}")
    header = (f"{'B':>4}{'K':>4}{'steps':>6}{'sample s':>10}{'rewards s':>11}{'fk s':>9}{'fk/(s+r)':>10}"
              f"{'fk free s':>11}{'free/s':>8}{'tds s':>9}")  # fmt: skip
    print(header + "\n" + "-" * len(header))
    rows = []
    for k in args.particles:
        r = bench(args.conditions, k, args.steps, args.repeats, den, sched, reward)
        rows.append(r)
        line = f"{r['B']:>4}{r['K']:>4}{r['steps']:>6}{r['sample_s']:>10.4f}{r['rewards_s']:>11.4f}"
        line += f"{r['fk_s']:>9.4f}{r['fk_ratio']:>10.3f}{r['fk_free_s']:>11.4f}{r['machinery_ratio']:>8.3f}"
        print(line + f"{r['tds_s']:>9.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "jax": jax.__version__, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
