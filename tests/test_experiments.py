"""experiments/sample.py on the Gaussian-mixture oracle runs end to end and reports exact-oracle scores."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
    """An experiment run in a subprocess on the CPU."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})  # fmt: skip


def test_sample_experiment_prints_the_table_and_writes_results(tmp_path):
    cmd = [
        "experiments/sample.py",
        "--config=configs/gmm.py:blobs",
        "--config.num_samples=300",
        "--config.steps=(8,)",
        "--config.solvers=('ddim', 'euler')",
        f"--workdir={tmp_path}",
    ]
    out = _run(*cmd)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "exact reverse kernel" in out.stdout and "PF-ODE RMSE" in out.stdout
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    ddim, euler = (r for r in rows if r["solver"] in ("ddim", "euler"))
    assert ddim["nfe"] == 8 and abs(ddim["pf_ode_rmse"] - euler["pf_ode_rmse"]) < 1e-9


def test_sample_experiment_rejects_an_unknown_solver():
    cmd = ["experiments/sample.py", "--config=configs/gmm.py", "--config.solvers=('dpm_9000',)"]
    out = _run(*cmd)
    assert out.returncode != 0 and "config.solvers must name one of" in out.stderr


def test_steer_experiment_on_the_toy_reaches_towards_the_exact_target(tmp_path):
    # ring oracle, r = -|x - (2, 0)|^2 / 2, lambda 2: the tilted target puts 0.837 of its mass on
    # mode 0 (the exact row, 20000 draws); eight particles already move FK from 1/8 most of the way
    cmd = ["experiments/steer.py", "--config=configs/steer.py:toy", "--config.num_conditions=256",
           "--config.particles=(1, 8)", "--config.steps=10", f"--workdir={tmp_path}"]  # fmt: skip
    out = _run(*cmd)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {(r["method"], r["K"]): r for r in results["rows"]}
    assert set(rows) == {("unsteered", 1), ("fk", 8), ("tds", 8), ("importance", 8), ("best_of_n", 8)}
    assert rows["unsteered", 1]["nfe"] == 10 and rows["fk", 8]["nfe"] == rows["best_of_n", 8]["nfe"] == 80
    assert abs(results["exact_target"]["hit"] - 0.8368) < 5 * (0.8368 * 0.1632 / 20_000) ** 0.5
    assert rows["unsteered", 1]["hit"] < 0.25 and rows["fk", 8]["hit"] > 0.6, rows
    for name in ("scaling.png", "samples_K1.png", "samples_fk.png", "samples_tds.png"):
        assert (tmp_path / name).exists()


def test_search_experiment_spends_the_budgets_it_reports(tmp_path):
    # budgets 1 and 4 on 6 steps: plain 6 NFE; random 4 x 6; zero-order 1 round of pivot + 3
    # neighbours; paths 2 paths x 3 steps then 4 branches per phase; FK 4 particles x 6 steps
    cmd = ["experiments/search.py", "--config=configs/search.py:toy", "--config.num_conditions=64",
           "--config.budgets=(1, 4)", "--config.steps=6", f"--workdir={tmp_path}"]  # fmt: skip
    out = _run(*cmd)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {r["method"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    assert {m: rows[m]["nfe"] for m in ("plain", "random", "zero_order", "fk")} == {
        "plain": 6, "random": 24, "zero_order": 24, "fk": 24}  # fmt: skip
    assert rows["paths"]["nfe"] > 6 and rows["random"]["reward"] > rows["plain"]["reward"]
    assert (tmp_path / "scaling.png").exists()


def test_search_experiment_killed_part_way_skips_the_rows_it_has(tmp_path):
    """A run whose progress.jsonl holds its config and first row (and a line torn by a kill): the rerun
    keeps that row as it was (its seconds too, so it was not run again), runs the others, and a rerun
    with another config is refused naming the field."""
    cmd = ["experiments/search.py", "--config=configs/search.py:toy", "--config.num_conditions=16",
           "--config.budgets=(1, 2)", "--config.steps=4", "--config.methods=('random', 'fk')",
           f"--workdir={tmp_path}"]  # fmt: skip
    assert _run(*cmd).returncode == 0
    first = json.loads((tmp_path / "results.json").read_text())["rows"]
    progress = tmp_path / "progress.jsonl"
    lines = progress.read_text().splitlines()
    assert len(lines) == 1 + len(first) == 4 and json.loads(lines[0])["config"]["budgets"] == [1, 2]
    progress.write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])  # killed while writing the second row
    again = _run(*cmd)
    assert again.returncode == 0, again.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert rows[0] == first[0]  # read back, not run again
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert [strip(r) for r in rows] == [strip(r) for r in first]  # the same keys: the same results
    assert [json.loads(line)["step"] for line in progress.read_text().splitlines()] == [0, 1, 2, 3]  # torn line gone
    other = _run(*cmd[:-1], "--config.steps=5", f"--workdir={tmp_path}")
    assert other.returncode == 2 and "holds rows of another config (fields: steps)" in other.stderr, other.stderr
