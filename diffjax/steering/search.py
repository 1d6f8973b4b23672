r"""Inference-time search over noises and paths (Ma et al. 2025, "Inference-Time Scaling for
Diffusion Models beyond Scaling Denoising Steps"; per-step noise search as Ramesh & Mardani 2025).

Each search spends network evaluations to find, per condition, the sample a verifier scores best;
its output is a search result, not a sample of a distribution. Every search is compiled, works on B
conditions at once, and returns a `SearchResult` with the NFE spent per condition, the best score
after each round and what it chose, so a result can be reproduced:

- `random_search`: best-of-N over the initial noise z ~ N(0, I) (or over a golden-seed bank);
- `zero_order_search`: a pivot noise and neighbours n' = |n| (c u + sqrt(1 - c^2) w), u = n/|n|,
  w a random unit vector orthogonal to u, so |n'| = |n| and cos(n', n) = c; each round scores the
  pivot and its neighbours and the pivot moves only to a better neighbour;
- `path_search`: N paths run to a grid index; then, repeatedly, M branches per path are noised
  forward exactly by `forward` steps and solved back by `backward` steps, scored on x0-hat, and the
  best N kept; at the end the best path is returned;
- `noise_search`: at each step of a stochastic solver (DDIM(eta) by default), C candidates for the
  injected noise, each scored on the next x0-hat (the network call the next step needs anyway),
  the best kept.

Generators map noise to samples (`fn(z, cond) -> (x, nfe)`): `ode_generator(solver, den, ts)` for a
deterministic solver (the initial noise is then the whole randomness; a value whose weights are
data), `Generator(fn)` for any function, `identity_generator` for tests. Verifiers and solvers are
values too, so a search compiles once per configuration and shapes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffjax import _checks, gaussian
from diffjax.arrays import as_pytree, broadcast_to_x, per_particle
from diffjax.sampling import check_denoiser, check_grid, check_inputs, check_steps, run_steps, sample
from diffjax.solvers import ddim
from diffjax.solvers.base import Solver, check_solver, check_start_prediction
from diffjax.solvers.time_shift import Reuse


@struct.dataclass
class Generator:
    """A generator from a plain function: `fn(z, cond) -> (x, nfe)` maps standard-normal noise z
    (N, *event) to samples (N, *event) and the network evaluations each cost, deterministically in z.
    Hashed by the function's identity: build it once. `ODEGenerator` is the value for samplers."""

    function: Callable = struct.field(pytree_node=False)

    def fn(self, z, cond):
        """`function(z, cond)`: samples and the NFE they cost."""
        return self.function(z, cond)


@struct.dataclass
class ODEGenerator:
    """`sample(solver, denoiser, timesteps, key(0), sigma_T z)`: a deterministic sampler as a
    generator, a value whose denoiser parameters and grid are data (new weights never recompile).
    Build it with `ode_generator`."""

    solver: Solver
    denoiser: Any
    timesteps: jax.Array
    sigma_T: jax.Array  # sigma at timesteps[0], computed once on the host (the same bits everywhere)

    def fn(self, z, cond):
        """The deterministic sampler's output from start noise sigma_T z, and its NFE."""
        x, info = sample(self.solver, self.denoiser, self.timesteps, jax.random.key(0), self.sigma_T * z, cond=cond)
        return x, info.nfe


class SearchResult(NamedTuple):
    """What a search returns (`random_search`, `zero_order_search`, `path_search`; Ma et al. 2025): the
    best sample per condition, its score and noise, the best score after each round, the network calls
    per condition and the choices made. For token generators x is int tokens of another shape than the
    noise."""

    x: jax.Array  # (B, *event) the best sample per condition
    score: jax.Array  # (B,) its verifier score
    noise: jax.Array  # (B, *event) the noise it came from (path_search: its path's start)
    trace: jax.Array  # (rounds, B) the best score after each round
    nfe: jax.Array  # network evaluations spent per condition
    choices: jax.Array  # what was kept: per round, the candidate index (B,) or kept branches (B, N)


def ode_generator(solver: Solver, denoiser, timesteps) -> ODEGenerator:
    """A generator that samples with `solver` from sigma_T z along `timesteps` with a fixed key.

    Args:
      solver: a deterministic solver, so that the noise z is all the randomness.
      denoiser: the model (its parameters are data of the generator).
      timesteps: the grid, noise to data.

    Returns:
      An `ODEGenerator` value: searches compile once per solver and shapes, whatever the weights.
    """
    check_solver("solver", solver)
    check_denoiser(denoiser)
    check_grid(timesteps)
    _checks.grid_on(denoiser.schedule, timesteps)
    check_start_prediction(denoiser, timesteps)
    grid = jnp.asarray(timesteps)
    return ODEGenerator(solver, denoiser, grid, denoiser.schedule.sigma(grid[0]))


def _identity(z, cond):
    del cond
    return z, jnp.int32(0)


identity_generator = Generator(_identity)


def _scores(verifier, x, cond):
    s = verifier(x, cond)
    _checks.output_shape("verifier", s, x.shape[0])  # static shapes: raised while tracing
    return jnp.where(jnp.isfinite(s), s, -jnp.inf)


def _evaluate(generator, verifier, z, cond):
    """Samples and scores of candidates z (B, N, *event): ((B, N, *event), (B, N), nfe per sample)."""
    b, n = z.shape[:2]
    flat = z.reshape((b * n,) + z.shape[2:])
    c = per_particle(cond, n)
    x, nfe = generator.fn(flat, c)
    return x.reshape(z.shape[:2] + x.shape[1:]), _scores(verifier, x, c).reshape(b, n), jnp.asarray(nfe, jnp.int32)


def _no_samples(generator, noise, cond):
    """Zeros of the generator's output for noise (B, *noise_event): its shape and dtype, which need not
    be the noise's (token generators map (T, L) noise to (L,) int32 sequences)."""
    out = jax.eval_shape(lambda z: generator.fn(z, per_particle(cond, 1))[0], noise)
    return jnp.zeros(out.shape, out.dtype)


def _pick(a, index):
    """a (B, N, ...) at index (B,) -> (B, ...)."""
    return jnp.take_along_axis(a, index.reshape(index.shape + (1,) * (a.ndim - 1)), axis=1)[:, 0]


def _check_common(generator, verifier, key, shape, cond=None):
    if not callable(getattr(generator, "fn", None)):
        raise ValueError(f"generator must be a search.Generator or ODEGenerator (with .fn(z, cond)), got {generator!r}")
    if not callable(verifier):
        raise ValueError(f"verifier must be callable as verifier(x, cond) -> (N,), got {verifier!r}")
    _checks.typed_key("key", key)
    shape = _checks.array_shape("shape", shape)
    if len(shape) < 2:
        raise ValueError(f"shape must be (B, *event) with positive ints, got {shape!r}")
    _checks.batch("cond", cond, shape[0], other="shape")


@functools.partial(jax.jit, static_argnames=("shape", "num_candidates", "rounds"))
def _random_search(generator, verifier, key, shape, num_candidates, rounds, cond, bank_noise):
    b, event = shape[0], shape[1:]

    def round_(best, r):
        if bank_noise is None:
            z = jax.random.normal(jax.random.fold_in(key, r), (b, num_candidates) + event)
        else:
            start = r * num_candidates
            z = jnp.broadcast_to(jax.lax.dynamic_slice_in_dim(bank_noise, start, num_candidates)[None],
                                 (b, num_candidates) + event)  # fmt: skip
        x, s, nfe = _evaluate(generator, verifier, z, cond)
        i = jnp.argmax(s, axis=1)
        found = _pick(s, i) > -jnp.inf  # some candidate scored finite (non-finite scores are -inf)
        # a condition with no finite score yet keeps round 0's first candidate, flagged by score -inf
        better = (_pick(s, i) > best[1]) | ((r == 0) & ~found)
        keep = lambda new, old: jnp.where(broadcast_to_x(better, new), new, old)  # noqa: E731
        best = (keep(_pick(x, i), best[0]), keep(_pick(s, i), best[1]), keep(_pick(z, i), best[2]), nfe)
        return best, (best[1], jnp.where(found, i + r * num_candidates, -1))

    dtype = jnp.result_type(float)
    no_noise = jnp.zeros(shape, dtype)
    init = (_no_samples(generator, no_noise, cond), jnp.full(b, -jnp.inf, dtype), no_noise, jnp.int32(0))
    (x, score, noise, nfe), (trace, chosen) = jax.lax.scan(round_, init, jnp.arange(rounds))
    return SearchResult(x, score, noise, trace, rounds * num_candidates * nfe, chosen)


def random_search(generator: Generator, verifier: Callable, key, shape, *, num_candidates: int, rounds: int = 1,
                  cond=None, seed_bank=None) -> SearchResult:  # fmt: skip
    """Best of `rounds` x `num_candidates` initial noises per condition; shape = (B, *event).
    `seed_bank` (a `seeds.SeedBank`): the candidates are its best seeds, in rank order, the same
    for every condition, instead of fresh noise. `choices` holds the winning candidate's index
    (among rounds x num_candidates) per round.

    Non-finite verifier scores (NaN, +-inf) count as -inf. A round in which no candidate of a condition
    scored finite records the choice -1 for it (not index 0), and a condition none of whose candidates
    ever scored finite (e.g. an all-NaN verifier) is flagged by `score` = -inf, `choices` all -1; its
    `x` and `noise` are then the first candidate's, unranked, not a best one."""
    _check_common(generator, verifier, key, shape, cond)
    num_candidates = _checks.positive_int("num_candidates", num_candidates)
    rounds = _checks.positive_int("rounds", rounds)
    bank_noise = None
    if seed_bank is not None:
        needed = rounds * num_candidates
        if len(seed_bank.seeds) < needed:
            raise ValueError(f"seed_bank has {len(seed_bank.seeds)} seeds, the search needs {needed}")
        bank_noise = seed_bank.noise(needed, tuple(shape[1:]))
    return _random_search(generator, as_pytree(verifier), key, tuple(shape), num_candidates, rounds, cond, bank_noise)


def neighbours(key, pivot, num: int, cosine: float):
    """`num` noises per row of pivot (B, *event) with the pivot's norm at cosine `cosine` to it:
    (B, num, *event)."""
    b = pivot.shape[0]
    flat = pivot.reshape(b, 1, -1)
    norm = jnp.linalg.norm(flat, axis=-1, keepdims=True)
    u = flat / norm
    w = jax.random.normal(key, (b, num, flat.shape[-1]), pivot.dtype)
    w = w - jnp.sum(w * u, axis=-1, keepdims=True) * u
    w = w / jnp.linalg.norm(w, axis=-1, keepdims=True)
    n = norm * (cosine * u + jnp.sqrt(1.0 - cosine**2) * w)
    return n.reshape((b, num) + pivot.shape[1:])


@functools.partial(jax.jit, static_argnames=("rounds", "num_neighbors"))
def _zero_order(generator, verifier, key, pivot, rounds, num_neighbors, cosine, cond):
    def round_(carry, r):
        pivot, _ = carry
        candidates = jnp.concatenate([pivot[:, None], neighbours(jax.random.fold_in(key, r), pivot, num_neighbors,
                                                                 cosine)], axis=1)  # fmt: skip
        x, s, nfe = _evaluate(generator, verifier, candidates, cond)
        i = jnp.argmax(s, axis=1)  # 0 (the pivot) unless a neighbour is strictly better
        return (_pick(candidates, i), (_pick(x, i), _pick(s, i), nfe)), (_pick(s, i), i)

    b = pivot.shape[0]
    init = (pivot, (_no_samples(generator, pivot, cond), jnp.full(b, -jnp.inf, pivot.dtype), jnp.int32(0)))
    (pivot, (x, score, nfe)), (trace, chosen) = jax.lax.scan(round_, init, jnp.arange(rounds))
    return SearchResult(x, score, pivot, trace, rounds * (num_neighbors + 1) * nfe, chosen)


def zero_order_search(generator: Generator, verifier: Callable, key, shape, *, rounds: int, num_neighbors: int = 4,
                      cosine: float = 0.95, cond=None, pivot=None) -> SearchResult:  # fmt: skip
    """Zero-order search from `pivot` (default N(0, I) noise of `shape` = (B, *event)): NFE =
    rounds x (num_neighbors + 1) x the generator's NFE. `choices`: per round, 0 when the pivot
    stayed, else the neighbour it moved to."""
    _check_common(generator, verifier, key, shape, cond)
    rounds = _checks.positive_int("rounds", rounds)
    num_neighbors = _checks.positive_int("num_neighbors", num_neighbors)
    cosine = _checks.in_range("cosine", cosine, -1.0, 1.0)
    key_pivot, key_search = jax.random.split(key)
    if pivot is None:
        pivot = jax.random.normal(key_pivot, tuple(shape))
    elif jnp.shape(pivot) != tuple(shape):
        raise ValueError(f"pivot must have shape {tuple(shape)}, got {jnp.shape(pivot)}")
    else:
        _checks.start_noise("pivot", pivot)
        if _checks.is_concrete(pivot) and np.any(np.all(np.asarray(pivot).reshape(shape[0], -1) == 0, axis=1)):
            raise ValueError("pivot must have a nonzero noise per condition (its neighbours keep its norm), got a "
                             "row of zeros")  # fmt: skip
    return _zero_order(generator, as_pytree(verifier), key_search, jnp.asarray(pivot), rounds, num_neighbors, cosine,
                       cond)  # fmt: skip


def _phases(steps, start, forward, backward):
    """Grid index segments (from, to) of the path search after `start`: back `forward`, down `backward`."""
    phases, i = [], start
    while i < steps:
        up = i - forward
        phases.append((up, min(up + backward, steps)))
        i = phases[-1][1]
    return tuple(phases)


@functools.partial(jax.jit, static_argnames=("shape", "num_paths", "branches", "phases", "start"))
def _path_search(solver, denoiser, verifier, timesteps, key, shape, num_paths, branches, phases, start, cond):
    b, event, n, m = shape[0], shape[1:], num_paths, branches
    keys = jax.random.split(key, len(phases) + 2)
    z = jax.random.normal(keys[0], (b * n,) + event)
    den_paths = denoiser if cond is None else denoiser.replace(cond=per_particle(cond, n))
    den_branches = denoiser if cond is None else denoiser.replace(cond=per_particle(cond, n * m))
    x, info = sample(solver, den_paths, timesteps[: start + 1], keys[1], denoiser.schedule.sigma(timesteps[0]) * z)
    nfe = n * info.nfe
    roots = jnp.arange(b * n).reshape(b, n) % n
    trace, kept = [], []
    for p, (up, down) in enumerate(phases):
        key_noise, key_solve = jax.random.split(keys[p + 2])
        t_here = timesteps[phases[p - 1][1]] if p else timesteps[start]
        branched = jnp.repeat(x, m, axis=0)  # (B N M, *event): path-major
        branched = gaussian.forward(denoiser.schedule, branched, t_here, timesteps[up]).sample(key_noise)
        branched, info = sample(solver, den_branches, timesteps[up : down + 1], key_solve, branched)
        c = per_particle(cond, n * m)
        if down == timesteps.shape[0] - 1:
            scored = branched
        else:
            scored = den_branches(branched, timesteps[down]).x0
            nfe = nfe + n * m
        s = _scores(verifier, scored, c).reshape(b, n * m)
        nfe = nfe + n * m * info.nfe
        top = jnp.argsort(-s, axis=1, stable=True)[:, :n]  # (B, N) kept branches
        flat = (top + (jnp.arange(b) * n * m)[:, None]).reshape(b * n)
        x = branched[flat]
        roots = jnp.take_along_axis(jnp.repeat(roots, m, axis=1), top, axis=1)
        trace.append(jnp.take_along_axis(s, top[:, :1], axis=1)[:, 0])
        kept.append(top)
    best = jnp.zeros(b, jnp.int32)  # the top kept path (sorted best first)
    x = x.reshape((b, n) + event)
    root = _pick(roots, best)
    z = z.reshape((b, n) + event)
    return SearchResult(_pick(x, best), jnp.stack(trace)[-1], _pick(z, root), jnp.stack(trace), nfe, jnp.stack(kept))


def path_search(solver: Solver, denoiser, timesteps, key, verifier: Callable, shape, *, num_paths: int,
                branches: int, start: int, forward: int, backward: int, cond=None) -> SearchResult:  # fmt: skip
    """Search over paths along `timesteps` (use a deterministic solver) for shape = (B, *event):
    `num_paths` paths run to grid index `start`; each phase noises every path's `branches` copies
    forward exactly to index i - `forward` and solves them to index i - forward + `backward`
    (backward > forward), scores them on x0-hat (one more network call each; on x itself at the
    grid's end) and keeps the best `num_paths`, until the end of the grid. Returns the best final
    path; `choices` (phases, B, num_paths) are the kept branch indices (path-major, path j's
    branches at j * branches ...). The same key reproduces the same result."""
    check_solver("solver", solver)
    check_denoiser(denoiser)
    check_grid(timesteps)
    _checks.grid_on(denoiser.schedule, timesteps)
    check_start_prediction(denoiser, timesteps)
    if not callable(verifier):
        raise ValueError(f"verifier must be callable as verifier(x, cond) -> (N,), got {verifier!r}")
    _checks.typed_key("key", key)
    shape = _checks.array_shape("shape", shape)
    if len(shape) < 2:
        raise ValueError(f"shape must be (B, *event) with positive ints, got {shape!r}")
    _checks.batch("cond", cond, shape[0], other="shape")
    _checks.labels("cond", cond, _checks.num_classes_of(denoiser))
    num_paths = _checks.positive_int("num_paths", num_paths)
    branches = _checks.positive_int("branches", branches)
    forward = _checks.positive_int("forward", forward)
    backward = _checks.positive_int("backward", backward)
    if backward <= forward:
        raise ValueError(f"backward must exceed forward to make progress, got forward={forward}, backward={backward}")
    steps = jnp.shape(timesteps)[0] - 1
    if not (isinstance(start, int) and forward <= start < steps):
        raise ValueError(f"start must be a grid index with forward={forward} <= start < {steps}, got {start!r}")
    return _path_search(solver, denoiser, as_pytree(verifier), jnp.asarray(timesteps), key, tuple(shape), num_paths,
                        branches,
                        _phases(steps, start, forward, backward), start, cond)  # fmt: skip


@functools.partial(jax.jit, static_argnames=("num_candidates",))
def _noise_search(solver, denoiser, verifier, timesteps, key, x_T, num_candidates, cond, forced):
    c, n = num_candidates, x_T.shape[0]
    steps = timesteps.shape[0] - 1
    den = denoiser if cond is None else denoiser.replace(cond=cond)
    den_c = denoiser if cond is None else denoiser.replace(cond=per_particle(cond, c))
    cond_c = per_particle(cond, c)
    fan = jnp.repeat(jnp.arange(n), c)  # row j c + m: candidate m of sample j

    def body(carry, i):
        state, pred = carry
        t, s = timesteps[i], timesteps[i + 1]
        fanned = solver.gather(state, fan)
        reuse = Reuse(den_c, fanned.x, t, jax.tree.map(lambda a: jnp.repeat(a, c, axis=0), pred))
        candidates, info = solver.step_at(i, steps)(fanned, jax.random.fold_in(key, i), t, s, reuse)
        p = den_c(candidates.x, s)  # scores the candidates; the next step reuses the chosen one's
        scores = _scores(verifier, jnp.where(i == steps - 1, candidates.x, p.x0), cond_c).reshape(n, c)
        pick = jnp.argmax(scores, axis=1) if forced is None else forced[i]
        chosen = pick + jnp.arange(n) * c
        nfe = c * (info.nfe - int(reuse.reused)) + c
        return (solver.gather(candidates, chosen), jax.tree.map(lambda a: a[chosen], p)), (_pick(scores, pick), pick,
                                                                                           nfe)  # fmt: skip

    carry = (solver.init(x_T, timesteps), den(x_T, timesteps[0]))
    (state, _), (trace, choices, nfe) = run_steps(solver, body, carry, steps)
    return SearchResult(state.x, trace[-1], x_T, trace, 1 + jnp.sum(nfe), choices)


def noise_search(denoiser, timesteps, key, x_T, verifier: Callable, *, num_candidates: int, eta: float = 1.0,
                 solver: Solver | None = None, cond=None, choices=None) -> SearchResult:  # fmt: skip
    """Search over the noise each step injects (Ramesh & Mardani 2025's per-step noise search): from
    x_T (B, *event), at every step draw `num_candidates` next states with the solver's noise and keep
    the one the verifier scores best on its next x0-hat (the network call the next step makes anyway,
    reused; on the sample itself at the last step).

    Args:
      denoiser: the model.
      timesteps: the grid, noise to data.
      key: a typed key.
      x_T: (B, *event) start.
      verifier: `verifier(x, cond) -> (N,)`, higher is better (any reward; a pytree value or a function).
      num_candidates: C, candidates per step.
      eta: DDIM's eta when `solver` is None (the default solver is `ddim(eta)`).
      solver: any stochastic solver (others raise a ValueError naming them); its state is fanned out
        to the C candidates with `Solver.gather`.
      cond: the condition (B leading).
      choices: (steps, B) replays a result's `choices` exactly (same key).

    Returns:
      A `SearchResult`; NFE per condition = 1 + steps x C for a one-evaluation solver (C x its NFE
      per step, less the reused evaluation, plus C scorings).
    """
    check_denoiser(denoiser)
    check_grid(timesteps)
    if not callable(verifier):
        raise ValueError(f"verifier must be callable as verifier(x, cond) -> (N,), got {verifier!r}")
    _checks.typed_key("key", key)
    check_inputs(denoiser, timesteps, x_T, cond)
    num_candidates = _checks.positive_int("num_candidates", num_candidates)
    if solver is None:
        solver = ddim(_checks.in_range("eta", eta, 0.0, 1.0))
    check_solver("solver", solver)
    if not solver.stochastic:
        raise ValueError(f"solver must be stochastic for noise search (it picks among its noises), got {solver!r}")
    check_steps(solver, timesteps)
    steps = jnp.shape(timesteps)[0] - 1
    if choices is not None and jnp.shape(choices) != (steps, jnp.shape(x_T)[0]):
        raise ValueError(f"choices must have shape (steps, B) = {(steps, jnp.shape(x_T)[0])}, got {jnp.shape(choices)}")
    if choices is not None and _checks.is_concrete(choices):
        picked = np.asarray(choices)
        if not np.issubdtype(picked.dtype, np.integer) or np.any((picked < 0) | (picked >= num_candidates)):
            raise ValueError(f"choices must hold candidate indices in [0, num_candidates={num_candidates}), "
                             f"got {picked.ravel()[:8].tolist()} (dtype {picked.dtype})")  # fmt: skip
    forced = None if choices is None else jnp.asarray(choices, jnp.int32)
    return _noise_search(solver, denoiser, as_pytree(verifier), jnp.asarray(timesteps), key, jnp.asarray(x_T),
                         num_candidates, cond, forced)  # fmt: skip
