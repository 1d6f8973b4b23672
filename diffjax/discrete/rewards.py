"""Rewards on token sequences for steering text: the presence (or absence) of given words.

A reward is a value called as `reward(x, cond=None) -> (N,)` on (N, L) int32 tokens (the mask id V
may appear in intermediate states and never matches a word). The n-gram log-likelihood reward is
`diffjax.discrete.ngram.ngram_reward`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffjax.arrays import Value


@struct.dataclass(eq=False)
class WordPresence(Value):
    """sign * (the number of the words that occur in x); build it with `word_presence`."""

    words: jax.Array  # (W, M) token ids, each word right-padded with -1
    sign: float = struct.field(pytree_node=False, default=1.0)

    def occurs(self, x):
        """(N, W) bool: word w occurs somewhere in sequence n."""
        w, m = self.words.shape
        length = x.shape[1]
        if m > length:
            return jnp.zeros((x.shape[0], w), bool)
        windows = jnp.stack([x[:, i : i + m] for i in range(length - m + 1)], axis=1)  # (N, P, M)
        pad = self.words < 0
        match = (windows[:, :, None, :] == self.words[None, None]) | pad[None, None]  # (N, P, W, M)
        return jnp.any(jnp.all(match, axis=-1), axis=1)

    def __call__(self, x, cond=None):
        del cond
        return self.sign * jnp.sum(self.occurs(x), axis=-1).astype(jnp.result_type(float))


def word_presence(words: Sequence[str], encode, *, absent: bool = False) -> WordPresence:
    """A reward counting which of `words` occur in a sequence (or, with `absent`, minus that count).

    Args:
      words: the words (strings), each at least one character.
      encode: maps a string to its token ids (e.g. `diffjax.data.text.encode`).
      absent: reward their absence instead: -1 per word present.

    Returns:
      A `WordPresence` value (the words' ids are its leaves).
    """
    if isinstance(words, str) or not words or not all(isinstance(w, str) and w for w in words):
        raise ValueError(f"words must be a non-empty sequence of non-empty strings, got {words!r}")
    ids = [np.asarray(encode(w), np.int32) for w in words]
    table = np.full((len(ids), max(len(i) for i in ids)), -1, np.int32)
    for row, i in enumerate(ids):
        table[row, : len(i)] = i
    return WordPresence(jnp.asarray(table), -1.0 if absent else 1.0)
