"""What a compiled sampler costs on top of its network.

    python bench/sampler_overhead.py [--steps 50] [--repeats 10] [--json out.json] [--small]

For a convolutional eps-network (4 conv layers, SiLU) at two sizes, times in one process:
the network alone in a `lax.scan` of NFE calls (each call feeding the next, so nothing is
skipped), and `dj.sample` with several solvers on the same network and grid. Solver overhead
per step = (sampler time - network-scan time at the sampler's NFE) / steps. Median of
`--repeats` runs after a warm-up; the first call's time (compile included) is reported too.
"""

import argparse
import json
import platform
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

import diffjax as dj

S = dj.solvers


class ConvNet(nn.Module):
    channels: int

    @nn.compact
    def __call__(self, x, t):
        h = nn.Conv(self.channels, (3, 3))(x)
        h = h + nn.Dense(self.channels)(jnp.sin(t[:, None] * jnp.arange(1, 9)))[:, None, None, :]
        for _ in range(2):
            h = nn.Conv(self.channels, (3, 3))(nn.silu(h))
        return nn.Conv(x.shape[-1], (3, 3))(nn.silu(h))


def timed(fn, repeats):
    """(median seconds over `repeats` runs, seconds of the first, warm-up call)."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first_s = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - start)
    return statistics.median(runs), first_s


def bench(batch, size, channels, steps, repeats):
    net = ConvNet(channels)
    key = jax.random.key(0)
    x = jax.random.normal(key, (batch, size, size, 3))
    params = net.init(key, x, jnp.zeros((batch,)))
    apply_fn = lambda p, x, t, c: net.apply(p, x, t)
    sched = dj.schedules.vp_cosine()
    den = dj.Denoiser(apply_fn, params, schedule=sched, prediction="eps")
    ts = dj.timesteps.logsnr_uniform(sched, steps)

    @jax.jit
    def network_scan(params, x, ts):  # NFE chained calls, the sampler's floor
        def body(x, t):
            return x + 0.01 * net.apply(params, x, jnp.broadcast_to(t, x.shape[:1])), None

        return jax.lax.scan(body, x, ts)[0]

    solvers = {
        "ddim": S.ddim(),
        "dpmpp_2m": S.dpmpp_2m(),
        "dpmpp_3m": S.dpmpp_3m(),
        "dpmpp_2m_sde": S.dpmpp_2m_sde(),
        "heun": S.heun(),
        "plms": S.plms(),
    }
    for name in ("unipc", "deis"):
        if name in S.REGISTRY:
            solvers[name] = S.REGISTRY[name]()

    rows, floors = [], {}
    for name, solver in solvers.items():
        start = time.perf_counter()
        nfe = int(jax.block_until_ready(dj.sample(solver, den, ts, key, x))[1].nfe)
        compile_s = time.perf_counter() - start
        sample_s, _ = timed(lambda solver=solver: dj.sample(solver, den, ts, key, x)[0], repeats)
        if nfe not in floors:
            net_ts = jnp.linspace(1.0, 0.0, nfe)
            floors[nfe] = timed(lambda net_ts=net_ts: network_scan(params, x, net_ts), repeats)[0]
        rows.append(
            dict(solver=name, batch=batch, size=size, channels=channels, steps=steps, nfe=nfe,
                 sample_ms=1e3 * sample_s, network_ms=1e3 * floors[nfe],
                 overhead_us_per_step=1e6 * (sample_s - floors[nfe]) / steps, compile_s=compile_s)
        )  # fmt: skip
    return rows


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", default=None)
    parser.add_argument("--small", action="store_true", help="tiny sizes, for a CPU smoke run")
    args = parser.parse_args(argv)
    configs = [(4, 8, 16)] if args.small else [(64, 32, 128), (256, 64, 128)]
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}, {platform.python_version()}")
    print(f"{'solver':<14}{'B x HxW x C':>18}{'steps':>6}{'NFE':>5}{'sample ms':>11}{'net ms':>9}"
          f"{'overhead us/step':>18}{'compile s':>10}")  # fmt: skip
    rows = []
    for batch, size, channels in configs:
        for r in bench(batch, size, channels, args.steps, args.repeats):
            rows.append(r)
            shape = f"{batch}x{size}x{size}x{channels}"
            print(f"{r['solver']:<14}{shape:>18}{r['steps']:>6}{r['nfe']:>5}{r['sample_ms']:>11.2f}"
                  f"{r['network_ms']:>9.2f}{r['overhead_us_per_step']:>18.1f}{r['compile_s']:>10.2f}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device.device_kind, "jax": jax.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
