"""Same seed, same bits: sampling, FK steering and TDS give bit-identical results in another process,
and the same results within 1e-6 with their batch sharded over 8 CPU devices (measured in float64:
at most 2.2e-15, where XLA fuses the sharded program differently). Also the flow start through the
steering methods: FK and TDS from rectified flow's t = 1 are finite.

The particles of one condition stay on one device (the batch B is sharded, never K), so resampling
gathers within a device; the noise is drawn from the same keys for the whole array (partitionable
threefry), so the draws do not depend on the layout either."""

import hashlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

import diffjax as dj
from helpers import FAST_COMPILE_FLAGS, ROOT, mixture

# runs in the test process (1 device) and in a fresh one with 8 devices, x_T sharded over 'data' there
RUNS = """
import jax, jax.numpy as jnp, numpy as np, diffjax as dj, sys
sys.path.insert(0, "tests")
from helpers import mixture

def runs(shard):
    sched = dj.schedules.vp_cosine()
    den = mixture().denoiser(sched)
    ts = dj.timesteps.logsnr_uniform(sched, 6)
    x_T = dj.prior_sample(jax.random.key(0), sched, ts, (8, 4, 3))
    flat = shard(x_T[:, 0])
    particles = shard(x_T)
    reward = dj.steering.rewards.linear(jnp.array([1.0, -0.5, 0.25]))
    twist = dj.steering.reward_twist(reward, 2.0)
    key = jax.random.key(1)
    return {
        "sample_dpmpp_2m": dj.sample(dj.solvers.dpmpp_2m(), den, ts, key, flat)[0],
        "sample_ddim_eta1": dj.sample(dj.solvers.ddim(eta=1.0), den, ts, key, flat)[0],
        "fk_steer": dj.steering.fk_steer(dj.solvers.ddim(eta=1.0), den, ts, key, particles, reward, lmbda=2.0).x,
        "tds": dj.steering.tds(den, ts, key, particles, twist).x,
    }
"""

SHARDED = (
    RUNS
    + """
import hashlib, json
from diffjax import parallel
mesh = parallel.data_mesh(8)
local, sharded = runs(lambda a: a), runs(lambda a: jax.device_put(a, parallel.batch_sharding(mesh)))
print(json.dumps({name: dict(
    devices=len(sharded[name].sharding.device_set),
    local=hashlib.sha256(np.asarray(local[name]).tobytes()).hexdigest(),
    gap=float(np.max(np.abs(np.asarray(sharded[name]) - np.asarray(local[name])))),
) for name in local}))
"""
)


def _digest(a):
    return hashlib.sha256(np.asarray(a).tobytes()).hexdigest()


def test_runs_repeat_bit_for_bit_in_another_process_and_agree_when_sharded_over_eight_devices():
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_ENABLE_X64": "1",
           "XLA_FLAGS": f"{FAST_COMPILE_FLAGS} --xla_force_host_platform_device_count=8"}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", SHARDED], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    there = json.loads(out.stdout.strip().splitlines()[-1])
    namespace = {}
    exec(RUNS, namespace)
    here = namespace["runs"](lambda a: a)
    assert set(there) == set(here) == {"sample_dpmpp_2m", "sample_ddim_eta1", "fk_steer", "tds"}
    for name, result in here.items():
        assert np.all(np.isfinite(result)), name
        assert there[name]["local"] == _digest(result), name  # another process: the same bits
        assert there[name]["devices"] == 8, name  # the output stays sharded over the 8 devices
        assert there[name]["gap"] <= 1e-6, (name, there[name]["gap"])  # sharded against one device


def test_fk_and_tds_from_rectified_flow_at_t_1_are_finite():
    """The steering methods inherit the solvers' start at alpha = 0 (tests/test_flow_start.py): from
    pure noise, with the x0-predicting mixture oracle, every particle stays finite."""
    sched = dj.schedules.rectified_flow()
    den = mixture().denoiser(sched)
    ts = dj.timesteps.uniform(sched, 6)
    assert float(sched.alpha(ts[0])) == 0.0
    x_T = jax.random.normal(jax.random.key(0), (2, 4, 3))
    reward = dj.steering.rewards.linear(jnp.array([1.0, 0.0, 0.0]))
    fk = dj.steering.fk_steer(dj.solvers.ddim(eta=1.0), den, ts, jax.random.key(1), x_T, reward, lmbda=1.0)
    tds = dj.steering.tds(den, ts, jax.random.key(1), x_T, dj.steering.reward_twist(reward, 1.0))
    for particles in (fk, tds):
        assert np.all(np.isfinite(particles.x)) and np.all(np.isfinite(particles.log_weights))
