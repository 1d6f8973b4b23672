"""The optimizer skips a bounded number of non-finite updates when asked, and the loop in memory stops
on a run that turns non-finite rather than train on NaN."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax.training import optim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _updates(optimizer, grads):
    params = {"w": jnp.ones(3)}
    opt_state = optimizer.init(params)
    out = []
    for g in grads:
        updates, opt_state = optimizer.update({"w": g}, opt_state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
        out.append(params["w"])
    return out, opt_state


def test_skip_nonfinite_skips_up_to_k_bad_updates_in_a_row_and_counts_them():
    finite, nan = jnp.full(3, 0.5), jnp.array([1.0, jnp.nan, 1.0])
    optimizer = optim.adamw(1e-2, total_steps=10, skip_nonfinite=2)
    params, opt_state = _updates(optimizer, [finite, nan, nan, finite])
    # the two NaN updates leave the parameters exactly where the first step put them
    np.testing.assert_array_equal(params[1], params[0])
    np.testing.assert_array_equal(params[2], params[0])
    assert np.all(np.isfinite(params[3])) and not np.array_equal(params[3], params[0])
    assert optim.nonfinite_steps(opt_state) == 2
    # a third NaN in a row is applied: a run that keeps failing turns non-finite and is stopped
    params, _ = _updates(optimizer, [finite, nan, nan, nan])
    assert np.isnan(params[3]).any()
    # without skipping the first NaN is applied, and there is no count
    params, opt_state = _updates(optim.adamw(1e-2, total_steps=10), [finite, nan])
    assert np.isnan(params[1]).any() and optim.nonfinite_steps(opt_state) is None


def test_fit_stops_on_a_run_that_turns_non_finite():
    spec = importlib.util.spec_from_file_location("configs_train", os.path.join(ROOT, "configs", "train.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("moons")
    config.model.args.width, config.model.args.depth, config.batch_size = 16, 2, 32
    config.optim.total_steps, config.optim.warmup_steps, config.steps_per_call, config.log_every = 20, 0, 10, 10
    config.optim.learning_rate = 1e30  # the parameters overflow within the first call
    with pytest.raises(dj.training.loop.NonFiniteError, match="between step 0 and step 10"):
        dj.training.fit(config, progress=False)
