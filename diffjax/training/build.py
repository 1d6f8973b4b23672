"""Config -> objects for a training run: data, network, schedule, loss, optimizer and train state.

The config is an `ml_collections.ConfigDict` with the fields of `configs/train.py` (denoisers, and
masked diffusion of text with `task = "masked_diffusion"`) or `configs/classifier.py`
(`task = "classifier"`). Every field is checked here before anything is traced; a bad value raises
a ValueError that names the field (`config.model.name`, ...), its value and what is allowed. Names
are looked up in registries: `config.data.name` in `diffjax.data.REGISTRY`, `config.model.name` in
`diffjax.models.REGISTRY`, `config.schedule` in `diffjax.schedules.REGISTRY` (in
`diffjax.discrete.schedules.REGISTRY` for masked diffusion), `config.loss.time_sampler` in
`training.time_sampling.REGISTRY`.

Masked diffusion takes token data (`TOKEN_DATA`: int32 windows of ids in [0, V), the mask id V) and
a token network (`models.TokenTransformer`, given V by the data); the other tasks take real-valued
data and the other networks. The loss is `discrete.masked_nelbo`, the continuous NELBO.

    data, training, module = build(config, mesh)
    state = initial_state(config, module, training.optimizer, data)
    step = make_train_step(training.loss, build_train_apply(config, module), training.optimizer, training.ema)
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax import _checks, data, discrete, models, schedules, solvers, specs, timesteps
from diffjax.training import classifier, losses, optim, state, step

TASKS = ("diffusion", "classifier", "masked_diffusion")
# Token data sets (windows of int32 ids in [0, V); the mask id is V): config.data.name -> V. They fit
# config.task="masked_diffusion" only, and that task fits nothing else. (A `data.Dataset` does not
# carry V, and `build_training` needs it from the config alone.)
TOKEN_DATA = {"text": data.text.VOCAB_SIZE}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# What a checkpoint's parameters are parameters of (`load_run` builds the network from these):
# `model` (name, args, label_dropout) and `task` / `noisy` fix the network and its parameter tree;
# `data` fixes the event shape and the labels (and what is modelled); `schedule` and
# `loss.prediction` fix what the network's output means (and, for discrete schedules, its time scale).
MODEL_FIELDS = ("task", "noisy", "model", "data", "schedule", "loss.prediction")
# What a run resumed in the same workdir must agree on with the run that wrote it, so that the
# continuation is the run it claims to be: the model fields, and the loss, optimizer, EMA, batch size
# and seed. The run's length (`optim.total_steps`) may grow; logging, checkpointing, sampling,
# devices and compute_dtype (parameters stay float32) may change.
RESUME_FIELDS = MODEL_FIELDS + ("loss", "optim", "ema_decay", "batch_size", "seed")
RESUME_MAY_CHANGE = ("optim.total_steps",)


def _field(config, name, where="config"):
    if name not in config:
        raise ValueError(f"{where}.{name} is missing")
    return config[name]


def task(config) -> str:
    """The run's task: "diffusion" (a denoiser, the default), "classifier" or "masked_diffusion".

    Args:
      config: a training config.

    Returns:
      `config.task`, checked.
    """
    name = config.get("task", "diffusion")
    _checks.one_of("config.task", name, TASKS)
    return name


def _bind(field: str, what: str, constructor, kwargs):
    """Check that `kwargs` fit `constructor`'s signature, naming the config section if not."""
    try:
        inspect.signature(constructor).bind(**kwargs)
    except TypeError as error:
        raise ValueError(f"{field} does not fit {what}: {error}") from error


def build_data(config, mesh=None) -> data.Dataset:
    """The `Dataset` named by `config.data.name`, built from the other `config.data` fields.

    Args:
      config: a training config (reads `data`, `batch_size`, `seed`, `task`).
      mesh: a mesh with a 'data' axis to shard batches over (`diffjax.parallel.data_mesh`), or None.

    Returns:
      `diffjax.data.REGISTRY[config.data.name](batch_size=..., seed=..., mesh=..., **options)`.
    """
    section = _field(config, "data")
    name = _field(section, "name", "config.data")
    _checks.one_of("config.data.name", name, tuple(data.REGISTRY))
    masked = task(config) == "masked_diffusion"
    if (name in TOKEN_DATA) != masked:
        what = "token data" if name in TOKEN_DATA else "real-valued data"
        raise ValueError(
            f"config.data.name={name!r} ({what}) does not fit config.task={task(config)!r}: masked_diffusion "
            f"takes token data, one of {sorted(TOKEN_DATA)}, and the other tasks real-valued data"
        )
    conditional = bool(section.get("conditional", False))
    if task(config) == "classifier" and not conditional:
        raise ValueError("config.data.conditional must be True for config.task='classifier' (it needs the labels)")
    batch_size = _checks.positive_int("config.batch_size", config.batch_size)
    seed = _checks.positive_int("config.seed", config.seed, 0)
    options = {k: v for k, v in section.items() if k != "name"}
    kwargs = dict(options, batch_size=batch_size, seed=seed, mesh=mesh, field="config.data")
    _bind("config.data", f"the data set {name!r}", data.REGISTRY[name], kwargs)
    return data.REGISTRY[name](**kwargs)


def token_vocab_size(config) -> int:
    """V, the vocabulary size of a masked-diffusion run's token data (`TOKEN_DATA`).

    Args:
      config: a training config with a token data set in `config.data.name`.

    Returns:
      `TOKEN_DATA[config.data.name]`; the mask id is V.
    """
    name = _field(_field(config, "data"), "name", "config.data")
    if name not in TOKEN_DATA:
        raise ValueError(f"config.data.name must be token data, one of {sorted(TOKEN_DATA)}, got {name!r}")
    return TOKEN_DATA[name]


def time_conditioned(config) -> bool:
    """Whether a masked-diffusion network sees the time: `config.model.args.time_conditioned`.

    Args:
      config: a training config.

    Returns:
      The field, default False (MDLM's default: the network is fed no time, so the denoiser is
      time-agnostic and the caching sampler may reuse its output).
    """
    value = dict(_field(config, "model").get("args", {})).get("time_conditioned", False)
    if not isinstance(value, bool):
        raise ValueError(f"config.model.args.time_conditioned must be True or False, got {value!r}")
    return value


def build_schedule(config):
    """The schedule named by `config.schedule`: a masking schedule for masked diffusion, else a Gaussian one.

    Args:
      config: a training config (reads `schedule`, `task`).

    Returns:
      `diffjax.discrete.schedules.REGISTRY[...]()` for `config.task="masked_diffusion"`, else
      `diffjax.schedules.REGISTRY[...]()`, with the spec's keyword arguments.
    """
    masked = task(config) == "masked_diffusion"
    registry, other = (discrete.schedules.REGISTRY, schedules.REGISTRY)
    if not masked:
        registry, other = other, registry
    spec = _field(config, "schedule")
    name = spec.split("(", 1)[0].strip() if isinstance(spec, str) else None
    if name not in registry and name in other:
        kind, needed = ("a Gaussian", "a masking") if masked else ("a masking", "a Gaussian")
        raise ValueError(
            f"config.schedule={spec!r} is {kind} schedule; config.task={task(config)!r} needs {needed} schedule, "
            f"one of {sorted(registry)}"
        )
    return specs.parse("config.schedule", spec, registry)()


def _network_task(constructor) -> str:
    if issubclass(constructor, models.Classifier):
        return "classifier"
    return "masked_diffusion" if issubclass(constructor, models.TokenTransformer) else "diffusion"


def build_model(config, num_classes: int | None, schedule) -> nn.Module:
    """The network named by `config.model.name`, constructed with `config.model.args`.

    Args:
      config: a training config (reads `model`, `compute_dtype`, `task`, `noisy`, and for token
        networks `data.name`).
      num_classes: the data's number of classes (the network adds a class embedding), or None.
      schedule: the run's schedule; for a discrete (DDPM) schedule the network sees step indices
        0..N-1, so `time_scale` defaults to 1.

    Returns:
      `diffjax.models.REGISTRY[name](num_classes=..., dtype=..., **args)`, a Flax module; a token
      network also gets `vocab_size` from the data (`token_vocab_size`) and `time_conditioned`
      (`time_conditioned(config)`). Classifiers fit `task="classifier"`, token networks
      `task="masked_diffusion"` and the other networks `task="diffusion"`.
    """
    section = _field(config, "model")
    name = _field(section, "name", "config.model")
    _checks.one_of("config.model.name", name, tuple(models.REGISTRY))
    _checks.one_of("config.compute_dtype", config.compute_dtype, tuple(DTYPES))
    constructor = models.REGISTRY[name]
    kind = _network_task(constructor)
    if kind != task(config):
        raise ValueError(
            f"config.model.name={name!r} does not fit config.task={task(config)!r} (it is a {kind} network)"
        )
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(section.get("args", {})).items()}
    if isinstance(schedule, schedules.Discrete):
        kwargs.setdefault("time_scale", 1.0)
    if kind == "classifier":
        kwargs["time_conditioned"] = bool(config.get("noisy", False))
    if kind == "masked_diffusion":
        if "vocab_size" in kwargs:
            raise ValueError(
                f"config.model.args.vocab_size is set by the data ({token_vocab_size(config)}); leave it out, got "
                f"{kwargs['vocab_size']!r}"
            )
        kwargs.update(vocab_size=token_vocab_size(config), time_conditioned=time_conditioned(config))
    kwargs.update(num_classes=num_classes, dtype=DTYPES[config.compute_dtype])
    _bind("config.model.args", name, constructor, kwargs)
    return constructor(**kwargs)


class Training(NamedTuple):
    """What `build_training` makes of a config."""

    schedule: object  # schedules.Schedule, or a discrete.schedules.MaskingSchedule for masked diffusion
    loss: object  # losses.DiffusionLoss, classifier.ClassifierLoss or discrete.MaskedNELBO
    optimizer: object  # optax.GradientTransformation
    ema: float  # the per-step EMA decay


def build_training(config) -> Training:
    """The schedule, loss, optimizer and EMA decay of a config, with its step counts checked.

    Args:
      config: a training config (reads `schedule`, `loss`, `optim`, `ema_decay`, `steps_per_call`,
        `checkpoint_every`, `log_every`, `task`, `noisy`; for masked diffusion `loss.t_min`,
        `loss.antithetic`, `data.name` and `model.args.time_conditioned`).

    Returns:
      A `Training`. `optim.total_steps`, `checkpoint_every` and `log_every` must be multiples of
      `steps_per_call`; `keep_checkpoints` is at least 1; `optim.skip_nonfinite` (default 0) > 0
      skips an update whose gradients are not finite, up to that many in a row (`optim.adamw`). The
      loss of masked diffusion is `discrete.masked_nelbo(schedule, V, t_min=..., antithetic=...,
      time_conditioned=...)`, in nats per token.
    """
    schedule = build_schedule(config)
    if task(config) == "classifier":  # clean inputs, or x_t at uniform times for a noise-aware classifier
        loss = classifier.classifier_loss(schedule if config.get("noisy", False) else None)
    elif task(config) == "masked_diffusion":
        section = _field(config, "loss")
        t_min = _checks.finite("config.loss.t_min", _field(section, "t_min", "config.loss"))
        if not 0.0 <= t_min < 1.0:
            raise ValueError(f"config.loss.t_min must lie in [0, 1), got {t_min!r}")
        antithetic = _field(section, "antithetic", "config.loss")
        if not isinstance(antithetic, bool):
            raise ValueError(f"config.loss.antithetic must be True or False, got {antithetic!r}")
        loss = discrete.masked_nelbo(
            schedule,
            token_vocab_size(config),
            t_min=t_min,
            antithetic=antithetic,
            time_conditioned=time_conditioned(config),
        )
    else:
        section = _field(config, "loss")
        loss = losses.diffusion_loss(
            schedule,
            prediction=section.prediction,
            weighting=section.weighting,
            time_sampler=section.time_sampler or None,
        )
    section = _field(config, "optim")
    total = _checks.positive_int("config.optim.total_steps", section.total_steps)
    per_call = _checks.positive_int("config.steps_per_call", config.steps_per_call)
    for field in ("total_steps", "checkpoint_every", "log_every"):
        value = section.total_steps if field == "total_steps" else config[field]
        if _checks.positive_int(f"config.{field}", value) % per_call:
            raise ValueError(f"config.{field} must be a multiple of config.steps_per_call={per_call}, got {value}")
    _checks.positive_int("config.keep_checkpoints", config.get("keep_checkpoints", 1))
    optimizer = optim.adamw(
        section.learning_rate,
        total_steps=total,
        warmup_steps=section.warmup_steps,
        weight_decay=section.weight_decay,
        clip_norm=section.clip_norm if section.clip_norm > 0 else None,
        skip_nonfinite=_checks.positive_int("config.optim.skip_nonfinite", section.get("skip_nonfinite", 0), 0),
    )
    return Training(schedule, loss, optimizer, optim.ema_decay(decay=config.ema_decay))


def build(config, mesh=None) -> tuple[data.Dataset, Training, nn.Module]:
    """(data, training, module) of a config: `build_data`, `build_training` and `build_model`.

    Args:
      config: a training config.
      mesh: a mesh with a 'data' axis to shard batches over, or None.

    Returns:
      The `Dataset`, the `Training` and the network.
    """
    dataset = build_data(config, mesh)
    training = build_training(config)
    module = build_model(config, dataset.num_classes, training.schedule)
    if isinstance(module, models.TokenTransformer):
        length = dataset.event_shape[0]
        if module.max_length < length:
            raise ValueError(
                f"config.model.args.max_length={module.max_length} must be >= the data's window length {length} "
                "(config.data.length)"
            )
        check_token_sampling(config, module)
    elif task(config) == "diffusion":
        sampling_plan(config, training.schedule)
    return dataset, training, module


def sampling_plan(config, schedule: schedules.Schedule):
    """(solver, ts, num) of a denoiser run's `config.sample`, checked before training rather than at its end.

    Args:
      config: a training config (reads `sample.solver`, `sample.grid`, `sample.steps`, `sample.num`).
      schedule: the run's schedule, which the grid is built on.

    Returns:
      The solver (`config.sample.solver` in `solvers.REGISTRY`), the time grid (`config.sample.grid` in
      `timesteps.REGISTRY`, `config.sample.steps` steps) and the number of samples.

    Raises:
      ValueError: naming the field, for a spec that names no solver or grid or passes an argument it does
        not take, a bad argument value, or a non-positive steps or num.
    """
    section = _field(config, "sample")
    solver = specs.parse("config.sample.solver", _field(section, "solver", "config.sample"), solvers.REGISTRY)()
    grid = specs.parse("config.sample.grid", _field(section, "grid", "config.sample"), timesteps.REGISTRY)
    ts = grid(schedule, _checks.positive_int("config.sample.steps", _field(section, "steps", "config.sample")))
    return solver, ts, _checks.positive_int("config.sample.num", _field(section, "num", "config.sample"))


def check_token_sampling(config, module: nn.Module) -> None:
    """Check the `config.sample` fields of a masked-diffusion run (before training, not at its end).

    Args:
      config: a masked-diffusion training config (reads `sample.num`, `sample.steps`, `sample.caching`).
      module: its token network; caching needs one that is not time-conditioned.

    Raises:
      ValueError: naming the field, for a non-positive num or steps, a non-bool caching, or caching with
        a time-conditioned network (its output changes with t, so it cannot be reused).
    """
    section = _field(config, "sample")
    for name in ("num", "steps"):
        _checks.positive_int(f"config.sample.{name}", _field(section, name, "config.sample"))
    caching = _field(section, "caching", "config.sample")
    if not isinstance(caching, bool):
        raise ValueError(f"config.sample.caching must be True or False, got {caching!r}")
    if caching and module.time_conditioned:
        raise ValueError(
            "config.sample.caching=True needs a time-agnostic network (config.model.args.time_conditioned=False)"
        )


def build_train_apply(config, module: nn.Module):
    """`step.train_apply(module, label_dropout=config.model.label_dropout)`, the field checked.

    Args:
      config: a training config (reads `model.label_dropout`, default 0).
      module: the network `build_model` made.

    Returns:
      `key -> apply_fn` for `make_train_step`.
    """
    rate = _checks.in_range("config.model.label_dropout", config.model.get("label_dropout", 0.0), 0.0, 1.0)
    if rate > 0 and getattr(module, "num_classes", None) is None:
        raise ValueError(f"config.model.label_dropout={rate} needs class-conditional data (config.data.conditional)")
    return step.train_apply(module, label_dropout=rate)


def sample_labels(num_classes: int | None, n: int):
    """Labels 0, 1, ..., num_classes - 1, 0, ... for n samples (None when unconditional).

    Args:
      num_classes: the number of classes, or None.
      n: how many labels.

    Returns:
      An (n,) int32 array, or None.
    """
    return None if num_classes is None else jnp.arange(n, dtype=jnp.int32) % num_classes


def init_params(module: nn.Module, key, event_shape, num_classes: int | None):
    """The module's variables, initialised (jitted) on two zero inputs of the event shape.

    Args:
      module: a diffjax network or `Classifier`.
      key: the initialisation key.
      event_shape: the shape of one sample.
      num_classes: the number of classes (labels 0, 1 are passed), or None.

    Returns:
      The variables (`module.init`); they depend on the input's shape only, never its values. A token
      network (`models.TokenTransformer`) is initialised on int32 tokens.
    """
    tokens = isinstance(module, models.TokenTransformer)
    x = jnp.zeros((2, *event_shape), jnp.int32 if tokens else jnp.float32)
    if isinstance(module, models.Classifier):
        return jax.jit(module.init)(key, x, jnp.zeros((2,), jnp.float32) if module.time_conditioned else None)
    return jax.jit(module.init)(key, x, jnp.zeros((2,), jnp.float32), sample_labels(num_classes, 2))


def initial_state(config, module: nn.Module, optimizer, dataset: data.Dataset) -> state.TrainState:
    """The train state before step 0: parameters from `split(key(config.seed))[0]`, the run key `[1]`.

    Args:
      config: a training config (reads `seed`).
      module: the network.
      optimizer: the optax optimizer (`Training.optimizer`).
      dataset: the run's `Dataset` (its event shape and number of classes).

    Returns:
      A `TrainState` at step 0.
    """
    key_init, key_run = jax.random.split(jax.random.key(config.seed))
    params = init_params(module, key_init, dataset.event_shape, dataset.num_classes)
    return state.init_state(params, optimizer, key_run)


def abstract_state(config, module: nn.Module, optimizer, dataset: data.Dataset, sharding=None) -> state.TrainState:
    """`initial_state`'s tree, shapes and dtypes (`jax.eval_shape`: nothing is initialised), to restore into.

    Args:
      config: a training config.
      module: the network.
      optimizer: the optax optimizer.
      dataset: the run's `Dataset`.
      sharding: the placement of every leaf (e.g. `diffjax.parallel.replicated(mesh)`), or None.

    Returns:
      A `TrainState` of `jax.ShapeDtypeStruct`s.
    """
    shapes = jax.eval_shape(lambda: initial_state(config, module, optimizer, dataset))
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), shapes)


def _flatten(tree, prefix=""):
    if not isinstance(tree, Mapping):
        return {prefix: tree}
    out = {}
    for k, v in tree.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_differences(saved: Mapping, config, fields=MODEL_FIELDS, ignore=()) -> list[str]:
    """The leaf fields under `fields` on which a saved run's config and `config` disagree.

    Args:
      saved: the config a checkpoint was saved with, as a JSON dict (`checkpoints.restore_config`).
      config: the config of the run to resume.
      fields: dotted config paths to compare, with everything under them (`MODEL_FIELDS`: does the
        checkpoint hold parameters of this model; `RESUME_FIELDS`: may this run continue that one).
      ignore: dotted leaf fields under `fields` that may differ (`RESUME_MAY_CHANGE`).

    Returns:
      One "config.<field> (saved <value>, given <value>)" entry per differing leaf field, sorted;
      empty when they agree. Values are compared as JSON (tuples as lists); a field missing on one
      side shows as <missing>.
    """
    given = json.loads(config.to_json() if hasattr(config, "to_json") else json.dumps(config))
    missing = object()
    show = lambda v: "<missing>" if v is missing else repr(v)

    def leaves(tree):
        flat = _flatten(tree)
        under = lambda k: any(k == f or k.startswith(f + ".") for f in fields)
        return {k: v for k, v in flat.items() if under(k) and k not in ignore}

    a, b = leaves(saved), leaves(given)
    return [
        f"config.{k} (saved {show(a.get(k, missing))}, given {show(b.get(k, missing))})"
        for k in sorted(set(a) | set(b))
        if a.get(k, missing) != b.get(k, missing)
    ]
