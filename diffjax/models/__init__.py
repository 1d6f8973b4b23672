"""Flax (linen) networks for diffusion and flow models: `MLP` (low-dimensional data), `UNet` (ADM) and `DiT`;
and `Classifier`, the project's image classifier (metric features, rewards, noise-aware guidance).

Every network is called as `module.apply(variables, x, t, cond=None, train=False)`: x is (B, *event),
t is what the schedule's `model_time` gives (a scalar or (B,)), cond is (B,) int class labels or None.
For sampling, wrap it with `apply_fn`:

    net = UNet(channels=32, channel_mults=(1, 2), attention_resolutions=(4,), num_groups=8)
    variables = net.init(jax.random.key(0), x, jnp.zeros(len(x)))
    den = diffjax.Denoiser(apply_fn(net), variables, schedule=sched, prediction="eps")

For training with dropout, apply the module directly with a dropout key:

    out = net.apply(variables, x, t, cond, train=True, rngs={"dropout": key})

`REGISTRY` maps the names configs use (`config.model.name`) to the network classes, built as
`REGISTRY[name](num_classes=..., dtype=..., **config.model.args)`
(`diffjax.training.build.build_model`); a new network is its file and one line here.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn

from diffjax.models.classifier import Classifier, ClassifierOutput
from diffjax.models.dit import DiT
from diffjax.models.embeddings import ConditionEmbedding, drop_labels, fourier, sinusoidal
from diffjax.models.mlp import MLP
from diffjax.models.token_transformer import TokenTransformer
from diffjax.models.unet import UNet

REGISTRY = {
    "mlp": MLP,
    "unet": UNet,
    "dit": DiT,
    "classifier": Classifier,
    "token_transformer": TokenTransformer,
}

__all__ = [
    "REGISTRY",
    "Classifier",
    "ClassifierOutput",
    "DiT",
    "MLP",
    "TokenTransformer",
    "UNet",
    "ConditionEmbedding",
    "apply_fn",
    "drop_labels",
    "fourier",
    "sinusoidal",
]


@dataclasses.dataclass(frozen=True)
class ApplyFn:
    """`(variables, x, t, cond) -> module.apply(variables, x, t, cond)`, deterministic (no dropout).

    Equal for equal modules, so `Denoiser`s built from separate `apply_fn(module)` calls share one
    compiled sampler instead of retracing.
    """

    module: nn.Module

    def __call__(self, variables, x, t, cond=None):
        return self.module.apply(variables, x, t, cond)


def apply_fn(module: nn.Module) -> ApplyFn:
    """The `apply_fn(params, x, t, cond)` that `diffjax.Denoiser` takes, for a diffjax network."""
    if not isinstance(module, nn.Module):
        raise ValueError(f"module must be a flax.linen Module, got {module!r}")
    return ApplyFn(module)
