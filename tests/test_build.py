"""Config -> objects (`training.build`): every data set and network in the registries builds, label
dropout draws the null label at its rate, and a resumed run is checked against the saved model."""

import importlib.util
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax.training import build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(arg="digits_unet", file="train"):
    spec = importlib.util.spec_from_file_location(f"configs_{file}", os.path.join(ROOT, "configs", f"{file}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


# name -> small options; every registry entry must have one here (the test below checks)
DATA_OPTIONS = {
    "toy2d": dict(set="moons"),
    "digits": dict(size=8, conditional=True, split="train"),
    "shapes": dict(image_size=16, conditional=True),
    "npz": dict(path=None, conditional=True),  # path: a file the test writes
    "text": dict(length=16, split="train"),
}
DATA_EVENTS = {"toy2d": (2,), "digits": (8, 8, 1), "shapes": (16, 16, 3), "npz": (4, 4, 2), "text": (16,)}
DATA_CLASSES = {"toy2d": None, "digits": 10, "shapes": dj.data.shapes.NUM_LABELS, "npz": 3, "text": None}
TOKEN_DATA = {"text"}  # int32 windows for masked diffusion; the others are float32 for the other tasks


@pytest.mark.parametrize("name", sorted(dj.data.REGISTRY))
def test_every_data_set_in_the_registry_builds_and_batches(name, tmp_path):
    assert set(DATA_OPTIONS) == set(dj.data.REGISTRY)
    options = dict(DATA_OPTIONS[name])
    if name == "npz":
        rng = np.random.default_rng(0)
        options["path"] = str(tmp_path / "data.npz")
        np.savez(options["path"], x=rng.normal(size=(20, 4, 4, 2)), y=np.arange(20) % 3)
    config = _config("text") if name in TOKEN_DATA else _config()
    config.data = dict(name=name, **options)
    config.batch_size = 8
    data = build.build_data(config, dj.parallel.data_mesh(1))
    assert data.event_shape == DATA_EVENTS[name] and data.num_classes == DATA_CLASSES[name]
    assert data.null_label == data.num_classes
    x, labels = data.batches(0)
    assert x.shape == (8, *DATA_EVENTS[name]) and x.dtype == (jnp.int32 if name in TOKEN_DATA else jnp.float32)
    if name in TOKEN_DATA:
        assert 0 <= int(x.min()) and int(x.max()) < build.TOKEN_DATA[name]  # no mask id in clean data
    assert (labels is None) == (DATA_CLASSES[name] is None)
    if labels is not None:
        assert labels.shape == (8,) and int(labels.max()) < data.num_classes


MODEL_ARGS = {  # name -> small args; every registry entry must have one here
    "mlp": dict(width=16, depth=1),
    "unet": dict(channels=8, channel_mults=(1,), num_res_blocks=1, attention_resolutions=(), num_groups=4),
    "dit": dict(patch_size=2, hidden_size=16, depth=1, num_heads=2),
    "classifier": dict(channels=8, channel_mults=(1,), num_res_blocks=1, num_groups=4, feature_dim=8),
    "token_transformer": dict(hidden_size=16, depth=1, num_heads=2, max_length=16, time_conditioned=False),
}


@pytest.mark.parametrize("name", sorted(dj.models.REGISTRY))
def test_every_network_in_the_registry_builds_and_initialises(name):
    assert set(MODEL_ARGS) == set(dj.models.REGISTRY)
    # the MLP on 2-D points and the token network on text windows (unconditional), the image networks on
    # class-conditional digits
    configs = {
        "classifier": _config("digits", "classifier"),
        "mlp": _config("moons"),
        "token_transformer": _config("text"),
    }
    config = configs.get(name, _config())
    config.model = dict(name=name, args=MODEL_ARGS[name], label_dropout=0.0)
    config.batch_size = 8
    if name == "token_transformer":
        config.data = dict(name="text", length=16, split="train")
    data, training, module = build.build(config, dj.parallel.data_mesh(1))
    unconditional = name in ("mlp", "token_transformer")
    assert isinstance(module, dj.models.REGISTRY[name]) and module.num_classes == (None if unconditional else 10)
    if name == "token_transformer":  # V comes from the data; the loss is the masked NELBO on its schedule
        assert module.vocab_size == dj.data.text.VOCAB_SIZE and isinstance(training.loss, dj.discrete.MaskedNELBO)
    abstract = build.abstract_state(config, module, training.optimizer, data)
    state = build.initial_state(config, module, training.optimizer, data)
    shapes = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype), tree)
    assert shapes(abstract) == shapes(state) and int(state.step) == 0
    assert len(jax.tree.leaves(state.params)) > 0


def test_registry_misses_and_unfit_options_name_the_field():
    config = _config("moons")
    with pytest.raises(ValueError, match="config.data.name"):
        build.build_data(_with(config, data=dict(name="cifar")))
    with pytest.raises(ValueError, match="config.data does not fit the data set 'toy2d'"):
        build.build_data(_with(config, data=dict(name="toy2d", set="moons", image_size=8)))
    with pytest.raises(ValueError, match="config.data.conditional"):
        build.build_data(_with(config, data=dict(name="toy2d", set="moons", conditional=True)))
    with pytest.raises(ValueError, match="config.model.args does not fit mlp"):
        build.build_model(_with(config, model=dict(name="mlp", args=dict(channels=3))), None, dj.schedules.vp_cosine())


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(task="diffusion"), r"config.data.name='text' \(token data\) does not fit config.task='diffusion'"),
        (dict(model=dict(name="unet", args={})), r"config.model.name='unet' does not fit config.task='masked"),
        (dict(schedule="vp_cosine"), r"config.schedule='vp_cosine' is a Gaussian schedule"),
        (dict(loss=dict(t_min=1.0, antithetic=True)), r"config.loss.t_min must lie in \[0, 1\)"),
        (dict(loss=dict(t_min=1e-3, antithetic="yes")), r"config.loss.antithetic must be True or False"),
        (dict(data=dict(name="text", length=128, split="train")), r"config.model.args.max_length=64 must be >= .* 128"),
        (dict(sample=dict(num=8, steps=0, caching=True)), r"config.sample.steps must be"),
    ],
)  # fmt: skip
def test_masked_diffusion_mismatches_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        build.build(_with(_config("text"), **fields), dj.parallel.data_mesh(1))


def test_token_networks_take_v_from_the_data_and_caching_needs_a_time_agnostic_network():
    config = _config("text")
    args = dict(config.model.args)
    with pytest.raises(ValueError, match=r"config.model.args.vocab_size is set by the data \(96\)"):
        build.build(_with(config, model=dict(config.model, args=dict(args, vocab_size=50))))
    timed = _with(config, model=dict(config.model, args=dict(args, time_conditioned=True)))
    with pytest.raises(ValueError, match=r"config.sample.caching=True needs a time-agnostic network"):
        build.build(timed)
    _, _, module = build.build(_with(timed, sample=dict(config.sample, caching=False)))
    assert module.time_conditioned and module.vocab_size == 96


def _with(config, **fields):
    config = config.copy_and_resolve_references()
    config.unlock()
    for k, v in fields.items():
        config[k] = v
    return config


class Echo(nn.Module):
    """A network whose output is the labels it was given (to read label dropout off)."""

    num_classes: int = 3

    @nn.compact
    def __call__(self, x, t, cond=None, train=False):
        return cond


def test_label_dropout_draws_the_null_label_at_its_rate_and_rate_0_changes_nothing():
    labels = jnp.arange(2000, dtype=jnp.int32) % 3
    keys = jax.random.split(jax.random.key(0), 50)
    x, t = jnp.zeros((2000, 2)), jnp.zeros((2000,))

    def outputs(rate):
        make = dj.training.train_apply(Echo(), label_dropout=rate)
        return np.asarray(jax.vmap(lambda key: make(key)({}, x, t, labels))(keys))

    out = outputs(0.3)
    null = out == 3
    assert np.all(null | (out == np.asarray(labels)))  # a label is kept or becomes the null label
    assert abs(null.mean() - 0.3) < 5 * np.sqrt(0.3 * 0.7 / null.size), null.mean()  # 100 000 draws
    assert len({tuple(row) for row in null}) == len(keys)  # each step key drops other labels
    np.testing.assert_array_equal(outputs(0.0), np.broadcast_to(labels, (len(keys), 2000)))
    np.testing.assert_array_equal(outputs(1.0), 3)
    make = dj.training.train_apply(Echo(), label_dropout=0.5)
    assert make(keys[0])({}, x, t, None) is None  # unconditional calls pass through


def test_label_dropout_0_is_the_plain_training_call_with_the_second_half_of_the_key():
    net = dj.models.MLP(width=16, depth=2, num_classes=3, dropout=0.5)
    x, t, cond = jnp.ones((4, 2)), jnp.full((4,), 0.5), jnp.array([0, 1, 2, 0])
    params = net.init(jax.random.key(0), x, t, cond)
    key = jax.random.key(1)
    got = dj.training.train_apply(net)(key)(params, x, t, cond)
    want = net.apply(params, x, t, cond, train=True, rngs={"dropout": jax.random.split(key)[1]})
    np.testing.assert_array_equal(got, want)


def test_label_dropout_is_refused_where_there_are_no_labels_to_drop():
    with pytest.raises(ValueError, match="label_dropout must lie in"):
        dj.training.train_apply(Echo(), label_dropout=1.5)
    with pytest.raises(ValueError, match="unconditional"):
        dj.training.train_apply(dj.models.MLP(), label_dropout=0.1)
    with pytest.raises(ValueError, match="Classifier"):
        dj.training.train_apply(dj.models.Classifier(num_classes=10), label_dropout=0.1)
    config = _config("moons")
    with pytest.raises(ValueError, match="config.model.label_dropout"):
        build.build_train_apply(_with(config, model=dict(name="mlp", args={}, label_dropout=0.1)), dj.models.MLP())


def test_config_differences_name_the_model_fields_only():
    config = _config()
    saved = json.loads(config.to_json())
    assert build.config_differences(saved, config) == []
    other = _with(config, model=dict(config.model.to_dict(), args=dict(config.model.args.to_dict(), channels=32)))
    other.optim.total_steps = 5  # the run length may change
    other.compute_dtype = "bfloat16"
    assert build.config_differences(saved, other) == ["config.model.args.channels (saved 64, given 32)"]
    other.schedule = "vp_linear"
    del saved["data"]["split"]
    assert build.config_differences(saved, other) == [
        "config.data.split (saved <missing>, given 'train')",
        "config.model.args.channels (saved 64, given 32)",
        "config.schedule (saved 'vp_cosine', given 'vp_linear')",
    ]


def test_resuming_must_agree_on_the_optimizer_batch_and_seed_but_not_the_run_length():
    config = _config()
    saved = json.loads(config.to_json())
    other = _config()
    other.optim.total_steps = 3 * config.optim.total_steps  # a finished run may be continued
    other.compute_dtype, other.log_every, other.keep_checkpoints = "bfloat16", 2 * config.log_every, 1
    resume = lambda c: build.config_differences(saved, c, build.RESUME_FIELDS, build.RESUME_MAY_CHANGE)
    assert resume(other) == []
    other.optim.learning_rate, other.batch_size, other.seed = 1e-5, 3, 7
    assert resume(other) == [
        "config.batch_size (saved 128, given 3)",
        f"config.optim.learning_rate (saved {config.optim.learning_rate!r}, given 1e-05)",
        "config.seed (saved 0, given 7)",
    ]
    assert build.config_differences(saved, other) == []  # the same model: its parameters load
