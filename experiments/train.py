r"""Train a diffusion model from a config; resume from the newest readable checkpoint in --workdir.

    python experiments/train.py --config=configs/train.py:moons --workdir=runs/moons
    python experiments/train.py --config=configs/train.py:digits_unet --workdir=runs/digits \
        --config.optim.total_steps=2000
    python experiments/train.py --config=configs/classifier.py:digits --workdir=runs/digits_classifier
    python experiments/train.py --config=configs/train.py:text --workdir=runs/text

Data parallel over a 'data' mesh of `config.num_devices` devices (0: all). Writes to --workdir:
checkpoints (Orbax, config JSON beside each), `log.jsonl`, TensorBoard events in `tb/`, samples
`samples_<step>.png` with their arrays `samples_<step>.npz` (`dj.training.draw_samples`; a run
loaded with `dj.training.load_run(workdir)` redraws them bit-identically on the CPU), `loss.png`,
and `final.json` (parameter digests; toy sets: sliced W2 to fresh data; classifiers: accuracy on
held-out data). A masked-diffusion run (`configs/train.py:text`) writes its samples as text,
`samples_<step>.txt` (each sequence under a `--- sample <i>` line), beside `samples_<step>.npz`, and
its `final.json` adds the held-out NELBO in bits per token with its standard error, the unigram
baseline and the bigram perplexities of the samples and of held-out text
(`dj.discrete.evaluate.run_metrics`). Killing the run and starting the same command again continues it bit-identically
(on the CPU): batches and keys depend on the step only. SIGTERM or SIGINT (a preemption notice,
Ctrl-C) finishes the current call of `steps_per_call` steps, writes a checkpoint there and exits with
code 75 (`dj.training.preemption.PREEMPTED_EXIT_CODE`): run the same command again to continue.
Starting a finished command again prints its `final.json` and writes nothing; a larger
`config.optim.total_steps` continues it. A workdir holding a run of another configuration
(`dj.training.build.RESUME_FIELDS` differ: the model, data, loss, optimizer, EMA, batch size or seed)
is refused: exit code 2 and one line on stderr naming the differing fields;
`--config.overwrite=True` moves that run to `<workdir>/previous-<n>` and starts afresh.

Checkpoints carry a SHA-256 digest of every array (`dj.training.checkpoints`): one that is unreadable,
changed on disk or non-finite is reported by path, kept as `checkpoints/bad-<step>` and skipped for
the one before it; if none restores, the run is refused (exit code 2) rather than restarted. Rotation
(`keep_checkpoints`, at least 1) deletes only complete checkpoints it wrote. A loss, parameter or
optimizer moment that turns NaN or inf stops the run (exit code 3, one line naming the steps) before
anything non-finite is saved; `config.optim.skip_nonfinite=N` skips up to N bad updates in a row
instead. See RELIABILITY.md.
"""

import hashlib
import json
import os
import sys
import time

import cli
import jax
import numpy as np
import plots
import tqdm
from absl import flags, logging
from tensorboardX import SummaryWriter

import diffjax as dj
from diffjax.data import text
from diffjax.discrete import evaluate
from diffjax.training import build, checkpoints, logs, loop, optim, preemption

_CONFIG = cli.define_config(None, "training config")
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (checkpoints, logs, samples)", required=True)
FINAL = "final.json"


def tree_digest(tree):
    """SHA-256 of every leaf's bytes: equal digests mean bit-identical parameters."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(tree)):
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()


def peak_device_bytes():
    """The most memory the first device has held at once, in bytes (None where JAX does not track it, as on CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def finished(workdir, step, total):
    """The final metrics of a run that already finished `total` steps in `workdir`, else None."""
    path = os.path.join(workdir, FINAL)
    if step != total or not os.path.exists(path):
        return None
    with open(path) as f:
        final = json.load(f)
    return final if final.get("step") == total else None


def sample_text(tokens):
    """Token sequences (N, L) as text: each decoded sequence under a line `--- sample <i>`."""
    return "".join(f"--- sample {i}\n{s}\n" for i, s in enumerate(text.decode(tokens)))


def save_samples(workdir, samples, step, tokens=False):
    """`samples_<step>.png` (a grid or scatter plot), or `samples_<step>.txt` for token sequences, and the
    arrays as `samples_<step>.npz` (key "samples")."""
    if tokens:
        with open(os.path.join(workdir, f"samples_{step}.txt"), "w") as f:
            f.write(sample_text(samples))
    else:
        plots.save_samples(os.path.join(workdir, f"samples_{step}.png"), samples, f"step {step} (EMA)")
    np.savez(os.path.join(workdir, f"samples_{step}.npz"), samples=samples)


def set_previous_run_aside(workdir):
    """Move everything in `workdir` (but earlier `previous-<n>` folders) into a new `previous-<n>`; returns it."""
    n = 1 + max([int(name[9:]) for name in os.listdir(workdir) if name[9:].isdecimal() and name.startswith("previous-")]
                or [0])  # fmt: skip
    target = os.path.join(workdir, f"previous-{n}")
    entries = [name for name in os.listdir(workdir) if not name.startswith("previous-")]
    os.makedirs(target)
    for name in entries:
        os.rename(os.path.join(workdir, name), os.path.join(target, name))
    return target


def restore(config, workdir, mngr, module, training, data, replicated):
    """(state, step) of the newest good checkpoint in `workdir` (None, None for a fresh run), after the
    checks that make resuming safe; a ValueError (exit code 2) names what stands in the way."""
    directory = str(mngr.directory)
    saved, _ = checkpoints.restore_config(mngr)
    overwrite = "use another --workdir, or --config.overwrite=True to set the old run aside and start afresh"
    fields = build.RESUME_FIELDS
    if saved is not None and (differences := build.config_differences(saved, config, fields, build.RESUME_MAY_CHANGE)):
        raise ValueError(f"--workdir={workdir} holds a run of another configuration; differing fields: "
                         f"{'; '.join(differences)}. Resume it with its saved config, or {overwrite}")  # fmt: skip
    state = step = None
    if checkpoints.complete_steps(mngr):  # (the abstract tree traces the initialisation: only when needed)
        abstract = build.abstract_state(config, module, training.optimizer, data, replicated)
        state, _, step = checkpoints.restore_latest(mngr, abstract, set_aside_bad=True)
    bad = sorted(name for name in os.listdir(directory) if name.startswith(checkpoints.BAD_PREFIX))
    if state is None and bad:
        raise ValueError(f"--workdir={workdir}: no checkpoint restores (see the warnings above); the damaged ones "
                         f"are kept in {directory} as {', '.join(bad)}; {overwrite}")  # fmt: skip
    return state, step


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax reports every file at INFO
    config, workdir = _CONFIG.value, _WORKDIR.value
    if config is None:
        raise ValueError("--config is required, e.g. --config=configs/train.py:moons")
    classifier = build.task(config) == "classifier"
    masked = build.task(config) == "masked_diffusion"
    mesh = dj.parallel.data_mesh(config.num_devices or None)
    data, training, module = build.build(config, mesh)
    if masked:  # checked now rather than after training
        passes = dj._checks.positive_int("config.evaluation.passes", config.evaluation.passes, 2)
        eval_batch = dj._checks.positive_int("config.evaluation.batch_size", config.evaluation.batch_size)
    total, keep = config.optim.total_steps, config.keep_checkpoints
    skip_nonfinite = config.optim.get("skip_nonfinite", 0)

    os.makedirs(workdir, exist_ok=True)
    if config.get("overwrite", False) and os.listdir(workdir):
        print(f"--config.overwrite=True: the run in {workdir} was moved to {set_previous_run_aside(workdir)}")
    replicated = dj.parallel.replicated(mesh)
    mngr = checkpoints.manager(os.path.join(workdir, dj.training.runs.CHECKPOINTS))
    try:
        state, restored_step = restore(config, workdir, mngr, module, training, data, replicated)
    except ValueError:
        mngr.close()
        raise
    if state is not None:
        if restored_step > total:
            mngr.close()
            raise ValueError(f"config.optim.total_steps={total} is below the step {restored_step} of the run in "
                             f"--workdir={workdir}")  # fmt: skip
        if (final := finished(workdir, restored_step, total)) is not None:  # nothing to do: touch nothing
            mngr.close()
            print(f"the run in {workdir} finished at step {total}; its final metrics ({FINAL}):")
            print(json.dumps(final))
            return
        print(f"resumed from the checkpoint at step {restored_step}")
    else:
        state = build.initial_state(config, module, training.optimizer, data)
    state = jax.device_put(state, replicated)
    multi = loop.compiled_steps(config, module, training, mesh)  # the steps of dj.training.fit

    def live_run(state):
        return dj.training.Run(config, module, training.schedule, data, state, workdir)

    start = int(state.step)
    log_path = os.path.join(workdir, "log.jsonl")
    writer = SummaryWriter(os.path.join(workdir, "tb"))
    config_json = json.loads(config.to_json())
    per_call = config.steps_per_call
    progress = tqdm.tqdm(total=total, initial=start, desc="train", dynamic_ncols=True)
    tick, examples, checked = time.perf_counter(), 0, start
    try:
        with preemption.StopSignals() as stop:
            rows = logs.read_log(log_path, start)
            logs.rewrite_log(log_path, rows)  # (from here on, SIGTERM and SIGINT stop at a checkpoint)
            for step in range(start, total, per_call):
                xs, conds = loop.stacked_batches(data.batches, step, per_call)
                state, metrics = multi(state, xs, conds)
                examples += per_call * config.batch_size
                done = step + per_call
                progress.update(per_call)
                save = done % config.checkpoint_every == 0 or done == total or stop.received
                if done % config.log_every == 0:
                    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    loop.check_finite(state, metrics["loss"], step=done, since=checked, skip_nonfinite=skip_nonfinite)
                    checked = done
                    rate = examples / (time.perf_counter() - tick)
                    tick, examples = time.perf_counter(), 0
                    row = {"step": done, **metrics, "examples_per_s": rate}
                    rows.append(row)
                    logs.append_log(log_path, row)
                    for name, value in row.items():
                        if name != "step":
                            writer.add_scalar(f"train/{name}", value, done)
                    progress.set_postfix(loss=f"{metrics['loss']:.4f}", ex_per_s=f"{rate:.0f}")
                if save:
                    if checked != done:
                        loop.check_finite(state, None, step=done, since=checked)
                        checked = done
                    checkpoints.save(mngr, state, config_json, keep=keep)
                if stop.received:
                    break
                if not classifier and done < total and config.sample_every and done % config.sample_every == 0:
                    save_samples(workdir, dj.training.draw_samples(live_run(state), step=done), done, masked)
    finally:  # whatever stops the loop, the checkpoints already started are finished, never left half-written
        mngr.wait_until_finished()
        checkpoints.rotate(mngr, keep)
        mngr.close()
        writer.close()
        progress.close()
    if stop.received:
        print(f"{stop.received}: stopped at step {done} with a checkpoint there; run the same command again to "
              f"continue (exit code {preemption.PREEMPTED_EXIT_CODE})", file=sys.stderr)  # fmt: skip
        sys.exit(preemption.PREEMPTED_EXIT_CODE)
    if rows:
        plots.save_loss_curve(os.path.join(workdir, "loss.png"), rows)
    final = {
        "step": int(state.step),
        "loss": rows[-1]["loss"] if rows else None,
        "params_sha256": tree_digest(state.params),
        "ema_params_sha256": tree_digest(state.ema_params),
        "peak_device_bytes": peak_device_bytes(),
    }
    if (skipped := optim.nonfinite_steps(state.opt_state)) is not None:
        final["nonfinite_steps_skipped"] = skipped
    if classifier and not module.time_conditioned:  # accuracy of the EMA classifier, held out if possible
        x, labels = data.evaluation
        predicted = dj.training.classifier_apply(module, state.ema_params)(x).logits.argmax(-1)
        name = "held_out" if data.held_out else "training_set"
        final.update({f"{name}_accuracy": float(np.mean(predicted == labels)), f"{name}_size": len(labels)})
    if not classifier:
        samples = dj.training.draw_samples(live_run(state), step=total)
        save_samples(workdir, samples, total, masked)
        if masked:  # the held-out NELBO (a fixed key) and the n-gram references
            held_out = data.evaluation[0]
            final.update(evaluate.run_metrics(live_run(state).denoiser, samples, data.train_x, held_out,
                                              jax.random.key(0), passes=passes, batch_size=eval_batch,
                                              t_min=config.loss.t_min))  # fmt: skip
        if data.fresh is not None and len(data.event_shape) == 1:  # toy 2-D: sliced W2 against fresh data
            fresh = lambda seed: np.asarray(data.fresh(jax.random.key(seed), config.sample.num))
            key = jax.random.key(0)
            final["sliced_w2"] = float(dj.metrics.sliced_w2_squared(key, samples, fresh(1)))
            final["sliced_w2_data_vs_data"] = float(dj.metrics.sliced_w2_squared(key, fresh(2), fresh(1)))
    with open(os.path.join(workdir, FINAL), "w") as f:
        json.dump(final, f)
    print(json.dumps(final))


if __name__ == "__main__":
    cli.run(main)
