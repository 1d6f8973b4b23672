"""`DiT`: the Diffusion Transformer of Peebles & Xie 2023 ("Scalable Diffusion Models with Transformers").

Images (B, H, W, C) are cut into p x p patches, linearly embedded, and given the fixed 2-D sin-cos
position embedding of MAE (He et al. 2022). Each transformer block is adaLN-Zero conditioned on
the time (+ class) embedding c: from SiLU(c) a zero-initialised dense layer regresses the shift,
scale and gate of both the attention and the MLP branch, so every block starts as the identity.
The final layer (adaLN, then a zero-initialised dense layer to p*p*out_channels) is unpatchified
back to an image; an untrained DiT therefore outputs exactly 0.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from diffjax import _checks
from diffjax.models.embeddings import ConditionEmbedding, check_conditioning

zeros, xavier = nn.initializers.zeros, nn.initializers.xavier_uniform()


def sincos_2d(dim: int, height: int, width: int) -> np.ndarray:
    """(height * width, dim) fixed position embedding: half of dim for the row, half for the column."""
    omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim / 4))
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    parts = [f(pos.reshape(-1, 1) * omega) for pos in (rows, cols) for f in (np.sin, np.cos)]
    return np.concatenate(parts, axis=1).astype(np.float32)


def modulate(x, shift, scale):
    """adaLN's modulation x (1 + scale) + shift, per example over the token axis."""
    return x * (1 + scale[:, None]) + shift[:, None]


def layer_norm(dtype):
    """DiT's affine-free LayerNorm (epsilon 1e-6), computed in `dtype`."""
    return nn.LayerNorm(epsilon=1e-6, use_scale=False, use_bias=False, dtype=dtype)


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero: x (B, N, D), c (B, D) -> (B, N, D)."""

    num_heads: int
    mlp_ratio: float
    dtype: Any

    @nn.compact
    def __call__(self, x, c):
        d = x.shape[-1]
        mod = nn.Dense(6 * d, kernel_init=zeros, dtype=self.dtype)(nn.silu(c))
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(mod, 6, axis=-1)
        h = modulate(layer_norm(self.dtype)(x), shift_a, scale_a)
        h = nn.MultiHeadDotProductAttention(
            self.num_heads, dtype=self.dtype, kernel_init=xavier, force_fp32_for_softmax=True
        )(h)
        x = x + gate_a[:, None] * h
        h = modulate(layer_norm(self.dtype)(x), shift_m, scale_m)
        h = nn.gelu(nn.Dense(int(d * self.mlp_ratio), kernel_init=xavier, dtype=self.dtype)(h), approximate=True)
        h = nn.Dense(d, kernel_init=xavier, dtype=self.dtype)(h)
        return x + gate_m[:, None] * h


class DiT(nn.Module):
    """x (B, H, W, C), t (B,) or scalar, cond (B,) int labels or None -> (B, H, W, out_channels) in x's dtype.

    H and W must be divisible by `patch_size`; `hidden_size` must be divisible by 4 (the position
    embedding) and by `num_heads`. `num_classes` (None: unconditional) adds a class embedding with
    null label `num_classes`. `out_channels` defaults to C. `dtype` is the compute dtype; params
    stay float32. DiT has no dropout: `train` is accepted for the common signature and ignored.
    Defaults are the paper's DiT-S/2.
    """

    patch_size: int = 2
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_classes: int | None = None
    out_channels: int | None = None
    time_embedding: str = "sinusoidal"
    time_scale: float | None = None
    dtype: Any = jnp.float32

    def __post_init__(self):
        _checks.positive_int("patch_size", self.patch_size)
        if _checks.positive_int("hidden_size", self.hidden_size) % 4:
            raise ValueError(
                f"hidden_size must be divisible by 4 (2-D sin-cos position embedding), got {self.hidden_size}"
            )
        _checks.positive_int("depth", self.depth)
        if self.hidden_size % _checks.positive_int("num_heads", self.num_heads):
            raise ValueError(f"num_heads={self.num_heads} must divide hidden_size={self.hidden_size}")
        _checks.positive("mlp_ratio", self.mlp_ratio)
        if self.out_channels is not None:
            _checks.positive_int("out_channels", self.out_channels)
        check_conditioning(self.num_classes, self.time_embedding, self.time_scale)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, t, cond=None, train: bool = False):
        p, d = self.patch_size, self.hidden_size
        if x.ndim != 4 or x.shape[1] % p or x.shape[2] % p:
            raise ValueError(f"x must be images (B, H, W, C) with H and W divisible by patch_size={p}, got {x.shape}")
        b, height, width, channels = x.shape
        rows, cols, out_channels = height // p, width // p, self.out_channels or channels

        h = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", kernel_init=xavier, dtype=self.dtype)(
            x.astype(self.dtype)
        )
        h = h.reshape(b, rows * cols, d) + sincos_2d(d, rows, cols).astype(self.dtype)
        c = ConditionEmbedding(
            d, self.num_classes, time_embedding=self.time_embedding, time_scale=self.time_scale, dtype=self.dtype
        )(t, cond, b)
        for _ in range(self.depth):
            h = DiTBlock(self.num_heads, self.mlp_ratio, self.dtype)(h, c)

        shift, scale = jnp.split(nn.Dense(2 * d, kernel_init=zeros, dtype=self.dtype)(nn.silu(c)), 2, axis=-1)
        h = modulate(layer_norm(self.dtype)(h), shift, scale)
        h = nn.Dense(p * p * out_channels, kernel_init=zeros, dtype=self.dtype)(h)
        h = h.reshape(b, rows, cols, p, p, out_channels).transpose(0, 1, 3, 2, 4, 5)
        return h.reshape(b, height, width, out_channels).astype(x.dtype)
