"""`MLP`: a time- (and class-) conditioned residual MLP for low-dimensional data such as toy 2-D sets.

Each block is ADM's residual block (Dhariwal & Nichol 2021) with dense layers in place of
convolutions, h + W2 Dropout(act(W1 act(LayerNorm(h)) + We SiLU(emb))), where emb is the time (+ class)
embedding and W2 starts at zero, so every block starts as the identity; the output layer starts at
zero too, so an untrained network predicts 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from diffjax import _checks
from diffjax.models.embeddings import ConditionEmbedding, check_conditioning


class MLP(nn.Module):
    """x (B, D), t (B,) or scalar, cond (B,) int labels or None -> (B, D) in x's dtype.

    `width` hidden units in each of `depth` residual blocks; `activation` inside the blocks;
    `num_classes` (None: unconditional) adds a class embedding with the null label `num_classes`;
    `time_embedding` / `time_scale` as in `diffjax.models.embeddings`; `dtype` is the compute dtype
    (params stay float32).
    """

    width: int = 256
    depth: int = 4
    activation: Callable = nn.silu
    num_classes: int | None = None
    dropout: float = 0.0
    time_embedding: str = "sinusoidal"
    time_scale: float | None = None
    dtype: Any = jnp.float32

    def __post_init__(self):
        _checks.positive_int("width", self.width)
        _checks.positive_int("depth", self.depth)
        if not callable(self.activation):
            raise ValueError(f"activation must be callable, got {self.activation!r}")
        _checks.in_range("dropout", self.dropout, 0.0, 1.0)
        check_conditioning(self.num_classes, self.time_embedding, self.time_scale)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, t, cond=None, train: bool = False):
        if x.ndim != 2:
            raise ValueError(f"x must have shape (B, D) for MLP, got shape {x.shape}")
        dense = lambda n, **kw: nn.Dense(n, dtype=self.dtype, **kw)
        act = self.activation
        emb = ConditionEmbedding(
            self.width,
            self.num_classes,
            time_embedding=self.time_embedding,
            time_scale=self.time_scale,
            dtype=self.dtype,
        )(t, cond, x.shape[0])
        h = dense(self.width)(x.astype(self.dtype))
        for _ in range(self.depth):
            r = dense(self.width)(act(nn.LayerNorm(dtype=self.dtype)(h))) + dense(self.width)(nn.silu(emb))
            r = nn.Dropout(self.dropout)(act(r), deterministic=not train)
            h = h + dense(self.width, kernel_init=nn.initializers.zeros)(r)
        out = dense(x.shape[-1], kernel_init=nn.initializers.zeros)(act(nn.LayerNorm(dtype=self.dtype)(h)))
        return out.astype(x.dtype)
