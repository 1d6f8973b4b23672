"""Checkpoints restore exactly, keep the config beside the state, and cannot poison a run: a damaged
or non-finite one is reported by path, skipped and (for a writer) kept aside as `bad-<step>`, and
rotation deletes only complete checkpoints of diffjax."""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.training import checkpoints, optim
from diffjax.training.state import init_state
from helpers import flip_bytes, largest_file


def _state(seed):
    params = {"w": jax.random.normal(jax.random.key(seed), (64, 32)), "b": jnp.arange(32.0)}
    optimizer = optim.adamw(1e-3, total_steps=100, warmup_steps=10)
    return init_state(params, optimizer, jax.random.key(seed)).replace(step=jnp.int32(seed))


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


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _delete_metadata(step_folder):
    os.remove(os.path.join(step_folder, "state", "_METADATA"))


def _contents(directory):
    """{relative path: bytes} of every file under `directory`."""
    out = {}
    for root, _, names in os.walk(directory):
        for name in names:
            out[os.path.relpath(os.path.join(root, name), directory)] = open(os.path.join(root, name), "rb").read()
    return out


DAMAGES = {
    "flipped_bytes": lambda folder: flip_bytes(largest_file(folder)),  # reads, with wrong values
    "truncated_file": lambda folder: _truncate(largest_file(folder)),
    "deleted_metadata": _delete_metadata,
}


# Orbax leaves the damaged checkpoint's TensorStore handles to the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_newest_checkpoint_is_reported_set_aside_and_the_previous_restored(tmp_path, caplog, damage):
    mngr = checkpoints.manager(str(tmp_path))
    for seed in (1, 2):
        checkpoints.save(mngr, _state(seed), {"seed": seed})
    mngr.wait_until_finished()
    newest = os.path.join(str(tmp_path), "2")
    DAMAGES[damage](newest)
    damaged = _contents(newest)
    with caplog.at_level(logging.WARNING):
        restored, config, step = checkpoints.restore_latest(mngr, jax.eval_shape(lambda: _state(1)), set_aside_bad=True)
    assert step == 1 and config == {"seed": 1}
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(_state(1))):
        np.testing.assert_array_equal(a, b)
    assert f"checkpoint {newest} is skipped" in caplog.text and f"moved to {tmp_path / 'bad-2'}" in caplog.text
    if damage == "flipped_bytes":  # Orbax reads it without complaint: only the digests see it
        assert "differ from the digests saved with them" in caplog.text
    assert _contents(tmp_path / "bad-2") == damaged  # kept on disk, byte for byte
    assert checkpoints.complete_steps(mngr) == [1]
    checkpoints.save(mngr, _state(2), {"seed": 2})  # step 2 is free to be written again
    mngr.wait_until_finished()
    assert checkpoints.restore_latest(mngr, jax.eval_shape(lambda: _state(1)))[2] == 2
    mngr.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_reader_skips_a_damaged_checkpoint_and_leaves_it_where_it_is(tmp_path, caplog):
    mngr = checkpoints.manager(str(tmp_path))
    for seed in (1, 2):
        checkpoints.save(mngr, _state(seed), {"seed": seed})
    mngr.wait_until_finished()
    flip_bytes(largest_file(tmp_path / "2"))
    with caplog.at_level(logging.WARNING):
        assert checkpoints.restore_latest(mngr, jax.eval_shape(lambda: _state(1)))[2] == 1
    assert "moved" not in caplog.text and sorted(os.listdir(tmp_path)) == ["1", "2"]
    mngr.close()


def test_a_non_finite_checkpoint_is_skipped(tmp_path, caplog):
    """A state saved with a NaN (its digests match: it was written that way) is refused at restore."""
    mngr = checkpoints.manager(str(tmp_path))
    checkpoints.save(mngr, _state(1), {})
    poisoned = _state(2)
    checkpoints.save(
        mngr, poisoned.replace(params={**poisoned.params, "b": poisoned.params["b"].at[3].set(jnp.nan)}), {}
    )
    mngr.wait_until_finished()
    with caplog.at_level(logging.WARNING):
        assert checkpoints.restore_latest(mngr, jax.eval_shape(lambda: _state(1)))[2] == 1
    assert "holds non-finite values" in caplog.text
    mngr.close()


def test_rotation_counts_and_deletes_only_complete_checkpoints(tmp_path):
    """An empty step folder and a stray file named like a step neither count towards `keep` nor are
    deleted; an empty folder at a step being saved is moved aside, not written into or deleted."""
    os.makedirs(tmp_path / "5")  # empty, where a save will go
    os.makedirs(tmp_path / "60")  # empty, beyond the run
    (tmp_path / "70").write_text("not a checkpoint")
    mngr = checkpoints.manager(str(tmp_path))
    for seed in range(1, 6):
        checkpoints.save(mngr, _state(seed), {"seed": seed}, keep=2)
    mngr.wait_until_finished()
    checkpoints.rotate(mngr, 2)
    assert checkpoints.complete_steps(mngr) == [4, 5]
    assert sorted(os.listdir(tmp_path)) == ["4", "5", "60", "70", "bad-5"]
    assert (tmp_path / "70").read_text() == "not a checkpoint" and os.listdir(tmp_path / "bad-5") == []
    assert checkpoints.restore_latest(mngr, jax.eval_shape(lambda: _state(1)))[2] == 5
    with pytest.raises(ValueError, match="keep must be at least 1, got 0"):
        checkpoints.rotate(mngr, 0)
    mngr.close()


def test_digests_name_each_array_and_see_every_bit():
    state = _state(1)
    a = checkpoints.digests(state)
    assert {".params['w']", ".params['b']", ".rng", ".step"} <= a.keys()
    flipped = state.params["w"].view(jnp.uint32).at[7, 3].add(1).view(jnp.float32)  # one ulp
    b = checkpoints.digests(state.replace(params={**state.params, "w": flipped}))
    assert {k for k in a if a[k] != b[k]} == {".params['w']"}
    # the dtype is part of the digest: the same bytes as another dtype differ
    assert checkpoints.digests({"x": jnp.zeros(4, jnp.int32)}) != checkpoints.digests({"x": jnp.zeros(4, jnp.float32)})


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
