"""Checkpoints restore exactly, keep the config beside the state, and survive a damaged newest one."""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.training import checkpoints, optim
from diffjax.training.state import init_state


def _state(seed):
    params = {"w": jax.random.normal(jax.random.key(seed), (64, 32)), "b": jnp.arange(32.0)}
    optimizer = optim.adamw(1e-3, total_steps=100, warmup_steps=10)
    return init_state(params, optimizer, jax.random.key(seed)).replace(step=jnp.int32(seed))


def _largest_file(directory):
    files = [os.path.join(root, f) for root, _, names in os.walk(directory) for f in names]
    return max(files, key=os.path.getsize)


def test_round_trip_is_exact_and_the_config_comes_back(tmp_path):
    mngr = checkpoints.manager(str(tmp_path))
    state = _state(1)
    checkpoints.save(mngr, state, {"model": {"channels": 32}, "lr": 1e-3})
    mngr.wait_until_finished()
    restored, config, step = checkpoints.restore_latest(mngr, jax.eval_shape(lambda: state))
    assert step == 1 and config == {"model": {"channels": 32}, "lr": 1e-3}
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        np.testing.assert_array_equal(a, b)
    assert jax.random.key_data(restored.key).tolist() == jax.random.key_data(state.key).tolist()
    mngr.close()


# Orbax leaves the damaged checkpoint's TensorStore handles to the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    mngr = checkpoints.manager(str(tmp_path), max_to_keep=3)
    for seed in (1, 2):
        checkpoints.save(mngr, _state(seed), {"seed": seed})
        mngr.wait_until_finished()
    victim = _largest_file(os.path.join(str(tmp_path), "2"))
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)
    with caplog.at_level(logging.WARNING):
        restored, config, step = checkpoints.restore_latest(mngr, jax.eval_shape(lambda: _state(1)))
    assert step == 1 and config == {"seed": 1}
    assert "step 2 is unreadable" in caplog.text
    np.testing.assert_array_equal(restored.params["w"], _state(1).params["w"])
    mngr.close()


def test_no_checkpoint_gives_none(tmp_path):
    mngr = checkpoints.manager(str(tmp_path))
    assert checkpoints.restore_latest(mngr, jax.eval_shape(lambda: _state(0))) == (None, None, None)
    mngr.close()


def test_a_checkpoint_is_sized_like_its_state(tmp_path):
    """What a toy run's 14 MB checkpoint holds: the configs' MLP (width 256, depth 4) has 0.93M float32
    parameters, and the state holds them four times (params, EMA, AdamW's two moments): 14.8 MB.
    Orbax adds only its metadata, about 200 KB, whatever the state's size, and compresses the arrays
    (random float32 values shrink by 7%: their exponents repeat)."""
    params = {"w": jnp.zeros((512, 512), jnp.float32), "b": jnp.zeros(32, jnp.float32)}
    state = init_state(params, optim.adamw(1e-3, total_steps=100, warmup_steps=10), jax.random.key(3))
    keys = iter(jax.random.split(jax.random.key(4), 64))
    noise = lambda a: jax.random.normal(next(keys), a.shape, a.dtype) if a.dtype == jnp.float32 else a
    state = jax.tree.map(noise, state)
    mngr = checkpoints.manager(str(tmp_path))
    checkpoints.save(mngr, state, {})
    mngr.wait_until_finished()
    mngr.close()
    on_disk = sum(os.path.getsize(os.path.join(root, f)) for root, _, names in os.walk(tmp_path) for f in names)
    in_memory = sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(state))
    assert in_memory == 4 * 4 * (512 * 512 + 32) + 4 + 8 + 2 * 4  # 4 copies; the step, the key, two counts
    assert 0.85 * in_memory <= on_disk <= in_memory + 400_000, (on_disk, in_memory)
