r"""Golden seeds (Xu et al. 2024, "Good Seed Makes a Good Crop: Discovering Secret Seeds in
Text-to-Image Diffusion Models"): some seeds give reliably better samples across conditions.

A seed is an integer s; its noise is `jax.random.normal(jax.random.key(s), shape)` (threefry:
the same bits under `jit`, across runs and on any device). `score_seeds` generates every seed's
sample for each of a set of conditions and averages a verifier's scores; `rank_seeds` orders the
seeds best first, or in "diverse" mode greedily keeps only seeds whose features are less similar
than `max_similarity` (cosine) to every seed already kept; a `SeedBank` saves and loads the
ranking as JSON and hands out the noises of its best seeds, for sampling and for
`search.random_search(..., seed_bank=bank)`.

Scoring a large bank takes hours on a preemptible machine, so `score_seeds(..., progress=path)`
writes the chunks scored so far to `path` (atomically, after each chunk) and a rerun after a kill
continues from there, ending with the same bits as an uninterrupted run. The file is only used by a
run of the same seeds, chunk size, shape, conditions, generator and verifier (their options and
arrays); any other is refused, naming the file.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import _checks


@functools.partial(jax.jit, static_argnames=("shape", "dtype"))
def seed_noise(seeds, shape: tuple, dtype=jnp.float32):
    """(S, *shape) standard-normal noise, row i from `jax.random.key(seeds[i])`."""
    return jax.vmap(lambda s: jax.random.normal(jax.random.key(s), shape, dtype))(jnp.asarray(seeds, jnp.uint32))


class SeedBank(NamedTuple):
    """Seeds ranked best first with their scores; `noise(n, shape)` is the noise of the best n."""

    seeds: tuple
    scores: tuple
    description: str = ""

    def noise(self, n: int, shape: tuple, dtype=jnp.float32):
        """The standard-normal noise (n, *shape) of the best n seeds, each seed's the same as `seed_noise` gives.

        Raises:
          ValueError: if the bank holds fewer than n seeds."""
        n = _checks.positive_int("n", n)
        if n > len(self.seeds):
            raise ValueError(f"the bank holds {len(self.seeds)} seeds, asked for n={n}")
        return seed_noise(np.asarray(self.seeds[:n]), tuple(shape), dtype)

    def save(self, path) -> None:
        """Write the bank to `path` as JSON (seeds, scores, description)."""
        with open(path, "w") as f:
            json.dump({"seeds": list(self.seeds), "scores": list(self.scores), "description": self.description}, f,
                      indent=1)  # fmt: skip

    @classmethod
    def load(cls, path) -> SeedBank:
        """Read a bank written by `save`.

        Raises:
          ValueError: naming the file and the field, for a file that is not JSON or not an object with
            "seeds" (distinct integers in [0, 2**32)) and "scores" (numbers, one per seed) and an
            optional string "description". A missing file raises FileNotFoundError (naming it)."""
        with open(path) as f:
            try:
                data = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ValueError(f"{path}: not a JSON seed bank ({err})") from err
        return cls(*_parse_bank(path, data))


def _parse_bank(path, data) -> tuple[tuple, tuple, str]:
    """(seeds, scores, description) of a loaded bank's JSON `data`; a ValueError naming `path` and the field."""
    if not isinstance(data, dict) or "seeds" not in data or "scores" not in data:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: a seed bank must be a JSON object with 'seeds' and 'scores', got {keys}")
    seeds, scores, description = data["seeds"], data["scores"], data.get("description", "")
    if not isinstance(seeds, list) or not isinstance(scores, list):
        raise ValueError(f"{path}: seeds and scores must be lists, got seeds={type(seeds).__name__}, "
                         f"scores={type(scores).__name__}")  # fmt: skip
    for i, seed in enumerate(seeds):
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise ValueError(f"{path}: seeds[{i}] must be an integer in [0, 2**32), got {seed!r}")
    if len(set(seeds)) != len(seeds):
        repeated = sorted(s for s, n in collections.Counter(seeds).items() if n > 1)
        raise ValueError(f"{path}: seeds must be distinct, got repeated seeds {repeated[:8]}")
    for i, score in enumerate(scores):
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise ValueError(f"{path}: scores[{i}] must be a number, got {score!r}")
    if len(seeds) != len(scores):
        raise ValueError(f"{path}: seeds and scores must have one entry each per seed, got {len(seeds)} seeds "
                         f"and {len(scores)} scores")  # fmt: skip
    if not isinstance(description, str):
        raise ValueError(f"{path}: description must be a string, got {description!r}")
    return tuple(seeds), tuple(float(s) for s in scores), description


def _check_seeds(seeds):
    seeds = np.asarray(seeds)
    if seeds.ndim != 1 or seeds.size == 0 or not np.issubdtype(seeds.dtype, np.integer) or np.any(seeds < 0):
        raise ValueError(f"seeds must be a non-empty 1-D array of non-negative integers, got {seeds!r}")
    if np.any(seeds >= 2**32):
        raise ValueError("seeds must be < 2**32 (a threefry key holds 32 bits of seed here)")
    if np.unique(seeds).size != seeds.size:
        raise ValueError("seeds must be distinct")
    return seeds


def _tile(a, n):
    a = jnp.asarray(a)
    return jnp.tile(a, (n,) + (1,) * (a.ndim - 1))


def _fingerprint(*values) -> str:
    """SHA-256 of values' pytree structures (static options included; functions by name, as their
    addresses change from process to process) and every leaf's dtype, shape and bytes."""
    digest = hashlib.sha256()
    for value in values:
        leaves, treedef = jax.tree.flatten(value)
        digest.update(re.sub(r" at 0x[0-9a-f]+", "", repr(treedef)).encode())
        for leaf in leaves:
            if callable(leaf) and not hasattr(leaf, "dtype"):  # a plain function as verifier: by name
                digest.update(f"{getattr(leaf, '__module__', '')}.{getattr(leaf, '__qualname__', '')}".encode())
                continue
            leaf = np.asarray(leaf)
            digest.update(f"{leaf.dtype}{leaf.shape}".encode())
            digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()


def _load_progress(path, fingerprint: str):
    """The (scores, samples) chunks a `score_seeds` run saved to `path` ([] when there is no file)."""
    if not os.path.exists(path):
        return [], []
    try:
        with np.load(path, allow_pickle=False) as f:
            saved, counts = str(f["fingerprint"]), f["chunk_sizes"]
            scores, samples = np.asarray(f["scores"]), np.asarray(f["samples"])
    except Exception as err:  # a damaged file: never used, never overwritten
        raise ValueError(f"progress file {path} cannot be read ({type(err).__name__}: {err}); move it away to "
                         "score from the start") from err  # fmt: skip
    if saved != fingerprint:
        raise ValueError(f"progress file {path} belongs to another scoring run (other seeds, chunk, shape, "
                         "conditions, generator or verifier); pass another path or delete it")  # fmt: skip
    bounds = np.cumsum(counts)[:-1]
    return list(np.split(scores, bounds)), list(np.split(samples, bounds))


def _save_progress(path, fingerprint: str, scores, samples) -> None:
    """Write the chunks scored so far to `path` atomically (a temporary file, fsync, os.replace)."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, fingerprint=np.asarray(fingerprint), chunk_sizes=np.asarray([len(a) for a in scores]),
                 scores=np.concatenate(scores), samples=np.concatenate(samples))  # fmt: skip
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def score_seeds(generator, verifier: Callable, seeds, shape: tuple, *, cond=None, chunk: int | None = None,
                progress=None):  # fmt: skip
    """Mean verifier score of each seed over the conditions: (S,) scores and the (S, C, *shape)
    samples of a `search.Generator`.

    Args:
      generator: a `search.Generator` value (`ode_generator`, ...): its `fn(z, cond)` makes the samples.
      verifier: `verifier(x, cond) -> (N,)`; non-finite scores count as -inf.
      seeds: (S,) distinct integers in [0, 2**32).
      shape: the event shape of one noise.
      cond: the C conditions (leading axis C; None: C = 1, unconditional); each seed's noise is used
        for every condition.
      chunk: seeds generated at a time (default: all).
      progress: a file path, or None: after each chunk the scores and samples so far are written
        there atomically, and a run that finds the file continues after its last chunk (the module
        docstring says when a file is used). It is left in place at the end.

    Returns:
      (scores (S,), samples (S, C, *shape)).

    Raises:
      ValueError: for bad arguments, and for a progress file that cannot be read or belongs to
        another run (naming it).
    """
    if not callable(verifier):
        raise ValueError(f"verifier must be callable as verifier(x, cond) -> (N,), got {verifier!r}")
    seeds = _check_seeds(seeds)
    leading = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in jax.tree.leaves(cond)}
    if len(leading) > 1 or None in leading:
        raise ValueError(f"cond must be a pytree whose leaves share a leading axis C, got leading sizes {leading}")
    c = leading.pop() if leading else 1
    z = seed_noise(seeds, tuple(shape))
    chunk = len(seeds) if chunk is None else _checks.positive_int("chunk", chunk)
    if progress is not None:
        fingerprint = _fingerprint(seeds, chunk, tuple(shape), cond, generator, verifier)
        scores, samples = _load_progress(progress, fingerprint)
    else:
        scores, samples = [], []
    for i in range(chunk * len(scores), len(seeds), chunk):
        part = z[i : i + chunk]
        flat = jnp.repeat(part, c, axis=0)
        conds = None if cond is None else jax.tree.map(functools.partial(_tile, n=len(part)), cond)
        x, _ = generator.fn(flat, conds)
        s = verifier(x, conds).reshape(len(part), c)
        scores.append(jnp.mean(jnp.where(jnp.isfinite(s), s, -jnp.inf), axis=1))
        samples.append(x.reshape((len(part), c) + x.shape[1:]))
        if progress is not None:
            scores[-1], samples[-1] = np.asarray(scores[-1]), np.asarray(samples[-1])
            _save_progress(progress, fingerprint, scores, samples)
    return jnp.concatenate(scores), jnp.concatenate(samples)


def rank_seeds(seeds, scores, *, features=None, max_similarity: float | None = None, top: int | None = None,
               description: str = "") -> SeedBank:  # fmt: skip
    """Seeds sorted by score, best first (ties by seed order). With `features` (S, F) and
    `max_similarity`, the diverse ranking: walk the sorted seeds and keep one only if its cosine
    similarity to every kept seed is below max_similarity. `top`: keep at most this many."""
    seeds = _check_seeds(seeds)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != seeds.shape:
        raise ValueError(f"scores must have the seeds' shape {seeds.shape}, got {scores.shape}")
    order = np.argsort(-np.where(np.isnan(scores), -np.inf, scores), kind="stable")
    if max_similarity is not None:
        max_similarity = _checks.in_range("max_similarity", max_similarity, -1.0, 1.0)
        f = np.asarray(features, dtype=np.float64).reshape(len(seeds), -1) if features is not None else None
        if f is None:
            raise ValueError("max_similarity needs features (S, F) to compare seeds")
        unit = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        kept = []
        for i in order:
            if all(unit[i] @ unit[j] < max_similarity for j in kept):
                kept.append(i)
        order = np.asarray(kept)
    if top is not None:
        order = order[: _checks.positive_int("top", top)]
    return SeedBank(tuple(int(s) for s in seeds[order]), tuple(float(s) for s in scores[order]), description)


def golden_seeds(generator, verifier: Callable, seeds: Sequence[int], shape: tuple, *, cond=None,
                 top: int | None = None, max_similarity: float | None = None, chunk: int | None = None,
                 description: str = "", progress=None) -> SeedBank:  # fmt: skip
    """Score and rank a bank of seeds (see `score_seeds`, `rank_seeds`); in diverse mode the
    features are each seed's samples over the conditions, flattened. `progress`: a file where the
    scoring keeps its chunks, so a killed run continues (`score_seeds`)."""
    scores, samples = score_seeds(generator, verifier, seeds, shape, cond=cond, chunk=chunk, progress=progress)
    features = np.asarray(samples).reshape(len(seeds), -1) if max_similarity is not None else None
    return rank_seeds(seeds, np.asarray(scores), features=features, max_similarity=max_similarity, top=top,
                      description=description)  # fmt: skip
