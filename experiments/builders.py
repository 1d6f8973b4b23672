"""Config -> objects for the experiments: data, network, schedule, loss, optimizer.

Every field is checked here before anything is traced; a bad value raises a ValueError that
names the field (`config.model.name`, ...), its value and what is allowed.
"""

import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags

import diffjax as dj
from diffjax import _checks
from diffjax.training import checkpoints

TASKS = ("diffusion", "classifier")
DATASETS = ("toy2d", "digits", "shapes", "npz")
SPLITS = ("all", "train")
MODELS = {"mlp": dj.models.MLP, "unet": dj.models.UNet, "dit": dj.models.DiT, "classifier": dj.models.Classifier}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class Data(NamedTuple):
    batches: object  # step -> (x, labels) or (x, None), global arrays sharded over 'data'
    example: np.ndarray  # one batch of host data for shapes and evaluation
    num_classes: int | None  # labels in 0..num_classes - 1, or None (unconditional)
    fresh: object  # key, n -> n fresh data points (None for finite data sets)
    evaluation: tuple | None  # (x, labels) host arrays to evaluate against (labels None if unconditional)
    held_out: bool  # whether `evaluation` was never trained on (else it is the training set)
    train_x: np.ndarray | None  # the training set's x (host) for finite data sets, else None


def _field(config, name):
    if name not in config:
        raise ValueError(f"config.{name} is missing")
    return config[name]


def parse_flags(argv):
    """absl's flag parsing, with a bad `--config.<field>=<value>` (unknown field, ill-typed value)
    raised as a ValueError that names the overrides, before anything else runs. For app.run's
    `flags_parser`."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as error:
        overrides = [a for a in argv[1:] if a.startswith("--config.")]
        raise ValueError(f"a config override is unknown or ill-typed ({error}); overrides: {overrides}") from error


def task(config) -> str:
    name = config.get("task", "diffusion")
    _checks.one_of("config.task", name, TASKS)
    return name


def build_data(config, mesh) -> Data:
    data = _field(config, "data")
    name = data.name
    _checks.one_of("config.data.name", name, DATASETS)
    split = data.get("split", "all")
    _checks.one_of("config.data.split", split, SPLITS)
    if task(config) == "classifier" and not data.get("conditional", False):
        raise ValueError("config.data.conditional must be True for config.task='classifier' (it needs the labels)")
    batch_size = _checks.positive_int("config.batch_size", config.batch_size)
    conditional = bool(data.get("conditional", False))
    if name == "toy2d":
        _checks.one_of("config.data.set", data.set, tuple(dj.data.TOY_2D))
        sampler = dj.data.TOY_2D[data.set]
        batches = dj.data.SamplerBatches(lambda key, n: (sampler(key, n), None), batch_size, config.seed, mesh)
        return Data(batches, np.asarray(sampler(jax.random.key(0), batch_size)), None, sampler, None, False, None)
    if name == "shapes":
        image_size = _checks.positive_int("config.data.image_size", data.image_size, 8)

        def draw(key, n):
            images, scenes = dj.data.shapes.sample(key, n, image_size=image_size)
            return images, dj.data.shapes.label(scenes) if conditional else None

        batches = dj.data.SamplerBatches(draw, batch_size, config.seed, mesh)
        fresh = lambda key, n: draw(key, n)[0]
        # training draws from fold_in(key(seed), step); the held-out scenes come from another root key
        evaluation = tuple(None if a is None else np.asarray(a) for a in draw(jax.random.key(2**31 - 1), 2000))
        return Data(batches, np.asarray(fresh(jax.random.key(0), batch_size)),
                    dj.data.shapes.NUM_LABELS if conditional else None, fresh, evaluation, True, None)  # fmt: skip
    if name == "digits":
        _checks.one_of("config.data.size", data.size, (8, 16, 32))
        digits = dj.data.load_digits(size=data.size)
        evaluation = (digits.images, digits.labels)
        if split == "train":  # the split's test part (20%) is held out; see data.train_test_split
            digits, test = dj.data.train_test_split(digits)
            evaluation = (test.images, test.labels)
        images, labels = digits.images.astype(np.float32), digits.labels.astype(np.int32)
        arrays = (images, labels) if conditional else (images, None)
        return Data(dj.data.ArrayBatches(arrays, batch_size, config.seed, mesh), images[:batch_size],
                    10 if conditional else None, None, evaluation, split == "train", images)  # fmt: skip
    arrays = dj.data.load_npz(data.path)
    x = np.asarray(arrays.x, np.float32)
    labels = None if arrays.y is None or not conditional else np.asarray(arrays.y, np.int32)
    num_classes = None if labels is None else int(labels.max()) + 1
    if split != "all":
        raise ValueError(f"config.data.split must be 'all' for npz data, got {split!r}")
    batches = dj.data.ArrayBatches((x, labels), batch_size, config.seed, mesh)
    return Data(batches, x[:batch_size], num_classes, None, (x, labels), False, x)


def build_model(config, num_classes, schedule):
    model = _field(config, "model")
    _checks.one_of("config.model.name", model.name, tuple(MODELS))
    _checks.one_of("config.compute_dtype", config.compute_dtype, tuple(DTYPES))
    kwargs = dict(model.args)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    if isinstance(schedule, dj.schedules.Discrete):  # the network sees DDPM step indices 0..N-1
        kwargs.setdefault("time_scale", 1.0)
    if (model.name == "classifier") != (task(config) == "classifier"):
        raise ValueError(f"config.model.name={model.name!r} does not fit config.task={task(config)!r}")
    if model.name == "classifier":
        kwargs["time_conditioned"] = bool(config.get("noisy", False))
    return _construct(model.name, num_classes=num_classes, dtype=DTYPES[config.compute_dtype], **kwargs)


def _construct(name, **kwargs):
    try:
        return MODELS[name](**kwargs)
    except TypeError as error:
        raise ValueError(f"config.model.args does not fit {name}: {error}") from error


class Training(NamedTuple):
    schedule: object
    loss: object
    optimizer: object
    ema: float


def build_training(config) -> Training:
    schedule = dj.specs.parse("config.schedule", config.schedule, dj.schedules.REGISTRY)()
    if task(config) == "classifier":  # clean inputs, or x_t at uniform times for a noise-aware classifier
        loss = dj.training.classifier_loss(schedule if config.get("noisy", False) else None)
    else:
        loss_config = _field(config, "loss")
        loss = dj.training.losses.diffusion_loss(
            schedule,
            prediction=loss_config.prediction,
            weighting=loss_config.weighting,
            time_sampler=loss_config.time_sampler or None,
        )
    optim = _field(config, "optim")
    total = _checks.positive_int("config.optim.total_steps", optim.total_steps)
    per_call = _checks.positive_int("config.steps_per_call", config.steps_per_call)
    for field in ("total_steps", "checkpoint_every", "log_every"):
        value = optim.total_steps if field == "total_steps" else config[field]
        if _checks.positive_int(f"config.{field}", value) % per_call:
            raise ValueError(f"config.{field} must be a multiple of config.steps_per_call={per_call}, got {value}")
    optimizer = dj.training.optim.adamw(
        optim.learning_rate,
        total_steps=total,
        warmup_steps=optim.warmup_steps,
        weight_decay=optim.weight_decay,
        clip_norm=optim.clip_norm if optim.clip_norm > 0 else None,
    )
    return Training(schedule, loss, optimizer, dj.training.optim.ema_decay(decay=config.ema_decay))


def train_apply(module, num_classes, label_dropout):
    """key -> apply_fn in training mode: dropout on, and labels replaced by the null label with
    probability `label_dropout` (classifier-free guidance training). A classifier is called as
    apply_fn(params, x, time)."""
    rate = _checks.in_range("config.model.label_dropout", label_dropout, 0.0, 1.0)
    if isinstance(module, dj.models.Classifier):
        return lambda key: lambda params, x, t: module.apply(params, x, t, train=True, rngs={"dropout": key})

    def make(key):
        key_labels, key_dropout = jax.random.split(key)

        def apply_fn(params, x, t, cond):
            if cond is not None and rate > 0:
                cond = dj.models.drop_labels(key_labels, cond, num_classes, rate)
            return module.apply(params, x, t, cond, train=True, rngs={"dropout": key_dropout})

        return apply_fn

    return make


def sampler(config, module, schedule, params):
    """(denoiser, solver, grid) for drawing samples from `params` as configured in config.sample."""
    sample = _field(config, "sample")
    den = dj.Denoiser(dj.models.apply_fn(module), params, schedule=schedule, prediction=config.loss.prediction)
    solver = dj.specs.parse("config.sample.solver", sample.solver, dj.solvers.REGISTRY)()
    grid = dj.specs.parse("config.sample.grid", sample.grid, dj.timesteps.REGISTRY)
    return den, solver, grid(schedule, _checks.positive_int("config.sample.steps", sample.steps))


def init_params(module, key, example, num_classes):
    """The module's variables, initialised on two examples (jitted: eager initialisation of a UNet
    dispatches op by op and takes seconds)."""
    x = jnp.asarray(example[:2])
    if isinstance(module, dj.models.Classifier):
        return jax.jit(module.init)(key, x, jnp.zeros((2,)) if module.time_conditioned else None)
    return jax.jit(module.init)(key, x, jnp.zeros((2,)), sample_labels(num_classes, 2))


def classifier_apply(module, params, batch_size: int = 500):
    """x (N, ...) host images -> ClassifierOutput of the clean classifier, jitted, in batches."""
    if not isinstance(module, dj.models.Classifier) or module.time_conditioned:
        raise ValueError(f"a clean (time_conditioned=False) Classifier is needed here, got {module!r}")
    forward = jax.jit(lambda p, x: module.apply(p, x))

    def apply(x):
        parts = [forward(params, jnp.asarray(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
        return dj.models.ClassifierOutput(*(np.concatenate([np.asarray(p[j]) for p in parts]) for j in range(2)))

    return apply


def sample_labels(num_classes, n):
    """Labels 0, 1, ..., num_classes - 1, 0, ... for n samples (None when unconditional)."""
    return None if num_classes is None else jnp.arange(n, dtype=jnp.int32) % num_classes


class Run(NamedTuple):
    """A trained run restored from its workdir: its config, data, network, schedule and state."""

    config: ml_collections.ConfigDict
    data: Data
    module: object
    schedule: object
    state: dj.training.TrainState


def initial_state(config, mesh):
    """(Data, Training, module, initial TrainState) of a config, before any restore."""
    data = build_data(config, mesh)
    training = build_training(config)
    module = build_model(config, data.num_classes, training.schedule)
    key_init, key_run = jax.random.split(jax.random.key(config.seed))
    params = init_params(module, key_init, data.example, data.num_classes)
    return data, training, module, dj.training.init_state(params, training.optimizer, key_run)


def restore_run(workdir: str, field: str = "config.run") -> Run:
    """The newest readable checkpoint of the training run in `workdir` (as written by train.py)."""
    directory = os.path.join(workdir, "checkpoints")
    if not workdir or not os.path.isdir(directory):
        raise ValueError(f"{field} must be a training workdir holding checkpoints/, got {workdir!r}")
    mngr = checkpoints.manager(directory)
    saved, _ = checkpoints.restore_config(mngr)
    if saved is None:
        raise ValueError(f"{field}={workdir!r} has no readable checkpoint")
    config = ml_collections.ConfigDict(saved)
    mesh = dj.parallel.data_mesh(1)
    data, training, module, state = initial_state(config, mesh)
    replicated = dj.parallel.replicated(mesh)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), state)
    state, _, _ = checkpoints.restore_latest(mngr, abstract)
    mngr.close()
    return Run(config, data, module, training.schedule, state)
