"""README's first command, `experiments/tour.py`, at tiny settings (`configs/tour.py:tiny`): every part runs
and writes its report, and the numbers that have exact answers are right.

The tour trains its runs through experiments/train.py and reuses finished ones. Its digits model and
classifier are the suite's (conftest.py's session fixtures, copied into its workdir and named by the same
overrides), so here it trains only its 100-step moons run.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers import DIGITS_CLASSIFIER_TRAIN, DIGITS_TRAIN, ROOT


@pytest.fixture(scope="module")
def tour(tmp_path_factory, digits_run, digits_classifier):
    workdir = tmp_path_factory.mktemp("tour")
    shutil.copytree(digits_run, workdir / "digits")
    shutil.copytree(digits_classifier, workdir / "digits_classifier")
    runs = [f"--config.digits.train={DIGITS_TRAIN!r}", f"--config.digits.classifier_train={DIGITS_CLASSIFIER_TRAIN!r}"]
    cmd = [sys.executable, "experiments/tour.py", "--config=configs/tour.py:tiny", f"--workdir={workdir}", *runs]
    out = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    with open(workdir / "results.json") as f:
        results = json.load(f)
    for run, source in (("digits", digits_run), ("digits_classifier", digits_classifier)):  # reused, not retrained
        assert (workdir / run / "final.json").read_bytes() == (source / "final.json").read_bytes()
        assert sorted(os.listdir(workdir / run)) == sorted(os.listdir(source))
    return workdir, out.stdout, results


def test_the_report_has_every_part_its_figures_and_the_runs(tour):
    workdir, stdout, _ = tour
    report = (workdir / "report.md").read_text()
    for heading in ("## 1. Solvers on an exact mixture", "## 2. A toy model", "## 3. A digits model",
                    "## 4. Steering against search"):  # fmt: skip
        assert heading in report and heading in stdout
    for figure in ("error_vs_nfe.png", "moons.png", "digits.png", "reward_vs_nfe.png", "steered.png"):
        assert f"]({figure})" in report and (workdir / figure).stat().st_size > 10_000
    for run in ("moons", "digits", "digits_classifier"):
        assert (workdir / run / "final.json").exists()
    assert stdout.rstrip().endswith(f"report: {workdir / 'report.md'}")
    assert "lower is better" in report and "higher is better" in report


def test_solvers_on_the_exact_mixture_converge(tour):
    """The denoiser is exact, so each solver's distance to the exact ODE shrinks with steps: from 3 to 12 steps
    by at least 3x for first-order euler (measured 6.9x) and 10x for third-order unipc (measured 47x)."""
    rows = tour[2]["solvers"]
    error = {(r["solver"], r["steps"]): r["error"] for r in rows}
    assert error["euler", 3] > 3 * error["euler", 12]
    assert error["unipc", 3] > 10 * error["unipc", 12]
    assert all(r["nfe"] == r["steps"] for r in rows)  # single-step-per-NFE solvers


def test_steering_rows_compare_at_equal_nfe(tour):
    """NFE per output is K x steps for FK, best-of-N and random search alike (6 steps in the tiny config)."""
    rows = tour[2]["steering"]
    assert [(r["method"], r["K"]) for r in rows] == [("unsteered", 1), ("FK", 2), ("best-of-N", 2),
                                                     ("random search", 2)]  # fmt: skip
    assert all(r["nfe"] == 6 * r["K"] for r in rows)
    assert all(-50 < r["reward"] <= 0 and 0 <= r["hit"] <= 1 for r in rows)  # log-probabilities, rates


def test_the_readme_api_example_runs_and_steers():
    """README's twenty lines, run as they are: 20 NFE, and the steered outputs' mean reward above the
    unsteered samples' (measured -0.22 against -3.80)."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    code = readme.split("## The API in twenty lines", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "JAX_PLATFORMS": "cpu"},
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0] == "20 (512, 2)"
    shape, unsteered, steered = lines[1].rsplit(" ", 2)
    assert shape == "(64, 2)" and float(steered) > float(unsteered) + 1.0
    assert "Warning" not in out.stderr
