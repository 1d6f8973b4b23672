"""What steering and search experiments share: the model, reward and scores of a task.

toy: the 8-mode ring oracle with an analytic reward ("quadratic(center=..., precision=...)" or
"linear(direction=...)") and its exactly tilted target; digits / shapes: a trained run sampled with
its null label, a classifier reward ("classifier(target=3)", needs `config.classifier_run`) or a
colour reward ("colour(colour='red')"), scored by hit rate and feature diversity.
"""

import jax
import jax.numpy as jnp
import numpy as np

import diffjax as dj


class Task:
    """What a method needs: denoiser, schedule, event shape, condition, reward, and how to score outputs."""

    def __init__(self, denoiser, schedule, event, cond, reward, hit, features, exact=None):
        self.denoiser, self.schedule, self.event, self.cond = denoiser, schedule, event, cond
        self.reward, self.hit, self.features, self.exact = reward, hit, features, exact


def toy_task(config):
    gmm = dj.data.ring()
    sched = dj.specs.parse("config.schedule", config.schedule, dj.schedules.REGISTRY)()
    registry = {name: dj.steering.rewards.REGISTRY[name] for name in ("linear", "quadratic")}
    spec = dj.specs.parse("config.reward", config.reward, registry)
    reward = spec()
    tilt = gmm.tilted_quadratic if spec.func is dj.steering.rewards.quadratic else gmm.tilted_linear
    tilted, _ = tilt(**spec.keywords, lmbda=config.lmbda)
    favourite = int(jnp.argmax(tilted.weights))

    def hit(x):
        return np.asarray(jnp.argmax(gmm.posterior(jnp.asarray(x), sched, 0.0), -1) == favourite)

    exact = tilted.sample(jax.random.key(config.seed + 7), 20_000)
    return Task(gmm.denoiser(sched), sched, (2,), None, reward, hit, lambda x: np.asarray(x), exact)


def image_task(config):
    run = dj.training.load_run(config.run, field="config.run")
    den = run.denoiser if config.use_ema else run.denoiser_for(run.params)
    num_classes = run.num_classes
    cond = None if num_classes is None else jnp.full((config.num_conditions,), num_classes, jnp.int32)  # null label
    judge = None
    if config.classifier_run:
        classifier = dj.training.load_run(config.classifier_run, field="config.classifier_run")
        module, c_params = classifier.module, classifier.ema_params
        judge = dj.training.classifier_apply(module, c_params)

    registry = {name: dj.steering.rewards.REGISTRY[name] for name in ("classifier", "colour")}
    spec = dj.specs.parse("config.reward", config.reward, registry)
    if spec.func is dj.steering.rewards.classifier_reward:
        if judge is None:
            raise ValueError(f"config.reward={config.reward!r} needs config.classifier_run")
        if spec.keywords.get("target") is None:
            raise ValueError(f"config.reward must name a target class as 'classifier(target=3)', got {config.reward!r}")
        reward = spec(module, c_params)  # the classifier's parameters are leaves of the reward, not constants
        target = spec.keywords["target"]
        hit = lambda x: judge(x).logits.argmax(-1) == target  # noqa: E731
    else:
        reward = spec()
        hit = lambda x: np.asarray(reward(jnp.asarray(x))) > config.hit_threshold  # noqa: E731
    features = (lambda x: judge(x).features) if judge is not None else (lambda x: np.asarray(x).reshape(len(x), -1))
    return Task(den, run.schedule, run.event_shape, cond, reward, hit, features)


def diversity(features) -> float:
    """Mean Euclidean distance between two different outputs."""
    f = np.asarray(features, np.float64)
    sq = np.sum(f**2, 1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * f @ f.T, 0.0)
    n = len(f)
    return float(np.sqrt(d2).sum() / (n * (n - 1)))


def build(config) -> Task:
    return toy_task(config) if config.task == "toy" else image_task(config)


def score(task, x, diversity_of: int | None = None):
    """Mean reward and hit rate of the outputs x, and the diversity of the first `diversity_of`."""
    r = np.asarray(task.reward(jnp.asarray(x), None))
    spread = diversity(task.features(x[:diversity_of]))
    return {"reward": float(r.mean()), "hit": float(np.mean(task.hit(x))), "diversity": spread}
