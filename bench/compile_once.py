"""Solvers, rewards and generators as values: what a second, freshly built but equal object costs.

    python bench/compile_once.py [--json out.json]

For a small UNet (diffjax.models.UNet on 16x16x3) it times, in one process, the first call (compile
included) and a second call with *freshly constructed* equal arguments: `dj.sample` with a new
`dpmpp_2m()`, and `fk_steer` with a new `ddim(eta=1.0)` and a classifier reward rebuilt from new
weights. Before solvers and rewards were values, the second call compiled again (14.5 s twice for
`dj.sample` on the CPU); now it only runs. The ratio second / first is the number to read.
"""

import argparse
import json
import platform
import sys
import time

import jax
import jax.numpy as jnp

import diffjax as dj


def seconds(fn):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)

    sched = dj.schedules.vp_cosine()
    ts = dj.timesteps.karras(sched, args.steps)
    unet = dj.models.UNet(channels=16, channel_mults=(1, 2), attention_resolutions=(8,), num_groups=4)
    x = jnp.zeros((4, 16, 16, 3))
    params = jax.jit(unet.init)(jax.random.key(0), x, jnp.zeros(4))
    den = dj.Denoiser(dj.models.apply_fn(unet), params, schedule=sched, prediction="eps")
    x_T = dj.prior_sample(jax.random.key(1), sched, ts, x.shape)
    classifier = dj.models.Classifier(channels=8, num_classes=3, num_groups=4)

    init_classifier = jax.jit(classifier.init)

    def reward(seed):
        weights = init_classifier(jax.random.key(seed), x)
        return dj.steering.rewards.classifier_reward(classifier, weights, target=1)

    def run_sample():
        return dj.sample(dj.solvers.dpmpp_2m(), den, ts, jax.random.key(2), x_T)[0]

    particles = x_T.reshape(2, 2, 16, 16, 3)
    seeds = iter(range(10, 100))
    reward(0)  # compile the classifier's initialisation outside the timings

    def run_fk():
        r = reward(next(seeds))
        return dj.steering.fk_steer(dj.solvers.ddim(eta=1.0), den, ts, jax.random.key(3), particles, r, lmbda=2.0).x

    rows = []
    for name, fn in (("sample, new dpmpp_2m()", run_sample), ("fk_steer, new solver and reward weights", run_fk)):
        first, second = seconds(fn), seconds(fn)
        rows.append({"call": name, "first_s": first, "second_s": second, "ratio": second / first})
    print(f"{'call':<42} {'first (s)':>10} {'second (s)':>11} {'ratio':>7}")
    for row in rows:
        print(f"{row['call']:<42} {row['first_s']:>10.2f} {row['second_s']:>11.3f} {row['ratio']:>7.3f}")
    meta = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "python": platform.python_version()}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
