"""`TokenTransformer`: a bidirectional transformer over token sequences, the network of masked diffusion.

Input: int tokens z (B, L) with values in [0, V], where `vocab_size` V excludes the mask and the mask
token is id V, so the embedding table has V + 1 rows. Output: logits (B, L, V) of the clean token at
every position, with no logit for the mask; SUBS (the mask logit removed, unmasked positions carried
over) is applied by the core (`diffjax.discrete`), not here.

    h_0 = E[z] + P          E: (V + 1, D) token embedding; P: (L, D) positions (learned, sin-cos or none)
    h_k = DiTBlock(h_{k-1}, c)   k = 1..depth, full (non-causal) self-attention, adaLN-Zero on c
    logits = Dense_V(modulate(LN(h_depth), shift(c), scale(c)))

The blocks, `modulate` and `layer_norm` are the DiT's (`diffjax.models.dit`), so every block starts as
the identity and the zero-initialised output layer makes an untrained network output logits exactly 0
(uniform predictions: a masked position's initial cross-entropy is log V). The conditioning vector c is
the DiT's `ConditionEmbedding` of the time (+ class); with `time_conditioned=False` t is ignored and c is
the class embedding, or zeros without classes (then each adaLN layer is a learned constant shift, scale
and gate, its bias), so the output provably does not depend on t: the time-agnostic denoiser for which
caching samplers skip network calls.

Checked against MDLM's `models/dit.py` (kuleshov-group/mdlm): the same block (pre-norm adaLN with
shift/scale/gate for attention and MLP, tanh-GELU MLP of ratio 4, bias-free LayerNorm), zero-initialised
adaLN modulations and final linear layer, sinusoidal time features through a two-layer MLP, and MDLM's
`time_conditioning=False` (it feeds sigma = 0, a constant c). Differences, on purpose: MDLM predicts
V + 1 logits (SUBS then sets the mask's to -inf) where this network predicts V (MD4's convention), and
MDLM uses rotary position embeddings where this offers learned (N(0, 0.02^2), as GPT-2/BERT), 1-D
sin-cos (Vaswani et al. 2017) or none (the network is then permutation-equivariant over positions).
No dropout (the DiT blocks have none): `train` is accepted for the common signature and ignored.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from diffjax import _checks
from diffjax.models.dit import DiTBlock, layer_norm, modulate, zeros
from diffjax.models.embeddings import ConditionEmbedding, check_conditioning, class_labels, embed

POSITIONS = ("learned", "sinusoidal", "none")
embedding_init = nn.initializers.normal(stddev=0.02)


def sincos_1d(dim: int, length: int) -> np.ndarray:
    """(length, dim) fixed position embedding [sin(p w_k), cos(p w_k)], w_k = 10000^(-k/(dim/2)), dim even."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2) / (dim / 2))
    args = np.arange(length)[:, None] * omega
    return np.concatenate([np.sin(args), np.cos(args)], axis=1).astype(np.float32)


class TokenTransformer(nn.Module):
    """z (B, L) int tokens in [0, vocab_size], t (B,) or scalar, cond (B,) int labels or None -> logits (B, L, V).

    Attributes:
      vocab_size: V, the number of data tokens; the mask is token id V (V + 1 embeddings, V logits).
      hidden_size: the width D; divisible by `num_heads` (and even for sin-cos positions).
      depth: the number of DiT blocks.
      num_heads: attention heads.
      mlp_ratio: the MLP's hidden width over D.
      positions: "learned" (a (max_length, D) table, rows 0..L-1 used), "sinusoidal" (fixed 1-D sin-cos)
        or "none" (no positions: outputs permute with the input's positions).
      max_length: the longest sequence; the size of the learned table.
      time_conditioned: condition on t through adaLN; False ignores t (a time-agnostic network).
      num_classes: None (unconditional) or the number of classes; label `num_classes` is the null label.
      time_embedding: "sinusoidal" or "fourier" features of t (see `diffjax.models.embeddings`).
      time_scale: the time features' scale (None: the embedding's default).
      dtype: the compute dtype; parameters stay float32; logits are float32 or wider
        (`promote_types(dtype, float32)`), since a bfloat16 log-softmax over V loses the tail.

    Example:
      net = TokenTransformer(vocab_size=27, hidden_size=64, depth=2, num_heads=4, max_length=32)
      z = jnp.full((2, 32), 27, jnp.int32)  # every position masked
      variables = net.init(jax.random.key(0), z, jnp.ones(2))
      logits = net.apply(variables, z, jnp.ones(2))  # (2, 32, 27), exactly 0 before training
    """

    vocab_size: int = 256
    hidden_size: int = 256
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    positions: str = "learned"
    max_length: int = 1024
    time_conditioned: bool = True
    num_classes: int | None = None
    time_embedding: str = "sinusoidal"
    time_scale: float | None = None
    dtype: Any = jnp.float32

    def __post_init__(self):
        _checks.positive_int("vocab_size", self.vocab_size)
        _checks.positive_int("hidden_size", self.hidden_size)
        _checks.positive_int("depth", self.depth)
        if self.hidden_size % _checks.positive_int("num_heads", self.num_heads):
            raise ValueError(f"num_heads={self.num_heads} must divide hidden_size={self.hidden_size}")
        _checks.positive("mlp_ratio", self.mlp_ratio)
        _checks.one_of("positions", self.positions, POSITIONS)
        if self.positions == "sinusoidal" and self.hidden_size % 2:
            raise ValueError(f"hidden_size must be even for sinusoidal positions, got {self.hidden_size}")
        _checks.positive_int("max_length", self.max_length)
        if not isinstance(self.time_conditioned, bool):
            raise ValueError(f"time_conditioned must be True or False, got {self.time_conditioned!r}")
        check_conditioning(self.num_classes, self.time_embedding, self.time_scale)
        super().__post_init__()

    def check_tokens(self, z) -> None:
        """A ValueError unless z is (B, L) integers, L <= max_length, values in [0, vocab_size] when concrete."""
        v = self.vocab_size
        if jnp.ndim(z) != 2 or not jnp.issubdtype(jnp.asarray(z).dtype, jnp.integer):
            raise ValueError(f"z must be integer tokens of shape (B, L), got {jnp.asarray(z).dtype} {jnp.shape(z)}")
        if z.shape[1] > self.max_length:
            raise ValueError(f"z has length {z.shape[1]} > max_length={self.max_length}")
        if _checks.is_concrete(z):
            values = np.asarray(z)
            if values.size and (values.min() < 0 or values.max() > v):
                low, high = values.min(), values.max()
                raise ValueError(f"z must hold token ids in [0, {v}] ({v} is the mask), got values in [{low}, {high}]")

    @nn.compact
    def __call__(self, z, t, cond=None, train: bool = False):
        self.check_tokens(z)
        b, length = z.shape
        d = self.hidden_size
        h = embed(self.vocab_size + 1, d, z, self.dtype, embedding_init=embedding_init)
        if self.positions == "learned":
            table = self.param("position_embedding", embedding_init, (self.max_length, d), jnp.float32)
            h = h + table[:length].astype(self.dtype)
        elif self.positions == "sinusoidal":
            h = h + sincos_1d(d, length).astype(self.dtype)

        if self.time_conditioned:
            c = ConditionEmbedding(
                d, self.num_classes, time_embedding=self.time_embedding, time_scale=self.time_scale, dtype=self.dtype
            )(t, cond, b)
        elif self.num_classes is not None:
            c = embed(self.num_classes + 1, d, class_labels(cond, b, self.num_classes), self.dtype)
        elif cond is not None:
            raise ValueError("cond must be None for a network built with num_classes=None, got labels")
        else:
            c = jnp.zeros((b, d), self.dtype)

        for _ in range(self.depth):
            h = DiTBlock(self.num_heads, self.mlp_ratio, self.dtype)(h, c)
        shift, scale = jnp.split(nn.Dense(2 * d, kernel_init=zeros, dtype=self.dtype)(nn.silu(c)), 2, axis=-1)
        h = modulate(layer_norm(self.dtype)(h), shift, scale)
        logits = nn.Dense(self.vocab_size, kernel_init=zeros, dtype=self.dtype)(h)
        return logits.astype(jnp.promote_types(self.dtype, jnp.float32))
