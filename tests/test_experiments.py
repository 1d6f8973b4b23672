"""The README's main job runs end to end and reports exact-oracle scores."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sample_experiment_prints_the_table_and_writes_results(tmp_path):
    cmd = [
        sys.executable,
        "experiments/sample.py",
        "--config=configs/gmm.py:blobs",
        "--config.num_samples=300",
        "--config.steps=(8,)",
        "--config.solvers=('ddim', 'euler')",
        f"--workdir={tmp_path}",
    ]
    out = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"}
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "exact reverse kernel" in out.stdout and "PF-ODE RMSE" in out.stdout
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    ddim, euler = (r for r in rows if r["solver"] in ("ddim", "euler"))
    assert ddim["nfe"] == 8 and abs(ddim["pf_ode_rmse"] - euler["pf_ode_rmse"]) < 1e-9


def test_sample_experiment_rejects_an_unknown_solver():
    cmd = [sys.executable, "experiments/sample.py", "--config=configs/gmm.py", "--config.solvers=('dpm_9000',)"]
    out = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"}
    )
    assert out.returncode != 0 and "config.solvers must name one of" in out.stderr
