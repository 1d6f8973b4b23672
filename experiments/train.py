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
(on the CPU): batches and keys depend on the step only. Starting a finished command again prints
its `final.json` and writes nothing; a larger `config.optim.total_steps` continues it. A workdir
holding another model (`dj.training.build.MODEL_FIELDS` differ) is refused: exit code 2 and one
line on stderr naming the differing fields.
"""

import hashlib
import json
import os
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
from diffjax.training import build, checkpoints, loop

_CONFIG = cli.define_config(None, "training config")
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (checkpoints, logs, samples)", required=True)
FINAL = "final.json"


def read_log(path, upto):
    """The JSONL log, without entries after `upto` (a resumed run rewrites what came later)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if r["step"] <= upto]


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
    total = config.optim.total_steps

    os.makedirs(workdir, exist_ok=True)
    replicated = dj.parallel.replicated(mesh)
    mngr = checkpoints.manager(os.path.join(workdir, dj.training.runs.CHECKPOINTS), max_to_keep=config.keep_checkpoints)
    saved, _ = checkpoints.restore_config(mngr)
    if saved is not None and (differences := build.model_differences(saved, config)):
        mngr.close()
        raise ValueError(f"--workdir={workdir} holds a run of another model; differing fields: "
                         f"{'; '.join(differences)}. Use another --workdir, or the saved config.")  # fmt: skip
    state = None
    if steps := sorted(mngr.all_steps()):  # (the abstract tree traces the initialisation: only when needed)
        abstract = build.abstract_state(config, module, training.optimizer, data, replicated)
        state, _, restored_step = checkpoints.restore_latest(mngr, abstract)
        if state is None:
            mngr.close()
            raise ValueError(f"--workdir={workdir}: none of its checkpoints (steps {steps}) could be restored "
                             "(see the warnings above); move them away to start afresh")  # fmt: skip
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
    rows = read_log(log_path, start)
    with open(log_path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    writer = SummaryWriter(os.path.join(workdir, "tb"))
    config_json = json.loads(config.to_json())
    per_call = config.steps_per_call
    progress = tqdm.tqdm(total=total, initial=start, desc="train", dynamic_ncols=True)
    tick, examples = time.perf_counter(), 0
    for step in range(start, total, per_call):
        xs, conds = loop.stacked_batches(data.batches, step, per_call)
        state, metrics = multi(state, xs, conds)
        examples += per_call * config.batch_size
        done = step + per_call
        progress.update(per_call)
        if done % config.log_every == 0:
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            rate = examples / (time.perf_counter() - tick)
            tick, examples = time.perf_counter(), 0
            row = {"step": done, **metrics, "examples_per_s": rate}
            rows.append(row)
            with open(log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            for name, value in row.items():
                if name != "step":
                    writer.add_scalar(f"train/{name}", value, done)
            progress.set_postfix(loss=f"{metrics['loss']:.4f}", ex_per_s=f"{rate:.0f}")
        if done % config.checkpoint_every == 0 or done == total:
            checkpoints.save(mngr, state, config_json, force=done == total)
        if not classifier and done < total and config.sample_every and done % config.sample_every == 0:
            save_samples(workdir, dj.training.draw_samples(live_run(state), step=done), done, masked)
    progress.close()
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
    if rows:
        plots.save_loss_curve(os.path.join(workdir, "loss.png"), rows)
    final = {
        "step": int(state.step),
        "loss": rows[-1]["loss"] if rows else None,
        "params_sha256": tree_digest(state.params),
        "ema_params_sha256": tree_digest(state.ema_params),
        "peak_device_bytes": peak_device_bytes(),
    }
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
