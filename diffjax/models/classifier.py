"""`Classifier`: a small residual conv net for the project's image sets (digits, shapes).

It serves two purposes. Its penultimate `features` define diffjax's feature-space metrics for
those sets ("digits-FID", "shapes-KID": `diffjax.metrics.fid`), and its logits score samples
(accuracy of class-conditional samples, class log-probability rewards). With
`time_conditioned=True` it also takes the diffusion time, so it can be trained on noisy x_t
(`diffjax.training.classifier_loss(schedule)`) for classifier guidance and twisted proposals.

Architecture: a 3x3 conv stem, then per level `num_res_blocks` of the UNet's residual blocks
(GroupNorm, SiLU, conv; time embedding added when time-conditioned) and a stride-2 conv between
levels, global average pooling, Dense(feature_dim) -> SiLU = the features, Dense(num_classes) =
the logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax import _checks
from diffjax.models.embeddings import ConditionEmbedding, check_conditioning
from diffjax.models.unet import ResBlock, check_images, check_levels


class ClassifierOutput(NamedTuple):
    """The classifier's logits and the penultimate features the metrics (digits-FID) use."""

    logits: jax.Array  # (B, num_classes), float32
    features: jax.Array  # (B, feature_dim), float32: the metrics' feature space


class Classifier(nn.Module):
    """x (B, H, W, C) [, t (B,) or scalar] -> `ClassifierOutput(logits, features)`.

    H and W must be divisible by 2^(len(channel_mults) - 1). `t` is required when
    `time_conditioned` (what the schedule's `model_time` gives, as for the denoising networks)
    and must be None otherwise. `dtype` is the compute dtype; outputs are float32.
    """

    num_classes: int
    channels: int = 32
    channel_mults: Sequence[int] = (1, 2)
    num_res_blocks: int = 1
    num_groups: int = 8
    feature_dim: int = 64
    dropout: float = 0.0
    time_conditioned: bool = False
    time_embedding: str = "sinusoidal"
    time_scale: float | None = None
    dtype: Any = jnp.float32

    def __post_init__(self):
        object.__setattr__(self, "channel_mults", tuple(self.channel_mults))
        _checks.positive_int("num_classes", self.num_classes, 2)
        check_levels(self.channels, self.channel_mults, self.num_groups)
        _checks.positive_int("num_res_blocks", self.num_res_blocks)
        _checks.positive_int("feature_dim", self.feature_dim)
        _checks.in_range("dropout", self.dropout, 0.0, 1.0)
        check_conditioning(None, self.time_embedding, self.time_scale)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, t=None, train: bool = False) -> ClassifierOutput:
        check_images("Classifier", x, self.channel_mults)
        batch = x.shape[0]
        if self.time_conditioned:
            if t is None:
                raise ValueError("t is required for a Classifier built with time_conditioned=True")
            emb = ConditionEmbedding(
                4 * self.channels, time_embedding=self.time_embedding, time_scale=self.time_scale, dtype=self.dtype
            )(t, None, batch)
        elif t is not None:
            raise ValueError("t must be None for a Classifier built with time_conditioned=False")
        else:
            emb = jnp.zeros((batch, 1), self.dtype)  # its Dense in each block then adds a learned bias
        h = nn.Conv(self.channels, (3, 3), dtype=self.dtype)(x.astype(self.dtype))
        for level, mult in enumerate(self.channel_mults):
            if level:
                h = nn.Conv(self.channels * mult, (3, 3), strides=(2, 2), dtype=self.dtype)(h)
            for _ in range(self.num_res_blocks):
                h = ResBlock(self.channels * mult, self.num_groups, self.dropout, False, self.dtype)(h, emb, train)
        h = nn.silu(nn.GroupNorm(self.num_groups, dtype=self.dtype)(h)).mean(axis=(1, 2))
        features = nn.silu(nn.Dense(self.feature_dim, dtype=self.dtype)(h))
        logits = nn.Dense(self.num_classes, dtype=self.dtype)(features)
        return ClassifierOutput(logits.astype(jnp.float32), features.astype(jnp.float32))
