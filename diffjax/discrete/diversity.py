"""How varied a set of token sequences is: mean pairwise Hamming distance and distinct n-grams."""

from __future__ import annotations

import numpy as np


def mean_hamming(tokens) -> float:
    """The mean fraction of positions at which two distinct sequences of the set differ, in [0, 1].

    Args:
      tokens: (N, L) token ids, N >= 2.

    Returns:
      The mean over the N (N - 1) / 2 pairs of (number of differing positions) / L.
    """
    x = np.asarray(tokens)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"tokens must be (N, L) with N >= 2, got shape {x.shape}")
    n = x.shape[0]
    differ = (x[:, None, :] != x[None, :, :]).mean(-1)
    return float(differ[np.triu_indices(n, 1)].mean())


def distinct_ngrams(tokens, n: int) -> float:
    """The fraction of the set's n-grams (over all sequences) that are distinct ("distinct-n").

    Args:
      tokens: (N, L) token ids with L >= n.
      n: the n-gram length, >= 1.

    Returns:
      (number of distinct n-grams) / (number of n-grams), in (0, 1].
    """
    x = np.asarray(tokens)
    if x.ndim != 2 or x.shape[1] < n or n < 1:
        raise ValueError(f"tokens must be (N, L) with L >= n >= 1, got shape {x.shape} and n={n}")
    grams = np.stack([x[:, i : x.shape[1] - n + 1 + i] for i in range(n)], axis=-1).reshape(-1, n)
    return len(np.unique(grams, axis=0)) / len(grams)
