"""Masked-diffusion training throughput of the TokenTransformer (configs/train.py:text_gpu sizes).

Times, in one process: the forward pass and one optimizer step (the loss, its gradient, Adam and the
EMA: `training.make_train_step`, k steps per `lax.scan` call) in float32 and bfloat16 compute on
tokens drawn on the device once; then train.py's loop as it runs (k batches of the text windows
gathered on the host and stacked per call, the state replicated over a 'data' mesh and donated),
which adds the host side. Prints a table and writes JSON (--out).

    python bench/text_train_step.py --out=results/text_train_step.json
"""

import argparse
import functools
import importlib.util
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import diffjax as dj
from diffjax.training import build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def text_config(arg):
    spec = importlib.util.spec_from_file_location("configs_train", os.path.join(ROOT, "configs", "train.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def seconds(fn, *args, repeats=5):
    """The median wall time of fn(*args) after one warm-up (compile) call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - tick)
    return float(np.median(times))


def train_loop_seconds(config, step, module, training, calls=3):
    """Seconds per call of train.py's loop (host batches, mesh, donation), after a first compiling call."""
    mesh = dj.parallel.data_mesh(1)
    data = build.build_data(config, mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state = jax.device_put(build.initial_state(config, module, training.optimizer, data), replicated)
    multi = jax.jit(dj.training.scan_steps(step), out_shardings=(replicated, None), donate_argnums=0)
    k = config.steps_per_call
    times = []
    for call in range(calls + 1):
        tick = time.perf_counter()
        xs = jnp.stack([data.batches(s)[0] for s in range(call * k, (call + 1) * k)])
        state, metrics = multi(state, xs, None)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - tick)
    return float(np.median(times[1:]))


def step_flops(module, params, batch, length):
    """6 x parameters x tokens (forward and backward of the dense layers) + the attention matmuls."""
    n = sum(a.size for a in jax.tree.leaves(params))
    attention = 12 * module.depth * batch * length * length * module.hidden_size
    return 6 * n * batch * length + attention, n


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="text_gpu", help="configs/train.py argument")
    parser.add_argument("--steps_per_call", type=int, default=10)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    rows = []
    for dtype in ("float32", "bfloat16"):
        config = text_config(args.config)
        config.compute_dtype = dtype
        config.steps_per_call = args.steps_per_call
        data, training, module = build.build(config)
        state = build.initial_state(config, module, training.optimizer, data)
        b, length, k = config.batch_size, data.event_shape[0], args.steps_per_call
        xs = jax.random.randint(jax.random.key(0), (k, b, length), 0, dj.data.text.VOCAB_SIZE, jnp.int32)
        apply = dj.models.apply_fn(module)
        forward = jax.jit(functools.partial(lambda apply, p, z: apply(p, z, jnp.zeros(z.shape[:1]), None), apply))
        step = dj.training.make_train_step(training.loss, build.build_train_apply(config, module), training.optimizer,
                                           training.ema)  # fmt: skip
        multi = jax.jit(dj.training.scan_steps(step))
        flops, n = step_flops(module, state.params, b, length)
        forward_s = seconds(forward, state.params, xs[0])
        step_s = seconds(lambda s, multi=multi, xs=xs: multi(s, xs)[0].step, state) / k
        loop_s = train_loop_seconds(config, step, module, training) / k
        rows.append(dict(dtype=dtype, params=n, batch=b, length=length, forward_ms=1e3 * forward_s,
                         step_ms=1e3 * step_s, loop_step_ms=1e3 * loop_s, tflops=flops / step_s / 1e12,
                         tokens_per_s=b * length / step_s))  # fmt: skip
    print(f"{jax.devices()[0].device_kind}, JAX {jax.__version__}, configs/train.py:{args.config}, "
          f"{rows[0]['params'] / 1e6:.1f}M parameters, batch {rows[0]['batch']} x {rows[0]['length']} tokens, "
          f"{args.steps_per_call} steps per call")  # fmt: skip
    print(f"{'dtype':<10}{'forward ms':>12}{'step ms':>10}{'in loop':>10}{'TFLOP/s':>10}{'tokens/s':>12}")
    for r in rows:
        print(f"{r['dtype']:<10}{r['forward_ms']:>12.2f}{r['step_ms']:>10.2f}{r['loop_step_ms']:>10.2f}"
              f"{r['tflops']:>10.1f}{r['tokens_per_s']:>12.0f}")  # fmt: skip
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(dict(device=jax.devices()[0].device_kind, jax=jax.__version__, config=args.config,
                           steps_per_call=args.steps_per_call, rows=rows), f, indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
