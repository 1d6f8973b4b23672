r"""A character n-gram language model with add-k smoothing, as a value, and the reward it gives.

Model of order n over V tokens, fitted on token rows (no n-gram crosses the end of a row). For
j = 1..n, c_j(u_1 .. u_j) counts the j-grams of the fitting data. With pseudo-count k > 0 (add-k,
Lidstone smoothing; k = 1 is Laplace)

    p_j(w | u) = (c_j(u, w) + k) / (sum_w' c_j(u, w') + k V),   u a context of j - 1 tokens,

which sums to 1 over w for every context, seen or not (an unseen context gets the uniform 1/V).
The normaliser is the sum over the next token of the j-gram counts (not the (j-1)-gram count of u,
which differs by the j-grams cut off at the end of a row), so that holds exactly. A sequence x of
length L is scored left to right, position i with the longest context available inside the
sequence (windows start mid-text, there is no begin-of-sequence token):

    log p(x) = sum_{i=0}^{L-1} log p_{min(i+1, n)}(x_i | x_{max(0, i-n+1)} .. x_{i-1}).

Perplexity is exp(-sum log p / (number of tokens)) and bits per token -sum log2 p / (number of
tokens) over a (B, L) array; `unigram_bits_per_token` is the order-1 baseline ("a model is below a
unigram baseline") fitted on training tokens and scored on held-out ones.

`NGram` holds the counts as arrays (leaves, one table of shape (V,) * j per order j) and k as a
leaf, so `jax.jit(lambda m, x: m.log_prob(x))` compiles once per order, V and shape, and refitting
on other text or changing k never recompiles. Tables are dense: V^n entries, at most 2^24 (V = 96:
n <= 3). `ngram_reward(model)` is a steering reward `reward(x, cond=None) -> (B,)` (the interface of
`diffjax.steering.rewards`): scale * log p(x), or per token with `per_token=True`. Tokens must be clean
ids in [0, V) (no mask token): checked on the host when concrete; under tracing the caller
guarantees it (the steering of masked diffusion scores the denoiser's clean draws).

Checked against a hand count on a tiny corpus and against exact normalisation in
`tests/test_text.py`; there is no official code to compare with (the MDLM / MD4 papers report
perplexities of networks, not of n-gram baselines).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffjax import _checks
from diffjax.arrays import Value

MAX_TABLE = 2**24


def _check_tokens(name: str, tokens, vocab_size: int, ndims=(2,)):
    """A ValueError naming `name` unless tokens are integers of a rank in `ndims` with values in
    [0, vocab_size) (values are checked only when concrete)."""
    if not hasattr(tokens, "dtype"):
        tokens = np.asarray(tokens)
    shape, dtype = np.shape(tokens), tokens.dtype
    if len(shape) not in ndims or not jnp.issubdtype(dtype, jnp.integer):
        ranks = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"{name} must be a {ranks} array of integer token ids, got {dtype} of shape {shape}")
    if _checks.is_concrete(tokens) and np.size(tokens):
        values = np.asarray(tokens)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"{name} must hold token ids in [0, {vocab_size}) (no mask token {vocab_size}), got values in "
                f"[{low}, {high}]"
            )


def _flat_index(grams, vocab_size: int):
    """The row-major flat index of j-grams stacked on the last axis: sum_m g_m V^(j-1-m)."""
    j = grams.shape[-1]
    weights = vocab_size ** np.arange(j - 1, -1, -1)
    return jnp.sum(grams * jnp.asarray(weights, grams.dtype), axis=-1)


@struct.dataclass(eq=False)
class NGram(Value):
    """An add-k smoothed n-gram model (see the module docstring for the formula).

    Attributes:
      counts: tuple of n float arrays, counts[j - 1] of shape (V,) * j: the j-gram counts (leaves).
      k: the add-k pseudo-count, a scalar > 0 (leaf).
    """

    counts: tuple
    k: jax.Array

    @property
    def order(self) -> int:
        """n, the longest n-gram (n - 1 tokens of context)."""
        return len(self.counts)

    @property
    def vocab_size(self) -> int:
        """V, the number of tokens."""
        return self.counts[0].shape[0]

    def conditional(self, j: int | None = None) -> jax.Array:
        """The table of log p_j(w | u), shape (V,) * j, the last axis the next token w.

        Args:
          j: the order, 1..n (default n).

        Returns:
          log p_j: logsumexp over the last axis is 0 for every context.
        """
        j = self.order if j is None else j
        if not 1 <= j <= self.order:
            raise ValueError(f"j must be an order in 1..{self.order}, got {j!r}")
        c = self.counts[j - 1]
        k = jnp.asarray(self.k, c.dtype)
        return jnp.log(c + k) - jnp.log(jnp.sum(c, axis=-1, keepdims=True) + k * self.vocab_size)

    def token_log_probs(self, tokens) -> jax.Array:
        """log p(x_i | context) at every position (the terms of `log_prob`).

        Args:
          tokens: int (B, L) ids in [0, V).

        Returns:
          (B, L) log-probabilities in the counts' dtype.
        """
        _check_tokens("tokens", tokens, self.vocab_size)
        tokens = jnp.asarray(tokens)
        length, n, v = tokens.shape[1], self.order, self.vocab_size
        terms = []
        for i in range(min(n - 1, length)):  # the first positions: order i + 1, the whole prefix as context
            table = self.conditional(i + 1).reshape(-1)
            terms.append(table[_flat_index(tokens[:, : i + 1], v)][:, None])
        if length >= n:
            grams = jnp.stack([tokens[:, m : length - n + 1 + m] for m in range(n)], axis=-1)
            terms.append(self.conditional(n).reshape(-1)[_flat_index(grams, v)])
        return jnp.concatenate(terms, axis=1)

    def log_prob(self, tokens) -> jax.Array:
        """log p(x) of each row (jit-able).

        Args:
          tokens: int (B, L) ids in [0, V).

        Returns:
          (B,) log-probabilities (nats).
        """
        return jnp.sum(self.token_log_probs(tokens), axis=1)

    def bits_per_token(self, tokens) -> jax.Array:
        """-sum log2 p / (B L) over all tokens of a (B, L) array (bits per character for text)."""
        return -jnp.mean(self.token_log_probs(tokens)) / jnp.log(2.0)

    def perplexity(self, tokens) -> jax.Array:
        """exp(-sum log p / (B L)) over all tokens of a (B, L) array; V for the uniform model."""
        return jnp.exp(-jnp.mean(self.token_log_probs(tokens)))


def fit(tokens, *, vocab_size: int, order: int = 2, k: float = 1.0) -> NGram:
    """Count the j-grams (j = 1..order) of token rows into an add-k n-gram model.

    Args:
      tokens: host integer ids in [0, vocab_size), (T,) one sequence or (B, L) rows (no n-gram
        crosses the end of a row).
      vocab_size: V >= 1.
      order: n >= 1 (1: unigram, 2: bigram, ...), with V^n <= 2^24.
      k: the pseudo-count, > 0.

    Returns:
      An `NGram` value whose counts are float arrays (float64 when x64 is on, else float32; counts
      are integers and exact up to 2^24 in float32).

    Raises:
      ValueError: for tokens of the wrong rank, dtype or range, or a bad vocab_size, order or k.
    """
    vocab_size = _checks.positive_int("vocab_size", vocab_size)
    order = _checks.positive_int("order", order)
    k = _checks.positive("k", k)
    if vocab_size**order > MAX_TABLE:
        raise ValueError(
            f"order must keep vocab_size**order <= {MAX_TABLE} (dense tables), got order={order} with "
            f"vocab_size={vocab_size} ({vocab_size**order} entries)"
        )
    _check_tokens("tokens", tokens, vocab_size, ndims=(1, 2))
    rows = np.atleast_2d(np.asarray(tokens, np.int64))
    counts = []
    for j in range(1, order + 1):
        table = np.zeros(vocab_size**j, np.float64)
        if rows.shape[1] >= j:
            grams = np.stack([rows[:, m : rows.shape[1] - j + 1 + m] for m in range(j)], axis=-1)
            flat = (grams * vocab_size ** np.arange(j - 1, -1, -1)).sum(-1).reshape(-1)
            table += np.bincount(flat, minlength=vocab_size**j)
        counts.append(jnp.asarray(table.reshape((vocab_size,) * j)))
    return NGram(tuple(counts), jnp.asarray(k))


def unigram_bits_per_token(train_tokens, eval_tokens, *, vocab_size: int, k: float = 1.0) -> float:
    """The unigram baseline: bits per token of `eval_tokens` under an add-k unigram fitted on
    `train_tokens` (-sum log2 p / (B L); log2 V for the uniform model).

    Args:
      train_tokens: host ids (T,) or (B, L) to fit on.
      eval_tokens: ids (B, L) to score.
      vocab_size: V.
      k: the pseudo-count, > 0.

    Returns:
      The bits per token as a float.
    """
    return float(fit(train_tokens, vocab_size=vocab_size, order=1, k=k).bits_per_token(eval_tokens))


@struct.dataclass(eq=False)
class NGramReward(Value):
    """r(x) = scale * log p(x) under an n-gram model, or scale * log p(x) / L with `per_token`.

    Attributes:
      model: the `NGram` (pytree: its counts are leaves).
      scale: the multiplier (leaf).
      per_token: whether to divide by the length L (static).
    """

    model: NGram
    scale: jax.Array
    per_token: bool = struct.field(pytree_node=False, default=False)

    def __call__(self, x, cond=None):
        del cond
        log_p = self.model.log_prob(x)
        if self.per_token:
            log_p = log_p / x.shape[1]
        return jnp.asarray(self.scale, log_p.dtype) * log_p


def ngram_reward(model: NGram, *, scale: float = 1.0, per_token: bool = False) -> NGramReward:
    """An n-gram model's log-likelihood as a steering reward `reward(x, cond=None) -> (B,)`.

    Args:
      model: a fitted `NGram`.
      scale: a finite multiplier (e.g. an inverse temperature).
      per_token: score log p(x) / L instead of log p(x).

    Returns:
      An `NGramReward` value (equal models and options give equal, hash-equal rewards).

    Raises:
      ValueError: if model is not an `NGram`, scale is not finite or per_token is not a bool.
    """
    if not isinstance(model, NGram):
        raise ValueError(f"model must be an NGram (from ngram.fit), got {type(model).__name__}")
    scale = _checks.finite("scale", scale)
    if not isinstance(per_token, bool):
        raise ValueError(f"per_token must be a bool, got {per_token!r}")
    return NGramReward(model, jnp.asarray(scale), per_token)
