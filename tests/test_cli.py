"""Every experiment's command line (`experiments/cli.py`): a mistake ends the program before anything runs
with one line on stderr, `ValueError: ...`, naming the flag or field and what is allowed, and exit code 2,
writing nothing; `--help` and `--print_config` print and exit 0.

(Each case is a fresh Python process: about 3 s of CPU, most of it importing JAX and diffjax. The config
checks of each experiment are tested beside its run, in test_training.py and test_text_training.py.)
"""

import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args):
    cmd = [sys.executable, f"experiments/{script}", *args]
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True)


MISTAKES = [  # (script, arguments, what the one line must say)
    # a config file that does not exist: the files beside it are listed
    ("train.py", ["--config=configs/trian.py:moons"], "no such file 'configs/trian.py'; configs has"),
    # a config argument get_config does not know: its own message, after the flag
    ("train.py", ["--config=configs/train.py:mons"], "--config=configs/train.py:mons: configs/train.py argument"),
    # a misspelt field, nested or not, with a default config or a given one: the closest fields are suggested
    ("train.py", ["--config=configs/train.py:moons", "--config.optim.lerning_rate=1"],
     "--config.optim.lerning_rate: no such field; did you mean --config.optim.learning_rate"),
    ("train.py", ["--config=configs/train.py:moons", "--config.lerning_rate=1"],
     "did you mean --config.optim.learning_rate?"),
    ("sample.py", ["--config.stpes=3"], "--config.stpes: no such field; did you mean --config.steps?"),
    # an ill-typed override
    ("train.py", ["--config=configs/train.py:moons", "--config.batch_size=many"], "--config.batch_size=many"),
    # a required flag left out, an unknown flag
    ("train.py", ["--config=configs/train.py:moons"], "--workdir is required"),
    ("compose.py", ["--nosuchflag=1"], "Unknown command line flag 'nosuchflag'"),
    # a solver spec with an argument its builder does not take (found before training, not after it), a bad value
    ("train.py", ["--config=configs/train.py:moons", "--config.sample.solver=dpmpp_2m(ordr=2)"],
     "config.sample.solver='dpmpp_2m(ordr=2)': dpmpp_2m has no argument 'ordr'; its arguments are"),
    ("train.py", ["--config=configs/train.py:moons", "--config.sample.solver=unipc(order=9)"],
     "config.sample.solver='unipc(order=9)': order must be one of [1, 2, 3], got 9"),
    ("sample.py", ["--config.solvers=('ddim(eta=0.5)', 'heun(s_churn=-1)')"], "config.solvers='heun(s_churn=-1)'"),
    ("train.py", ["--config=configs/train.py:moons", "--config.sample.grid=karas"],
     "config.sample.grid must name one of ['diffusers', 'karras'"),
    # sample settings and checkpointing, refused before training rather than after it
    ("train.py", ["--config=configs/train.py:moons", "--config.sample.solver=bogus"],
     "config.sample.solver must name one of ['ddim'"),
    ("train.py", ["--config=configs/train.py:moons", "--config.sample.solver=ddim(eta=2.0)"],
     "config.sample.solver='ddim(eta=2.0)': eta must lie in [0.0, 1.0], got 2.0"),
    ("train.py", ["--config=configs/train.py:moons", "--config.sample.num=0"],
     "config.sample.num must be an integer >= 1, got 0"),
    ("train.py", ["--config=configs/train.py:moons", "--config.keep_checkpoints=0"],
     "config.keep_checkpoints must be an integer >= 1, got 0"),
    ("train.py", ["--config=configs/train.py:moons", "--config.optim.skip_nonfinite=-1"],
     "config.optim.skip_nonfinite must be an integer >= 0, got -1"),
    # values out of range in the experiments' own configs
    ("steer.py", ["--config.particles=(0,)"], "config.particles must be an integer >= 1, got 0"),
    ("search.py", ["--config=configs/search.py", "--config.budgets=many"], "config.budgets"),
    ("text.py", ["--config=configs/text.py:cpu", "--config.run=/nonexistent"], "config.run must be a training workdir"),
]  # fmt: skip


@pytest.mark.parametrize("script, args, message", MISTAKES)
def test_a_mistake_exits_2_with_one_line_naming_it_and_writes_nothing(tmp_path, script, args, message):
    workdir = tmp_path / "workdir"
    if "--workdir is required" not in message:
        args = [*args, f"--workdir={workdir}"]
    out = _run(script, *args)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith("ValueError: ") and message in lines[0], lines[0]
    assert not workdir.exists()


def test_help_prints_the_docstring_and_the_flags_and_exits_0():
    out = _run("train.py", "--help")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("Train a diffusion model from a config")
    assert "--workdir" in out.stdout and "--print_config" in out.stdout and "--config" in out.stdout


def test_print_config_lists_every_field_with_the_overrides_and_needs_no_workdir():
    out = _run("train.py", "--config=configs/train.py:moons", "--config.optim.learning_rate=0.5", "--print_config")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert "optim.learning_rate: float = 0.5" in lines and "data.set: str = 'moons'" in lines, out.stdout
    assert "batch_size: int = 512" in lines and all(": " in line and " = " in line for line in lines)


@pytest.mark.parametrize("script", ["train.py", "sample.py"])
def test_a_workdir_that_is_a_file_is_refused_before_any_work(tmp_path, script):
    (tmp_path / "taken").write_text("a file")
    config = ["--config=configs/train.py:moons"] if script == "train.py" else []
    for workdir in (tmp_path / "taken", tmp_path / "taken" / "run"):
        out = _run(script, *config, f"--workdir={workdir}")
        assert out.returncode == 2 and out.stderr.strip().splitlines() == [
            f"ValueError: --workdir={workdir}: {str(tmp_path / 'taken')!r} is a file, not a directory"
        ], out.stderr[-3000:]


def test_train_on_an_npz_of_ones_own_with_labels(tmp_path):
    """configs/train.py:npz trains the MLP on an (N, 3) array under a key of the user's choosing,
    conditioned on its labels, and samples the learned model: the README's how-to, at 20 steps."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 256)
    np.savez(tmp_path / "points.npz", points=rng.normal(size=(256, 3)) + labels[:, None], classes=labels)
    fields = dict(path=tmp_path / "points.npz", key="points", label_key="classes", conditional=True)
    args = [f"--config.data.{k}={v}" for k, v in fields.items()]
    args += ["--config.optim.total_steps=20", "--config.optim.warmup_steps=5", "--config.steps_per_call=10",
             "--config.log_every=10", "--config.batch_size=64", "--config.sample.num=32",
             "--config.sample.steps=4"]  # fmt: skip
    out = _run("train.py", "--config=configs/train.py:npz", *args, f"--workdir={tmp_path / 'run'}")
    assert out.returncode == 0, out.stderr[-3000:]
    samples = np.load(tmp_path / "run" / "samples_20.npz")["samples"]
    assert samples.shape == (32, 3) and np.isfinite(samples).all()
    out = _run("train.py", "--config=configs/train.py:npz", f"--workdir={tmp_path / 'empty'}")
    assert out.returncode == 2, out.stderr
    assert "data.path must name an existing .npz file or folder of PNGs, got ''" in out.stderr, out.stderr
