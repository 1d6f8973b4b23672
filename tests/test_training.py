"""End-to-end training on the CPU: it learns, it resumes bit-identically after kill -9 or SIGTERM, and
data parallelism over 8 devices gives the loss curve of one device. A finished run reads back with
`load_run` and redraws its samples bit for bit; running its command again changes nothing; a run of
another configuration in its workdir is refused. Damaged checkpoints are set aside and never deleted,
and the run continues bit-identically from the newest good one; a run that turns NaN stops without
saving it."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import ROOT, flip_bytes, largest_file, train, train_command, train_env


def _run(workdir, *overrides):
    """experiments/train.py on moons in `workdir`, whatever its exit code: the finished process."""
    cmd = train_command(workdir, *overrides)
    return subprocess.run(cmd, cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=900)


def _python(code):
    """Run `code` in a process of its own with the training commands' environment; its last line of
    output, read as JSON."""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=train_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _log(workdir):
    return [json.loads(line) for line in (workdir / "log.jsonl").read_text().splitlines()]


def _losses(workdir):
    return np.array([json.loads(line)["loss"] for line in (workdir / "log.jsonl").read_text().splitlines()])


def test_toy_mlp_samples_are_as_close_to_the_data_as_fresh_data(tmp_path):
    # Sliced W2^2 of 2000 samples against fresh data, within 2x of two fresh data sets' distance. Batches of
    # 256 rather than the config's 512 (CI time): measured 0.82x the data's own distance.
    final = train(tmp_path, "--config.batch_size=256")
    assert final["sliced_w2"] < 2 * final["sliced_w2_data_vs_data"], final
    assert (tmp_path / "samples_2000.png").exists() and (tmp_path / "loss.png").exists()
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tb"))


SHORT = ["--config.optim.total_steps=400", "--config.checkpoint_every=100", "--config.log_every=50",
         "--config.sample.num=200", "--config.optim.warmup_steps=20"]  # fmt: skip


@pytest.fixture(scope="module")
def moons_run(tmp_path_factory):
    """A finished short moons run (400 steps, 200 samples): (workdir, its final.json)."""
    workdir = tmp_path_factory.mktemp("moons")
    return workdir, train(workdir, *SHORT)


def _snapshot(directory):
    """Every file and folder under `directory`: (size, mtime in ns, bytes for files)."""
    out = {}
    for root, folders, files in os.walk(directory):
        for name in folders + files:
            path = os.path.join(root, name)
            info = os.stat(path)
            content = open(path, "rb").read() if name in files else None
            out[os.path.relpath(path, directory)] = (info.st_size, info.st_mtime_ns, content)
    return out


# train.py's parameter digest (SHA-256 of every leaf's bytes), for code run by `_python`
DIGEST = """
import hashlib, json, jax, numpy as np, diffjax as dj
def digest(tree):
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(tree)):
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()
"""


def test_load_run_redraws_the_samples_train_py_wrote_bit_identically(moons_run, tmp_path):
    workdir, final = moons_run
    out = _python(
        DIGEST
        + f"""
run = dj.training.load_run({str(workdir)!r})
np.save({str(tmp_path / "redrawn.npy")!r}, dj.training.draw_samples(run))
assert run.num_classes is None and run.null_label is None and isinstance(run.module, dj.models.MLP)
assert run.denoiser.params is run.ema_params and run.denoiser_for(run.params).params is run.params
print(json.dumps(dict(step=run.step, event=run.event_shape, total=run.config.optim.total_steps,
                      num=run.config.sample.num, params=digest(run.params), ema=digest(run.ema_params))))
"""
    )
    assert out == {"step": 400, "event": [2], "total": 400, "num": 200, "params": final["params_sha256"],
                   "ema": final["ema_params_sha256"]}  # fmt: skip
    np.testing.assert_array_equal(np.load(tmp_path / "redrawn.npy"), np.load(workdir / "samples_400.npz")["samples"])


def test_fit_in_memory_ends_bit_identically_where_train_py_ended(moons_run):
    """`dj.training.fit` of the config a train.py run saved: the same parameters, EMA and logged losses,
    bit for bit (the same compiled steps over the same batches, in one process, without checkpoints)."""
    workdir, final = moons_run
    out = _python(
        DIGEST
        + f"""
run, history = dj.training.fit(dj.training.load_run({str(workdir)!r}).config, progress=False)
assert run.step == 400 and run.workdir is None
print(json.dumps(dict(params=digest(run.params), ema=digest(run.ema_params), history=history)))
"""
    )
    assert out["params"] == final["params_sha256"] and out["ema"] == final["ema_params_sha256"]
    assert out["history"] == [{k: v for k, v in row.items() if k != "examples_per_s"} for row in _log(workdir)]


def test_a_finished_command_run_again_prints_its_metrics_and_writes_nothing(moons_run):
    workdir, final = moons_run
    before = _snapshot(workdir)
    out = _run(workdir, *SHORT)
    assert out.returncode == 0, out.stderr[-4000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == final
    assert _snapshot(workdir) == before  # log.jsonl, samples_*.png, loss.png, tb/, checkpoints: bytes and mtimes
    assert {"log.jsonl", "loss.png", "samples_400.png", "samples_400.npz", "tb"} <= set(before)


@pytest.mark.parametrize(
    "overrides,fields",
    [
        (["--config.model.args.width=128", "--config.model.args.depth=3"],
         ["config.model.args.depth (saved 4, given 3)", "config.model.args.width (saved 256, given 128)"]),
        (["--config.optim.learning_rate=1e-4", "--config.batch_size=64"],
         ["config.batch_size (saved 512, given 64)", "config.optim.learning_rate (saved 0.002, given 0.0001)"]),
    ],
)  # fmt: skip
def test_a_run_of_another_configuration_in_the_workdir_exits_2_naming_the_fields(moons_run, overrides, fields):
    workdir, _ = moons_run
    before = _snapshot(workdir)
    out = _run(workdir, *SHORT, *overrides)
    assert out.returncode == 2, out.stderr[-4000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ValueError:"), out.stderr
    assert f"differing fields: {'; '.join(fields)}." in lines[0] and "--config.overwrite=True" in lines[0], lines[0]
    assert _snapshot(workdir) == before


def test_a_damaged_final_checkpoint_is_set_aside_and_retrained_bit_identically(moons_run, tmp_path):
    """Four bytes flipped in the final checkpoint's largest array file (Orbax reads it without an error):
    the digests catch it, the folder is kept as bad-400, the run resumes from step 300 and ends with the
    reference's parameters; a stray file and an empty folder named like steps are left as they were."""
    reference_dir, reference = moons_run
    workdir = tmp_path / "damaged"
    shutil.copytree(reference_dir, workdir)
    checkpoints = workdir / "checkpoints"
    flip_bytes(largest_file(checkpoints / "400"))
    damaged = _snapshot(checkpoints / "400")
    (checkpoints / "990").write_text("not a checkpoint")
    os.makedirs(checkpoints / "995")
    out = _run(workdir, *SHORT)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "resumed from the checkpoint at step 300" in out.stdout
    assert f"checkpoint {checkpoints / '400'} is skipped: its arrays differ from the digests" in out.stderr
    assert _snapshot(checkpoints / "bad-400") == damaged
    assert sorted(os.listdir(checkpoints)) == ["200", "300", "400", "990", "995", "bad-400"]
    assert (checkpoints / "990").read_text() == "not a checkpoint" and os.listdir(checkpoints / "995") == []
    final = json.loads((workdir / "final.json").read_text())
    assert final["params_sha256"] == reference["params_sha256"], (final, reference)
    assert final["ema_params_sha256"] == reference["ema_params_sha256"]
    np.testing.assert_array_equal(_losses(workdir), _losses(reference_dir))


def test_no_restorable_checkpoint_is_refused_every_time_and_nothing_is_deleted(moons_run, tmp_path):
    workdir = tmp_path / "ruined"
    shutil.copytree(moons_run[0], workdir)
    checkpoints = workdir / "checkpoints"
    for step in ("200", "300", "400"):
        victim = largest_file(checkpoints / step)
        with open(victim, "r+b") as f:
            f.truncate(os.path.getsize(victim) // 2)
    damaged = _snapshot(checkpoints)
    for _ in range(2):  # the second finds only the set-aside ones, and still refuses to start afresh
        out = _run(workdir, *SHORT)
        assert out.returncode == 2, out.stderr[-4000:]
        last = out.stderr.strip().splitlines()[-1]
        assert "no checkpoint restores" in last and "bad-200, bad-300, bad-400" in last, last
        assert "--config.overwrite=True" in last
    moved = {path.replace(step, f"bad-{step}", 1): v for path, v in damaged.items() for step in ["200", "300", "400"]
             if path.startswith(step)}  # fmt: skip
    assert {k: v[2] for k, v in _snapshot(checkpoints).items()} == {k: v[2] for k, v in moved.items()}
    # --config.overwrite=True moves the whole old run aside and starts afresh: the reference, bit for bit
    out = _run(workdir, *SHORT, "--config.overwrite=True")
    assert out.returncode == 0, out.stderr[-4000:]
    assert f"was moved to {workdir / 'previous-1'}" in out.stdout
    assert sorted(os.listdir(workdir / "previous-1" / "checkpoints")) == ["bad-200", "bad-300", "bad-400"]
    assert json.loads((workdir / "final.json").read_text())["params_sha256"] == moons_run[1]["params_sha256"]


def test_sigterm_checkpoints_where_it_stops_and_the_rerun_ends_bit_identically(moons_run, tmp_path):
    reference_dir, reference = moons_run
    victim = tmp_path / "preempted"
    process = train(victim, *SHORT, wait=False)
    deadline = time.time() + 300
    while not (victim / "log.jsonl").exists():  # written just before the loop starts
        assert process.poll() is None and time.time() < deadline, "the run ended before its loop started"
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=300)[1].decode()
    assert process.returncode == 75, stderr[-4000:]  # preemption.PREEMPTED_EXIT_CODE
    stopped = int(stderr.split("SIGTERM: stopped at step ")[1].split()[0])
    assert 0 < stopped < 400 and stopped % 50 == 0, stderr[-2000:]  # after a whole call of 50 steps
    assert str(stopped) in os.listdir(victim / "checkpoints")
    resumed = train(victim, *SHORT)
    assert resumed["params_sha256"] == reference["params_sha256"]
    assert resumed["ema_params_sha256"] == reference["ema_params_sha256"]
    np.testing.assert_array_equal(_losses(victim), _losses(reference_dir))


def test_a_run_that_turns_non_finite_stops_with_exit_3_and_saves_nothing_of_it(tmp_path):
    """A learning rate of 1e30 overflows the parameters within the first call: the check at the first
    log step stops the run before any checkpoint or log row holds a NaN."""
    cmd = train_command(tmp_path, *SHORT, "--config.optim.learning_rate=1e30", "--config.checkpoint_every=50")
    out = subprocess.run(cmd, cwd=ROOT, env=train_env(optimized=False), capture_output=True, text=True, timeout=300)
    assert out.returncode == 3, out.stderr[-4000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("NonFiniteError: training turned non-finite between step 0 and step 50"), last
    assert "config.optim.skip_nonfinite" in last
    assert os.listdir(tmp_path / "checkpoints") == [] and (tmp_path / "log.jsonl").read_text() == ""


def test_a_larger_total_steps_continues_a_finished_run(moons_run, tmp_path):
    workdir = tmp_path / "longer"
    shutil.copytree(moons_run[0], workdir)
    longer = [*SHORT, "--config.optim.total_steps=450"]
    out = _run(workdir, *longer)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "resumed from the checkpoint at step 400" in out.stdout
    assert json.loads((workdir / "final.json").read_text())["step"] == 450
    assert [json.loads(line)["step"] for line in (workdir / "log.jsonl").read_text().splitlines()][-2:] == [400, 450]
    assert (workdir / "samples_450.npz").exists()


def test_kill_9_and_restart_continue_bit_identically(moons_run, tmp_path):
    reference_dir, reference = moons_run
    victim = tmp_path / "victim"
    process = train(victim, *SHORT, wait=False)
    deadline = time.time() + 300
    while not (victim / "checkpoints" / "100").is_dir():  # a finished checkpoint (Orbax renames on commit)
        assert process.poll() is None and time.time() < deadline, "no checkpoint before the run ended"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = train(victim, *SHORT)
    assert resumed["params_sha256"] == reference["params_sha256"]
    assert resumed["ema_params_sha256"] == reference["ema_params_sha256"]
    np.testing.assert_array_equal(_losses(victim), _losses(reference_dir))


def test_eight_devices_give_the_loss_curve_of_one(tmp_path):
    one = tmp_path / "one"
    eight = tmp_path / "eight"
    # 50 steps, 5 losses logged (the last override wins)
    shorter = [*SHORT, "--config.optim.total_steps=50", "--config.log_every=10", "--config.steps_per_call=10"]
    train(one, *shorter, "--config.num_devices=1", devices=8, optimized=False)
    train(eight, *shorter, "--config.num_devices=8", devices=8, optimized=False)
    np.testing.assert_allclose(_losses(eight), _losses(one), rtol=1e-4)


def test_digits_unet_loss_falls(digits_run):
    # measured: 0.724 over the first 20 steps, 0.356 over the last 60
    losses = _losses(digits_run)
    assert losses[-3:].mean() < 0.6 * losses[0], losses
    assert np.all(np.diff(np.convolve(losses, np.ones(3) / 3, "valid")) < 0.05), losses


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
    # 200 steps of training give poor samples: their FID is far above two halves of the real digits
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


INVERT_SMALL = (
    ["--config.num_images=4", "--config.batch_size=4", "--config.tasks=('box',)"]
    + [f"--config.{m}.steps=3" for m in ("dps", "steered", "pigdm", "ddrm", "reddiff")]
    + ["--config.repaint.steps=4", "--config.repaint.jump_length=2", "--config.repaint.jump_n_sample=2"]
)


def test_invert_experiment_runs_every_method_on_held_out_digits(digits_run, tmp_path):
    cmd = [sys.executable, "experiments/invert.py", "--config=configs/invert.py:digits", f"--config.run={digits_run}",
           *INVERT_SMALL, "--config.pigdm.data_variance=data", f"--workdir={tmp_path}"]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "PSNR, SSIM: higher is better" in out.stdout
    rows = {(r["task"], r["method"]): r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    # one task keeps the test cheap (every method compiles once per task; the operators' own tests cover the
    # others); RePaint's (T, j, r) = (4, 2, 2) walks 4 + 1 * 1 * 2 = 6 down steps
    expected = {("box", m): 3 for m in ("dps", "steered", "pigdm", "ddrm", "reddiff")}
    expected.update({("box", "pinv"): 0, ("box", "repaint"): 6})
    assert {k: r["nfe"] for k, r in rows.items()} == expected
    assert all(r["finite"] and 0 < r["psnr"] < 100 and -1 <= r["ssim"] <= 1 for r in rows.values()), rows
    # A^+ y and RePaint's pasted output reproduce the observed pixels up to rounding
    assert rows[("box", "pinv")]["measurement_error"] < 1e-5 and rows[("box", "repaint")]["measurement_error"] < 1e-5
    assert (tmp_path / "grid_box.png").exists()
    # PiGDM's data_variance="data" is measured on the run's training split (digits in [-1, 1]: about 0.57)
    assert 0.5 < rows[("box", "pigdm")]["settings"]["data_variance"] < 0.65


@pytest.mark.parametrize(
    "override,message",
    [
        ("--config.methods=('dps', 'magic')", "config.methods"),
        ("--config.tasks=('colourise',)", "config.tasks"),
        ("--config.sigma_y=-0.1", "config.sigma_y"),
        ("--config.run=", "config.run"),
        ("--config.pigdm.data_variance=-1", "config.pigdm.data_variance"),
        ("--config.pigdm.data_variance=wide", "config.pigdm.data_variance"),
    ],
)
def test_invert_experiment_rejects_bad_configs_in_one_line(override, message):
    cmd = [sys.executable, "experiments/invert.py", "--config=configs/invert.py:digits", "--config.run=/nonexistent",
           override]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]


SMALL_IMAGE_RUNS = {  # config -> overrides that keep a 2-step run small
    "configs/train.py:digits_dit": ["--config.model.args.hidden_size=32", "--config.model.args.depth=2"],
    "configs/train.py:shapes_unet": [
        "--config.model.args.channels=16",
        "--config.model.args.num_res_blocks=1",
        "--config.model.args.channel_mults=(1, 2)",
        "--config.model.args.attention_resolutions=(16,)",
    ],  # fmt: skip
    "configs/classifier.py:shapes": ["--config.model.args.channels=16"],
    "configs/classifier.py:digits_noisy": ["--config.model.args.channels=16"],
}


@pytest.mark.parametrize("config", sorted(SMALL_IMAGE_RUNS))
def test_every_image_config_builds_and_trains(tmp_path, config):
    sampling = ["--config.sample.num=4", "--config.sample.steps=2"] if "train.py" in config else []
    final = train(tmp_path, "--config.optim.total_steps=2", "--config.optim.warmup_steps=1", "--config.batch_size=8",
                   "--config.checkpoint_every=2", "--config.log_every=1", *SMALL_IMAGE_RUNS[config], *sampling,
                   config=config, optimized=False)  # fmt: skip
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
        ("--config.checkpoint_every=75", "config.checkpoint_every"),
    ],
)
def test_bad_configs_fail_before_training_and_name_the_field(tmp_path, override, message):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "experiments/train.py", "--config=configs/train.py:moons", f"--workdir={tmp_path}", override]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "ValueError" in out.stderr and message in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "checkpoints").exists()


LIKELIHOOD_SMALL = ["--config.num_images=2", "--config.batch_size=2", "--config.rtol=1e-2", "--config.atol=1e-2",
                    "--config.num_probes=4"]  # fmt: skip


def test_likelihood_experiment_scores_trained_below_untrained(digits_run, tmp_path):
    # 2 held-out digits, dequantised on their 17 levels, Hutchinson with 8 probes (the exact divergence, 64
    # JVPs of the UNet per evaluation, is checked against exact densities in test_likelihood.py and run on
    # 320 digits in BENCHMARKS.md). Trained and untrained parameters share the compiled solve and the probes.
    cmd = [sys.executable, "experiments/likelihood.py", "--config=configs/likelihood.py:digits",
           f"--config.run={digits_run}", *LIKELIHOOD_SMALL, "--config.estimators=('hutchinson',)",
           "--config.compare_untrained=True", f"--workdir={tmp_path}"]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "ddpm_vlb skipped" in out.stdout and "bits/dim: lower is better" in out.stdout  # a vp_cosine run
    rows = {r["parameters"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    assert set(rows) == {"trained", "untrained"}
    assert all(r["finite"] and r["nfe"] > 0 and r["accepted"] > 0 and r["se_probes"] >= 0 for r in rows.values())
    assert rows["trained"]["se_probes"] > 0  # (an untrained network is nearly constant: every probe agrees)
    # training lowers the bits/dim (probe SE about 0.01)
    trained, untrained = rows["trained"], rows["untrained"]
    assert trained["bits_per_dim"] + 3 * (trained["se_probes"] + untrained["se_probes"]) < untrained["bits_per_dim"]


@pytest.mark.parametrize(
    "override,message",
    [("--config.estimators=('exact', 'skilling')", "config.estimators"),
     ("--config.num_probes=0", "config.num_probes")],
)  # fmt: skip
def test_likelihood_experiment_rejects_bad_configs_in_one_line(override, message):
    cmd = [sys.executable, "experiments/likelihood.py", "--config=configs/likelihood.py:digits",
           "--config.run=/nonexistent", override]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and message in lines[0], out.stderr[-2000:]


ENSEMBLE_SMALL = ["--config.optim.total_steps=2", "--config.optim.warmup_steps=1", "--config.batch_size=8",
                  "--config.checkpoint_every=2", "--config.log_every=1", "--config.model.args.channels=16",
                  "--config.model.args.num_res_blocks=1", "--config.model.args.channel_mults=(1,)"]  # fmt: skip
EXPERT_SMALL = ["--config.model.args.attention_resolutions=()", "--config.sample.num=4", "--config.sample.steps=1",
                "--config.sample.solver=ddim"]  # fmt: skip


@pytest.fixture(scope="module")
def ensemble_runs(tmp_path_factory):
    """2-step runs of configs/ensemble.py's two experts and router (tiny networks), trained side by side."""
    root = tmp_path_factory.mktemp("ensemble")
    procs = {arg: train(root / arg, *ENSEMBLE_SMALL, *(EXPERT_SMALL if arg != "router" else []),
                         config=f"configs/ensemble.py:{arg}", wait=False, optimized=False)
             for arg in ("expert0", "expert1", "router")}  # fmt: skip
    for arg, proc in procs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-4000:]
        assert json.loads((root / arg / "final.json").read_text())["step"] == 2
    return root


def test_compose_experiment_runs_every_method(ensemble_runs, digits_run, digits_classifier, tmp_path):
    cmd = [sys.executable, "experiments/compose.py", "--config=configs/compose.py:digits",
           f"--config.experts=('{ensemble_runs / 'expert0'}', '{ensemble_runs / 'expert1'}')",
           f"--config.router={ensemble_runs / 'router'}", f"--config.full={digits_run}",
           f"--config.classifier={digits_classifier}", "--config.num_samples=8", "--config.steps=4",
           f"--workdir={tmp_path}"]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "FID: lower is better" in out.stdout
    rows = {r["method"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    assert list(rows) == ["expert0", "expert1", "average", "or", "and", "ensemble", "full"]
    for r in rows.values():
        assert r["finite"] and 0 <= r["first_share"] <= 1 and 1 <= r["classes"] <= 10 and np.isfinite(r["fid"]), r
        assert abs(sum(r["histogram"]) - 1) < 1e-9
    # AND equalises the increments of the two running log-densities at every step, from equal starts: whatever
    # the (2-step) models, the final estimates agree up to float32 rounding
    assert rows["and"]["median_log_q_gap"] < 1e-3 and "median_log_q_gap" in rows["or"]
    assert (tmp_path / "grid.png").exists()


def test_compose_experiment_rejects_bad_configs_in_one_line():
    cmd = [sys.executable, "experiments/compose.py", "--config=configs/compose.py:digits",
           "--config.experts=('a', 'b')", "--config.and_solver=heun"]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "and" in lines[0], out.stderr[-2000:]
