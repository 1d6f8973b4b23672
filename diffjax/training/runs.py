"""Finished (or running) training runs, read back from their workdir for notebooks and scripts.

    run = diffjax.training.load_run("runs/moons")
    x = diffjax.training.draw_samples(run)                       # as train.py drew them at the end
    x, info = diffjax.sample(solver, run.denoiser, ts, key, x_T)  # EMA parameters
    raw = run.denoiser_for(run.params)                           # raw parameters

A masked-diffusion run (`task = "masked_diffusion"`, a token network on text) gives a
`diffjax.discrete.MaskedDenoiser` instead, and `draw_samples` int32 token sequences
(`diffjax.data.text.decode` turns them into text).

A workdir is what `experiments/train.py` writes: Orbax checkpoints in `checkpoints/`, each with
the resolved config as JSON beside it (`checkpoints.save`). `load_run` builds the run's network and
the abstract train state from that config with `jax.eval_shape` (nothing is initialised) and
restores the newest readable checkpoint into it.
"""

from __future__ import annotations

import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffjax import _checks, data, discrete, models, parallel, sampling
from diffjax.denoiser import Denoiser
from diffjax.training import build, checkpoints
from diffjax.training.state import TrainState

CHECKPOINTS = "checkpoints"  # the checkpoint directory inside a workdir


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    """A training run: its config, network, schedule, data and train state.

    config: the resolved config the run was trained with (`configs/train.py` fields).
    module: the network (a Flax module; `models.Classifier` for classifier runs, a
        `models.TokenTransformer` for masked-diffusion runs).
    schedule: the noise schedule the network was trained on (a masking schedule for masked diffusion).
    data: the run's `data.Dataset` (event shape, labels, evaluation data).
    state: the `TrainState` (step, params, EMA params, optimizer state, key).
    workdir: where it was loaded from (None for a run assembled in memory).
    """

    config: ml_collections.ConfigDict
    module: nn.Module
    schedule: object
    data: data.Dataset
    state: TrainState
    workdir: str | None = None

    @property
    def step(self) -> int:
        """Optimizer steps taken."""
        return int(jax.device_get(self.state.step))

    @property
    def params(self):
        """The raw (last-step) parameters."""
        return self.state.params

    @property
    def ema_params(self):
        """The EMA parameters (what train.py samples and scores)."""
        return self.state.ema_params

    @property
    def event_shape(self) -> tuple[int, ...]:
        """The shape of one sample."""
        return tuple(self.data.event_shape)

    @property
    def num_classes(self) -> int | None:
        """The number of classes of a class-conditional model, or None."""
        return self.data.num_classes

    @property
    def null_label(self) -> int | None:
        """The label of unconditional sampling (`num_classes`), or None for an unconditional model."""
        return self.data.null_label

    @property
    def is_classifier(self) -> bool:
        """Whether the run trained a classifier (then it has no denoiser)."""
        return isinstance(self.module, models.Classifier)

    @property
    def is_masked_diffusion(self) -> bool:
        """Whether this is a masked-diffusion run (`config.task = "masked_diffusion"`: token sequences)."""
        return build.task(self.config) == "masked_diffusion"

    @property
    def prediction(self) -> str:
        """What the network predicts (`config.loss.prediction`)."""
        if self.is_classifier:
            raise ValueError(f"the run in {self.workdir!r} is a classifier run; it has no denoiser")
        if self.is_masked_diffusion:
            raise ValueError(f"the run in {self.workdir!r} is a masked-diffusion run; its network predicts tokens")
        return self.config.loss.prediction

    def denoiser_for(self, params) -> Denoiser | discrete.MaskedDenoiser:
        """A denoiser of this run's network with the given parameters.

        Args:
          params: the network's variables, e.g. `run.params` (raw) or `run.ema_params`.

        Returns:
          `Denoiser(models.apply_fn(module), params, schedule=..., prediction=...)`; for a masked-diffusion
          run `discrete.masked_denoiser(models.apply_fn(module), params, schedule, V, time_conditioned=...)`
          with V and time_conditioned the token network's.
        """
        apply = models.apply_fn(self.module)
        if self.is_masked_diffusion:
            module = self.module
            return discrete.masked_denoiser(
                apply, params, self.schedule, module.vocab_size, time_conditioned=module.time_conditioned
            )
        return Denoiser(apply, params, schedule=self.schedule, prediction=self.prediction)

    @property
    def denoiser(self) -> Denoiser | discrete.MaskedDenoiser:
        """A ready `Denoiser` with the EMA parameters (`denoiser_for(run.params)` for the raw ones)."""
        return self.denoiser_for(self.ema_params)


def load_run(workdir: str, *, field: str = "workdir", mesh=None) -> Run:
    """The training run in `workdir` at its newest readable checkpoint.

    The network, data and schedule are built from the config saved with the checkpoint
    (`build.build`); the train state's tree, shapes and dtypes come from `jax.eval_shape` of its
    initialisation, so nothing is initialised or trained. An unreadable newest checkpoint falls
    back to the one before it (`checkpoints.restore_latest`).

    Args:
      workdir: a training workdir (holding `checkpoints/`), as `experiments/train.py` writes.
      field: what to call `workdir` in error messages (e.g. "config.run").
      mesh: the mesh to place the (replicated) state and shard batches on; default one device.

    Returns:
      A `Run`.
    """
    directory = os.path.join(workdir, CHECKPOINTS) if workdir else ""
    if not workdir or not os.path.isdir(directory):
        raise ValueError(f"{field} must be a training workdir holding {CHECKPOINTS}/, got {workdir!r}")
    mesh = parallel.data_mesh(1) if mesh is None else mesh
    mngr = checkpoints.manager(directory)
    try:
        saved, _ = checkpoints.restore_config(mngr)
        if saved is None:
            raise ValueError(f"{field}={workdir!r} has no readable checkpoint")
        config = ml_collections.ConfigDict(saved)
        dataset, training, module = build.build(config, mesh)
        abstract = build.abstract_state(config, module, training.optimizer, dataset, parallel.replicated(mesh))
        state, _, _ = checkpoints.restore_latest(mngr, abstract)
    finally:
        mngr.close()
    if state is None:
        raise ValueError(f"{field}={workdir!r}: no checkpoint restores into the network its config describes")
    return Run(config, module, training.schedule, dataset, state, workdir)


def draw_samples(run: Run, *, step: int | None = None, use_ema: bool = True) -> np.ndarray:
    """The samples `experiments/train.py` draws at a step: `config.sample.num` of them, labels cycling.

    x_T ~ the prior from `key(step)`, then `config.sample.solver` on `config.sample.steps` steps of
    the `config.sample.grid` grid with key `key(step + 1)`; labels 0, 1, ..., num_classes - 1, 0, ...
    for a class-conditional model. The same run and step give the same bits on the same machine.

    A masked-diffusion run draws `config.sample.num` sequences from the fully masked start
    (`discrete.all_masked`) with `discrete.ancestral(caching=config.sample.caching)` on
    `discrete.uniform_grid(config.sample.steps)`, key `key(step + 1)`, and noise removal (any mask left
    after the last step becomes the denoiser's argmax).

    Args:
      run: a `Run` (from `load_run`, or assembled by train.py from its live state).
      step: the step whose keys to use; default `run.step`.
      use_ema: sample with the EMA parameters (default) or the raw ones.

    Returns:
      A host array (config.sample.num, *event_shape); int32 tokens (num, L) for masked diffusion.
    """
    config = run.config.sample
    step = run.step if step is None else _checks.positive_int("step", step, 0)
    den = run.denoiser_for(run.ema_params if use_ema else run.params)
    if run.is_masked_diffusion:
        build.check_token_sampling(run.config, run.module)
        ts = discrete.uniform_grid(config.steps)
        z = discrete.all_masked(config.num, run.event_shape[0], den.vocab_size)
        sampler = discrete.ancestral(caching=config.caching)
        return np.asarray(discrete.sample(sampler, den, ts, jax.random.key(step + 1), z)[0])
    solver, ts, n = build.sampling_plan(run.config, run.schedule)
    x_T = sampling.prior_sample(jax.random.key(step), run.schedule, ts, (n, *run.event_shape))
    labels = build.sample_labels(run.num_classes, n)
    return np.asarray(sampling.sample(solver, den, ts, jax.random.key(step + 1), x_T, cond=labels)[0])


def classifier_apply(module: nn.Module, params, batch_size: int = 500):
    """A clean classifier on host images, jitted, in batches: `apply(x) -> ClassifierOutput` of host arrays.

    Args:
      module: a `models.Classifier` with `time_conditioned=False`.
      params: its variables (e.g. a classifier run's `ema_params`).
      batch_size: images per jitted call.

    Returns:
      `apply(x)` for x (N, ...) host images, giving `ClassifierOutput(logits, features)` as numpy arrays.
    """
    if not isinstance(module, models.Classifier) or module.time_conditioned:
        raise ValueError(f"a clean (time_conditioned=False) Classifier is needed here, got {module!r}")
    batch_size = _checks.positive_int("batch_size", batch_size)
    forward = jax.jit(lambda p, x: module.apply(p, x))

    def apply(x):
        parts = [forward(params, jnp.asarray(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
        return models.ClassifierOutput(*(np.concatenate([np.asarray(p[j]) for p in parts]) for j in range(2)))

    return apply
