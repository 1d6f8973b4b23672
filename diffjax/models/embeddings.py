"""Time and class embeddings shared by the networks.

Time. A network sees whatever `schedule.model_time` gives (see `diffjax.Denoiser`): t in [0, 1] for
continuous schedules, step indices 0..N-1 for discrete ones, c_noise = log(sigma)/4 (about -1.6 to
1.1) under EDM preconditioning. Both embeddings act on `time_scale * t`:

- "sinusoidal" (Vaswani et al. 2017, as used by DDPM and ADM): cos and sin of `time_scale * t` at
  frequencies max_period^(-k/half), k = 0..half-1, so periods run from 2 pi to 2 pi max_period.
  ADM chose these for integer steps 0..999, so the default `time_scale` = 1000 maps diffjax's
  t in [0, 1] (and c_noise, whose range is as wide) onto that range; feed step indices with
  `time_scale=1`.
- "fourier" (Gaussian Fourier features, Tancik et al. 2020, used by score_sde's NCSN++): sin and
  cos of 2 pi W time_scale t with W ~ N(0, 1) fixed by `seed`, i.e. score_sde's W ~ N(0, 16^2)
  for the default `time_scale` = 16. W is derived from the seed at each call (a constant under
  `jit`) rather than stored, so an optimizer over the params can never move it.

Features are computed in float32 whatever the network's compute dtype: bfloat16 cannot resolve
sin(1000 t). Any real t gives finite features.

Class. Labels 0..num_classes-1 and one extra "null" label, `num_classes`, meaning "no class", for
classifier-free guidance (Ho & Salimans 2022): train with `drop_labels`, sample unconditionally
with the null label (or `cond=None`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax import _checks

TIME_EMBEDDINGS = ("sinusoidal", "fourier")
DEFAULT_TIME_SCALE = {"sinusoidal": 1000.0, "fourier": 16.0}


def _even(name: str, dim) -> int:
    if _checks.positive_int(name, dim, 2) % 2:
        raise ValueError(f"{name} must be even, got {dim}")
    return dim


def sinusoidal(t, dim: int, *, time_scale: float = 1000.0, max_period: float = 10000.0) -> jax.Array:
    """(B,) times -> (B, dim) features [cos(time_scale t f_k), sin(time_scale t f_k)], f_k = max_period^(-k/(dim/2))."""
    half = _even("dim", dim) // 2
    freqs = jnp.exp(-float(np.log(max_period)) / half * jnp.arange(half, dtype=jnp.float32))
    args = float(time_scale) * jnp.asarray(t, jnp.float32)[:, None] * freqs
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def fourier(t, dim: int, *, time_scale: float = 16.0, seed: int = 0) -> jax.Array:
    """(B,) times -> (B, dim) features [sin(2 pi W time_scale t), cos(2 pi W time_scale t)], W ~ N(0, 1) from `seed`."""
    w = jax.random.normal(jax.random.key(seed), (_even("dim", dim) // 2,), jnp.float32)
    args = 2 * np.pi * float(time_scale) * jnp.asarray(t, jnp.float32)[:, None] * w
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def drop_labels(key, labels, num_classes: int, rate: float) -> jax.Array:
    """Replace each label by the null label `num_classes` with probability `rate` (CFG training)."""
    rate = _checks.in_range("rate", rate, 0.0, 1.0)
    return jnp.where(jax.random.bernoulli(key, rate, jnp.shape(labels)), num_classes, labels)


def check_conditioning(num_classes, time_embedding: str, time_scale) -> None:
    """Validate the conditioning fields every network shares."""
    if num_classes is not None:
        _checks.positive_int("num_classes", num_classes)
    _checks.one_of("time_embedding", time_embedding, TIME_EMBEDDINGS)
    if time_scale is not None:
        _checks.positive("time_scale", time_scale)


def class_labels(cond, batch: int, num_classes: int) -> jax.Array:
    """`cond` as (batch,) integer labels; None means the null label. Out-of-range labels raise when concrete."""
    if cond is None:
        return jnp.full((batch,), num_classes, jnp.int32)
    cond = jnp.asarray(cond)
    if not jnp.issubdtype(cond.dtype, jnp.integer) or cond.shape not in ((), (batch,)):
        raise ValueError(f"cond must be integer class labels of shape () or ({batch},), got {cond.dtype} {cond.shape}")
    if _checks.is_concrete(cond) and not np.all((np.asarray(cond) >= 0) & (np.asarray(cond) <= num_classes)):
        raise ValueError(f"cond must hold labels in [0, {num_classes}] ({num_classes} is the null label), got {cond}")
    return jnp.broadcast_to(cond, (batch,))


def embed(num_embeddings: int, features: int, ids, dtype, **kwargs):
    """An `nn.Embed` lookup done in float32 and cast to the compute dtype: (...,) ids -> (..., features).

    The forward equals `nn.Embed(..., dtype=dtype)` (gathering rows then casting them is casting then
    gathering), and the parameter is the same `embedding` table. The gradient differs: a lookup's
    gradient scatter-adds every position's cotangent into its row, and in bfloat16 that sum of tens of
    thousands of terms into a hundred rows loses its low bits and runs as slow emulated atomics on GPUs
    (a masked-diffusion training step on the H200 took 2-3x the float32 one). Here the sum is float32.

    Args:
      num_embeddings: rows of the table.
      features: the embedding width.
      ids: integer ids in [0, num_embeddings).
      dtype: the compute dtype of the output.
      **kwargs: passed to `nn.Embed` (e.g. `embedding_init`).

    Returns:
      The embeddings, in `dtype`. Call it inside a compact method: the `nn.Embed` is named by its parent.
    """
    return nn.Embed(num_embeddings, features, dtype=jnp.float32, **kwargs)(ids).astype(dtype)


class ConditionEmbedding(nn.Module):
    """ADM's and DiT's conditioning vector: MLP(time features) + class embedding (B, features).

    `frequency_dim` features of `time_embedding` kind feed Dense(features) -> SiLU -> Dense(features);
    with `num_classes` a learned embedding of num_classes + 1 labels (the last is null) is added.
    """

    features: int
    num_classes: int | None = None
    frequency_dim: int = 256
    time_embedding: str = "sinusoidal"
    time_scale: float | None = None
    max_period: float = 10000.0
    dtype: Any = jnp.float32

    def __post_init__(self):
        _checks.positive_int("features", self.features)
        check_conditioning(self.num_classes, self.time_embedding, self.time_scale)
        _even("frequency_dim", self.frequency_dim)
        if _checks.positive("max_period", self.max_period) <= 1:
            raise ValueError(f"max_period must be > 1, got {self.max_period}")
        super().__post_init__()

    @nn.compact
    def __call__(self, t, cond, batch: int):
        if jnp.ndim(t) > 1 or jnp.size(t) not in (1, batch):
            raise ValueError(f"t must be a scalar or of shape ({batch},), got shape {jnp.shape(t)}")
        t = jnp.broadcast_to(jnp.asarray(t), (batch,))
        scale = self.time_scale or DEFAULT_TIME_SCALE[self.time_embedding]
        if self.time_embedding == "sinusoidal":
            freqs = sinusoidal(t, self.frequency_dim, time_scale=scale, max_period=self.max_period)
        else:
            freqs = fourier(t, self.frequency_dim, time_scale=scale)
        emb = nn.Dense(self.features, dtype=self.dtype)(freqs)
        emb = nn.Dense(self.features, dtype=self.dtype)(nn.silu(emb))
        if self.num_classes is None:
            if cond is not None:
                raise ValueError("cond must be None for a network built with num_classes=None, got labels")
            return emb
        labels = class_labels(cond, batch, self.num_classes)
        return emb + embed(self.num_classes + 1, self.features, labels, self.dtype)
