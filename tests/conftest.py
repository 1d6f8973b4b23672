"""Tests run in float64: exact oracles are compared to 1e-10, which float32 cannot resolve.

float32 behaviour is tested explicitly with float32 inputs.

Compiled programs are dropped after each test module: the whole suite compiles thousands of
them in one process, and XLA:CPU maps memory for each, which can exhaust the kernel's limit on
memory maps (vm.max_map_count, 65530 by default) and crash a late compilation.
"""

import jax
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture(autouse=True, scope="module")
def _drop_compiled_programs():
    yield
    jax.clear_caches()
