"""Tests run in float64: exact oracles are compared to 1e-10, which float32 cannot resolve.

float32 behaviour is tested explicitly with float32 inputs.

Compiled programs are dropped after each test module: the whole suite compiles thousands of
them in one process, and XLA:CPU maps memory for each, which can exhaust the kernel's limit on
memory maps (vm.max_map_count, 65530 by default) and crash a late compilation.

Tests that share an expensive module fixture (a trained run) are put in one pytest-xdist group, so
that with `-n 2 --dist loadgroup` (setup.cfg) one worker trains it once instead of both training it.

Commands the tests start (experiments, notebook kernels) share one persistent compilation cache for
the session, so a command run again (resumed, re-run, or the same config in another test) does not
compile its programs again; the test processes themselves keep it off (they compile thousands of
small programs once each, and writing them all out would cost more than it saves).
"""

import os
import shutil
import tempfile

import jax
import pytest

import helpers
from helpers import FAST_COMPILE_FLAGS

# XLA:CPU set to compile fast (`helpers.FAST_COMPILE_FLAGS`): the suite's programs are small and each
# compiles once, so compiling is most of its time (test_deis.py + test_pndm.py: 54 s against 66 s at the
# default -O2, before the emitters too were set). Set before any backend starts; the commands the tests
# run inherit it.
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAGS}".strip()

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_enable_compilation_cache", False)

_CACHE_VARS = {"JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"}
_created_cache = []


def pytest_configure(config):
    # runs in the xdist controller before the workers start, so they and their commands inherit it
    if not _CACHE_VARS & os.environ.keys():
        _created_cache.append(tempfile.mkdtemp(prefix="diffjax-tests-compilation-cache-"))
        os.environ["JAX_COMPILATION_CACHE_DIR"] = _created_cache[0]
        os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"


def pytest_unconfigure(config):
    for path in _created_cache:
        shutil.rmtree(path, ignore_errors=True)


# fixtures that train -> their group (fixtures used together by one test share a group). A group is
# per module (module fixtures train once per module), except "digits": its runs are session fixtures
# below, trained once for test_training.py and test_tour.py, so all their tests go to one worker.
SHARED_RUNS = {
    "digits_run": "digits",
    "digits_classifier": "digits",
    "ensemble_runs": "digits",
    "tour": "digits",
    "moons_run": "moons",
    "text_run": "text",
}
SESSION_GROUPS = {"digits"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the marks into node ids
def pytest_collection_modifyitems(items):
    for item in items:
        groups = sorted({SHARED_RUNS[f] for f in getattr(item, "fixturenames", ()) if f in SHARED_RUNS})
        if groups:
            name = groups[0] if groups[0] in SESSION_GROUPS else f"{item.module.__name__}:{groups[0]}"
            item.add_marker(pytest.mark.xdist_group(name))


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A short class-conditional digits UNet run (`helpers.DIGITS_TRAIN`): its workdir."""
    workdir = tmp_path_factory.mktemp("digits")
    helpers.train(workdir, *helpers.DIGITS_TRAIN, config="configs/train.py:digits_unet")
    return workdir


@pytest.fixture(scope="session")
def digits_classifier(tmp_path_factory):
    """A clean digits classifier (`helpers.DIGITS_CLASSIFIER_TRAIN`): its workdir."""
    workdir = tmp_path_factory.mktemp("digits_classifier")
    helpers.train(workdir, *helpers.DIGITS_CLASSIFIER_TRAIN, config="configs/classifier.py:digits")
    return workdir


def pytest_collection_finish(session):
    # pytest 9.2 moved the node id that xdist's loadgroup rewrites, and the groups were silently dropped
    if session.config.getoption("loadgroup", default=False):
        marked = [item.nodeid for item in session.items if item.get_closest_marker("xdist_group")]
        lost = [nodeid for nodeid in marked if "@" not in nodeid]
        if lost:
            raise pytest.UsageError(f"pytest-xdist dropped the xdist_group of {lost[0]} (pytest/xdist versions?)")


@pytest.fixture(autouse=True, scope="module")
def _drop_compiled_programs():
    yield
    jax.clear_caches()
