"""`UNet`: the DDPM / ADM U-Net for images (B, H, W, C), channels last.

Ho et al. 2020 ("Denoising Diffusion Probabilistic Models") with the changes of Dhariwal & Nichol
2021 ("Diffusion Models Beat GANs on Image Synthesis", ADM) that Song et al. 2021's DDPM++ shares:
residual blocks GroupNorm -> SiLU -> conv with the conditioning vector added after the first conv
(or, with `scale_shift`, ADM's adaptive GroupNorm: GroupNorm(h) (1 + scale) + shift), dropout, a
zero-initialised last conv; multi-head self-attention at chosen resolutions and in the middle;
stride-2 conv downsampling, nearest-neighbour + conv upsampling, and skip connections from every
block on the way down to the way up. The output conv is zero-initialised, so an untrained network
predicts 0.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from diffjax import _checks
from diffjax.models.embeddings import ConditionEmbedding, check_conditioning

zeros = nn.initializers.zeros


def check_levels(channels, channel_mults, num_groups) -> None:
    """Validate the widths channels * channel_mults[i] of a multi-level conv net and its GroupNorm groups."""
    _checks.positive_int("channels", channels)
    if not channel_mults:
        raise ValueError("channel_mults must name at least one level, got ()")
    for i, m in enumerate(channel_mults):
        _checks.positive_int(f"channel_mults[{i}]", m)
    _checks.positive_int("num_groups", num_groups)
    if any(channels * m % num_groups for m in channel_mults):
        raise ValueError(
            f"num_groups={num_groups} must divide every width channels * channel_mults = "
            f"{[channels * m for m in channel_mults]}"
        )


def check_images(name: str, x, channel_mults) -> None:
    """x must be (B, H, W, C) with H and W divisible by 2 for each of the len(channel_mults) - 1 halvings."""
    if x.ndim != 4:
        raise ValueError(f"x must be images of shape (B, H, W, C) for {name}, got shape {x.shape}")
    factor = 2 ** (len(channel_mults) - 1)
    if x.shape[1] % factor or x.shape[2] % factor:
        raise ValueError(
            f"x's height and width must be divisible by {factor} for channel_mults={tuple(channel_mults)} "
            f"({len(channel_mults) - 1} halvings), got shape {x.shape}"
        )


class ResBlock(nn.Module):
    """ADM's residual block: (B, H, W, C), (B, E) -> (B, H, W, features)."""

    features: int
    num_groups: int
    dropout: float
    scale_shift: bool
    dtype: Any

    @nn.compact
    def __call__(self, x, emb, train: bool):
        norm = functools.partial(nn.GroupNorm, self.num_groups, dtype=self.dtype)
        conv = functools.partial(nn.Conv, self.features, (3, 3), dtype=self.dtype)
        h = conv()(nn.silu(norm()(x)))
        e = nn.Dense(self.features * (2 if self.scale_shift else 1), dtype=self.dtype)(nn.silu(emb))[:, None, None]
        if self.scale_shift:
            scale, shift = jnp.split(e, 2, axis=-1)
            h = norm()(h) * (1 + scale) + shift
        else:
            h = norm()(h + e)
        h = nn.Dropout(self.dropout)(nn.silu(h), deterministic=not train)
        h = conv(kernel_init=zeros)(h)
        if x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1), dtype=self.dtype)(x)
        return x + h


class Attention(nn.Module):
    """Residual multi-head self-attention over all H*W positions, output projection zero-initialised."""

    num_heads: int
    num_groups: int
    dtype: Any

    @nn.compact
    def __call__(self, x):
        b, height, width, c = x.shape
        h = nn.GroupNorm(self.num_groups, dtype=self.dtype)(x).reshape(b, height * width, c)
        h = nn.MultiHeadDotProductAttention(
            self.num_heads, dtype=self.dtype, out_kernel_init=zeros, force_fp32_for_softmax=True
        )(h)
        return x + h.reshape(x.shape)


class UNet(nn.Module):
    """x (B, H, W, C), t (B,) or scalar, cond (B,) int labels or None -> (B, H, W, out_channels) in x's dtype.

    Level i has width `channels * channel_mults[i]` and `num_res_blocks` blocks; each level but the
    last halves H and W, so both must be divisible by 2^(len(channel_mults) - 1) (8x8 with three
    levels visits 8, 4, 2). `attention_resolutions` are the feature-map heights that get
    self-attention with `num_heads` heads (which must divide the width there; the middle always has
    it). `num_groups` GroupNorm groups must divide every width. `num_classes` (None: unconditional)
    adds a class embedding with null label `num_classes`. `out_channels` defaults to C. `dtype` is
    the compute dtype (e.g. jnp.bfloat16); params stay float32.
    """

    channels: int = 64
    channel_mults: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: Sequence[int] = (16,)
    num_heads: int = 4
    dropout: float = 0.0
    num_classes: int | None = None
    out_channels: int | None = None
    num_groups: int = 32
    scale_shift: bool = True
    time_embedding: str = "sinusoidal"
    time_scale: float | None = None
    dtype: Any = jnp.float32

    def __post_init__(self):
        object.__setattr__(self, "channel_mults", tuple(self.channel_mults))
        object.__setattr__(self, "attention_resolutions", tuple(self.attention_resolutions))
        check_levels(self.channels, self.channel_mults, self.num_groups)
        _checks.positive_int("num_res_blocks", self.num_res_blocks)
        for i, r in enumerate(self.attention_resolutions):
            _checks.positive_int(f"attention_resolutions[{i}]", r)
        _checks.positive_int("num_heads", self.num_heads)
        _checks.in_range("dropout", self.dropout, 0.0, 1.0)
        if self.out_channels is not None:
            _checks.positive_int("out_channels", self.out_channels)
        check_conditioning(self.num_classes, self.time_embedding, self.time_scale)
        super().__post_init__()

    def _check_input(self, x):
        check_images("UNet", x, self.channel_mults)
        heights = [x.shape[1] // 2**i for i in range(len(self.channel_mults))]
        missing = [r for r in self.attention_resolutions if r not in heights]
        if missing:
            raise ValueError(
                f"attention_resolutions={self.attention_resolutions} includes {missing}, which a UNet with "
                f"channel_mults={self.channel_mults} never reaches for {x.shape[1]}x{x.shape[2]} inputs "
                f"(its resolutions are {heights})"
            )
        widths = [self.channels * m for m, r in zip(self.channel_mults, heights) if r in self.attention_resolutions]
        for width in [*widths, self.channels * self.channel_mults[-1]]:
            if width % self.num_heads:
                raise ValueError(f"num_heads={self.num_heads} must divide the width {width} of every attention layer")

    @nn.compact
    def __call__(self, x, t, cond=None, train: bool = False):
        self._check_input(x)
        emb = ConditionEmbedding(
            4 * self.channels,
            self.num_classes,
            time_embedding=self.time_embedding,
            time_scale=self.time_scale,
            dtype=self.dtype,
        )(t, cond, x.shape[0])
        block = functools.partial(
            ResBlock, num_groups=self.num_groups, dropout=self.dropout, scale_shift=self.scale_shift, dtype=self.dtype
        )
        attention = functools.partial(Attention, self.num_heads, self.num_groups, dtype=self.dtype)
        conv = functools.partial(nn.Conv, kernel_size=(3, 3), dtype=self.dtype)
        last, height = len(self.channel_mults) - 1, x.shape[1]

        h = conv(self.channels)(x.astype(self.dtype))
        skips = [h]
        for level, mult in enumerate(self.channel_mults):
            for _ in range(self.num_res_blocks):
                h = block(self.channels * mult)(h, emb, train)
                if height in self.attention_resolutions:
                    h = attention()(h)
                skips.append(h)
            if level < last:
                h = conv(h.shape[-1], strides=(2, 2))(h)
                skips.append(h)
                height //= 2

        h = block(h.shape[-1])(h, emb, train)
        h = attention()(h)
        h = block(h.shape[-1])(h, emb, train)

        for level, mult in reversed(list(enumerate(self.channel_mults))):
            for _ in range(self.num_res_blocks + 1):
                h = block(self.channels * mult)(jnp.concatenate([h, skips.pop()], axis=-1), emb, train)
                if height in self.attention_resolutions:
                    h = attention()(h)
            if level > 0:
                h = conv(h.shape[-1])(jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2))
                height *= 2

        h = nn.silu(nn.GroupNorm(self.num_groups, dtype=self.dtype)(h))
        out = conv(self.out_channels or x.shape[-1], kernel_init=zeros)(h)
        return out.astype(x.dtype)
