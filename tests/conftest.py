"""Tests run in float64: exact oracles are compared to 1e-10, which float32 cannot resolve.

float32 behaviour is tested explicitly with float32 inputs.

Compiled programs are dropped after each test module: the whole suite compiles thousands of
them in one process, and XLA:CPU maps memory for each, which can exhaust the kernel's limit on
memory maps (vm.max_map_count, 65530 by default) and crash a late compilation.

Tests that share an expensive module fixture (a trained run) are put in one pytest-xdist group, so
that with `-n 2 --dist loadgroup` (setup.cfg) one worker trains it once instead of both training it.
"""

import jax
import pytest

jax.config.update("jax_enable_x64", True)


# module fixtures that train -> their group (fixtures used together by one test share a group)
SHARED_RUNS = {"digits_run": "digits", "digits_classifier": "digits", "ensemble_runs": "digits", "moons_run": "moons"}


def pytest_collection_modifyitems(items):
    for item in items:
        groups = sorted({SHARED_RUNS[f] for f in getattr(item, "fixturenames", ()) if f in SHARED_RUNS})
        if groups:
            item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}:{groups[0]}"))


@pytest.fixture(autouse=True, scope="module")
def _drop_compiled_programs():
    yield
    jax.clear_caches()
