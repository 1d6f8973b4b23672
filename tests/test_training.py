"""End-to-end training on the CPU: it learns, it resumes bit-identically after kill -9, and data
parallelism over 8 devices gives the loss curve of one device."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(workdir, *overrides, config="configs/train.py:moons", devices=None, wait=True):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    cmd = [sys.executable, "experiments/train.py", f"--config={config}", f"--workdir={workdir}", *overrides]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads((workdir / "final.json").read_text())


def _losses(workdir):
    return np.array([json.loads(line)["loss"] for line in (workdir / "log.jsonl").read_text().splitlines()])


def test_toy_mlp_samples_are_as_close_to_the_data_as_fresh_data(tmp_path):
    # Sliced W2^2 of 2000 samples against fresh data, within 2x of two fresh data sets' distance.
    final = _train(tmp_path)
    assert final["sliced_w2"] < 2 * final["sliced_w2_data_vs_data"], final
    assert (tmp_path / "samples_2000.png").exists() and (tmp_path / "loss.png").exists()
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tb"))


SHORT = ["--config.optim.total_steps=400", "--config.checkpoint_every=100", "--config.log_every=50",
         "--config.sample.num=200", "--config.optim.warmup_steps=20"]  # fmt: skip


def test_kill_9_and_restart_continue_bit_identically(tmp_path):
    reference = _train(tmp_path / "reference", *SHORT)
    victim = tmp_path / "victim"
    process = _train(victim, *SHORT, wait=False)
    deadline = time.time() + 300
    while not (victim / "checkpoints" / "100").is_dir():  # a finished checkpoint (Orbax renames on commit)
        assert process.poll() is None and time.time() < deadline, "no checkpoint before the run ended"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = _train(victim, *SHORT)
    assert resumed["params_sha256"] == reference["params_sha256"]
    assert resumed["ema_params_sha256"] == reference["ema_params_sha256"]
    np.testing.assert_array_equal(_losses(victim), _losses(tmp_path / "reference"))


def test_eight_devices_give_the_loss_curve_of_one(tmp_path):
    one = tmp_path / "one"
    eight = tmp_path / "eight"
    shorter = [*SHORT, "--config.optim.total_steps=200"]  # the last override wins
    _train(one, *shorter, "--config.num_devices=1", devices=8)
    _train(eight, *shorter, "--config.num_devices=8", devices=8)
    np.testing.assert_allclose(_losses(eight), _losses(one), rtol=1e-4)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A short class-conditional digits UNet run (300 steps, batch 64, 32 channels)."""
    workdir = tmp_path_factory.mktemp("digits")
    _train(workdir, "--config.optim.total_steps=300", "--config.log_every=30", "--config.checkpoint_every=300",
           "--config.batch_size=64", "--config.model.args.channels=32", "--config.sample.num=16",
           "--config.sample.steps=10", config="configs/train.py:digits_unet")  # fmt: skip
    return workdir


def test_digits_unet_loss_falls(digits_run):
    losses = _losses(digits_run)
    first, last = losses[:3].mean(), losses[-3:].mean()
    assert last < 0.6 * first, losses
    assert np.all(np.diff(np.convolve(losses, np.ones(3) / 3, "valid")) < 0.05), losses


@pytest.fixture(scope="module")
def digits_classifier(tmp_path_factory):
    """A clean digits classifier: 300 steps on the 80% training split."""
    workdir = tmp_path_factory.mktemp("digits_classifier")
    _train(workdir, "--config.optim.total_steps=300", "--config.checkpoint_every=300",
           config="configs/classifier.py:digits")  # fmt: skip
    return workdir


def test_digits_classifier_learns_and_scores_samples_of_a_trained_model(digits_run, digits_classifier, tmp_path):
    # measured 0.986 accuracy on the held-out 20%
    classifier = digits_classifier
    final = json.loads((classifier / "final.json").read_text())
    assert final["held_out_accuracy"] > 0.95 and final["held_out_size"] == 359, final
    evaluation = tmp_path / "eval"
    cmd = [sys.executable, "experiments/sample.py", "--config=configs/sample.py", f"--config.run={digits_run}",
           f"--config.classifier_run={classifier}", "--config.num=100", "--config.batch_size=50",
           "--config.steps=(5,)", "--config.solvers=('ddim',)", "--config.guidance=(1.0, 4.0)",
           f"--workdir={evaluation}"]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "chunks of 100 samples, each against 359 held-out images" in out.stdout and "(the floor)" in out.stdout, (
        out.stdout
    )
    results = json.loads((evaluation / "results.json").read_text())
    rows = results["rows"]
    assert [(r["guidance"], r["nfe"]) for r in rows] == [(1.0, 5), (4.0, 5)]
    # 300 steps of training give poor samples: their FID is far above two halves of the real digits
    assert all(r["fid"] > results["floor"]["fid"] > 0 and 0 <= r["accuracy"] <= 1 for r in rows), results
    assert rows[0]["fid"] != rows[1]["fid"]  # guidance changes the samples
    assert (evaluation / "samples_guidance_1.png").exists() and (evaluation / "samples_guidance_4.png").exists()


def test_steer_experiment_steers_a_trained_digits_model_with_its_classifier(digits_run, digits_classifier, tmp_path):
    # the unconditional (null-label) model steered to digit 3 by the classifier's log-probability
    cmd = [sys.executable, "experiments/steer.py", "--config=configs/steer.py:digits", f"--config.run={digits_run}",
           f"--config.classifier_run={digits_classifier}", "--config.num_conditions=8", "--config.particles=(1, 4)",
           "--config.steps=3", "--config.methods=('fk', 'tds', 'best_of_n')", f"--workdir={tmp_path}"]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-4000:]
    rows = {r["method"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    assert rows["fk"]["nfe"] == rows["best_of_n"]["nfe"] == 12 and rows["tds"]["nfe"] == 16
    assert rows["best_of_n"]["reward"] > rows["unsteered"]["reward"], rows  # the best of 4 beats one draw
    assert all(0 <= r["hit"] <= 1 and r["diversity"] > 0 for r in rows.values()), rows
    assert (tmp_path / "samples_fk.png").exists() and (tmp_path / "scaling.png").exists()


SMALL_IMAGE_RUNS = {  # config -> overrides that keep a 2-step run small
    "configs/train.py:digits_dit": ["--config.model.args.hidden_size=32", "--config.model.args.depth=2"],
    "configs/train.py:shapes_unet": ["--config.model.args.channels=16", "--config.model.args.num_res_blocks=1"],
    "configs/classifier.py:shapes": ["--config.model.args.channels=16"],
    "configs/classifier.py:digits_noisy": ["--config.model.args.channels=16"],
}


@pytest.mark.parametrize("config", sorted(SMALL_IMAGE_RUNS))
def test_every_image_config_builds_and_trains(tmp_path, config):
    sampling = ["--config.sample.num=4", "--config.sample.steps=2"] if "train.py" in config else []
    final = _train(tmp_path, "--config.optim.total_steps=2", "--config.optim.warmup_steps=1", "--config.batch_size=8",
                   "--config.checkpoint_every=2", "--config.log_every=1", *SMALL_IMAGE_RUNS[config], *sampling,
                   config=config)  # fmt: skip
    assert final["step"] == 2 and np.all(np.isfinite(_losses(tmp_path)))
    if config.endswith("shapes_unet"):  # the attribute reward on procedural images, through steer.py
        cmd = [sys.executable, "experiments/steer.py", "--config=configs/steer.py:shapes", f"--config.run={tmp_path}",
               "--config.reward=colour(colour='red')", "--config.num_conditions=2", "--config.particles=(1, 2)",
               "--config.steps=2", "--config.methods=('fk',)", f"--workdir={tmp_path / 'steer'}"]  # fmt: skip
        out = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-4000:]
        rows = json.loads((tmp_path / "steer" / "results.json").read_text())["rows"]
        assert [(r["method"], r["K"], r["nfe"]) for r in rows] == [("unsteered", 1, 2), ("fk", 2, 4)]


@pytest.mark.parametrize(
    "override,message",
    [
        ("--config.model.name=resnet", "config.model.name"),
        ("--config.batch_size=-4", "config.batch_size"),
        ("--config.schedule=cosine", "config.schedule"),
        ("--config.no_such_field=1", "no_such_field"),
        ("--config.batch_size=many", "batch_size"),
        ("--config.checkpoint_every=75", "config.checkpoint_every"),
    ],
)
def test_bad_configs_fail_before_training_and_name_the_field(tmp_path, override, message):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "experiments/train.py", "--config=configs/train.py:moons", f"--workdir={tmp_path}", override]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "ValueError" in out.stderr and message in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "checkpoints").exists()
