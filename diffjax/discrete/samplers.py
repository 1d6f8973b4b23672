r"""Samplers of masked diffusion: ancestral (with caching), first-hitting, noise removal.

Ancestral step t -> s (MDLM `_ddpm_update`, MD4 `ancestral_sample_step`): unmasked tokens are
copied; a masked token stays masked with probability (1 - alpha_s)/(1 - alpha_t) and otherwise
becomes v with probability mu_theta(v | z_t). The V + 1 log-weights
[log mu + log((alpha_s - alpha_t)/(1 - alpha_t)), log((1 - alpha_s)/(1 - alpha_t))] are sampled with
`jax.random.categorical` in log space (not float32 Gumbel on probabilities, which lowers the
effective temperature; Zheng et al. 2024). `temperature`, `top_k` and `top_p` reshape mu_theta
before the draw. After the last step, `noise_removal` replaces any mask left by the argmax of
mu_theta (one more network call, MDLM and MD4 both do this).

Caching (MDLM `ddpm_cache`): when no token of the whole batch changed in a step and the denoiser is
time-agnostic, the next step reuses mu_theta; one batch-level `lax.cond`, NFE counted. Under
the same keys the cached and uncached samplers give bit-identical samples. With a log-linear
schedule on a uniform grid ending at t_end, E[calls] = 1 + (T - 1)[1 - (1 - (1 - t_end)/T)^{BL}].

First hitting (Zheng et al. 2024, arXiv 2409.02908; formula derived in
`references/anchors-inverse-discrete.md` §9): with n tokens masked at time t the next unmasking
time tau solves 1 - alpha_tau = (1 - alpha_t) u^{1/n}, u ~ U(0, 1); one uniformly chosen masked
position is drawn from mu_theta(. | z, tau). Exactly L calls from a fully masked start.

Every sampler runs as one `lax.scan` inside one `jit` (`diffjax.sampling.run_steps`).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffjax import _checks
from diffjax.discrete.process import check_denoiser, check_tokens
from diffjax.sampling import SampleInfo, run_steps
from diffjax.solvers.base import Solver, StepInfo, solver_value, take


def uniform_grid(num_steps: int, *, t_start: float = 1.0, t_end: float = 1e-5):
    """MDLM's grid linspace(t_start, t_end, T + 1) (default t_end = 1e-5)."""
    num_steps = _checks.positive_int("num_steps", num_steps)
    t_end = _checks.in_range("t_end", t_end, 0.0, 1.0)
    t_start = _checks.in_range("t_start", t_start, 0.0, 1.0)
    _checks.less("t_end", t_end, "t_start", t_start)
    return jnp.linspace(t_start, t_end, num_steps + 1, dtype=jnp.result_type(float))


def cosine_grid(num_steps: int):
    """MD4's cosine sampling grid t_j = cos(pi/2 j/T), j = 0..T (from 1 to 0)."""
    num_steps = _checks.positive_int("num_steps", num_steps)
    j = jnp.arange(num_steps + 1, dtype=jnp.result_type(float))
    return jnp.cos(0.5 * jnp.pi * j / num_steps).at[-1].set(0.0)


def reshape_probs(log_probs, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """Temperature, then top-k (k > 0), then nucleus top-p (< 1) on log-probabilities (..., V); renormalised.

    One-hot rows (unmasked positions under SUBS) stay one-hot.
    """
    out = log_probs / temperature if temperature != 1.0 else log_probs
    if top_k:
        kth = jax.lax.top_k(out, top_k)[0][..., -1:]
        out = jnp.where(out >= kth, out, -jnp.inf)
    if top_p < 1.0:
        sorted_lp = -jnp.sort(-out, axis=-1)
        probs = jax.nn.softmax(sorted_lp, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each sorted entry
        kept = jnp.where(before < top_p, sorted_lp, jnp.inf)
        threshold = jnp.min(kept, axis=-1, keepdims=True)
        out = jnp.where(out >= threshold, out, -jnp.inf)
    return jax.nn.log_softmax(out, axis=-1)


class TokenState(NamedTuple):
    """Ancestral sampler state: tokens, the cached log mu (empty unless caching), whether the cache
    is valid for x, and the network calls so far."""

    x: jax.Array  # (B, L) int32, mask id V
    cache: jax.Array  # (B, L, V) or (0,)
    valid: jax.Array  # bool scalar
    nfe: jax.Array  # int32 scalar


def reverse_log_weights(log_mu, alpha_t, alpha_s):
    """The V + 1 log-probabilities (..., V + 1) of a masked token's next value in the exact reverse
    step t -> s: v with (alpha_s - alpha_t)/(1 - alpha_t) mu(v), the mask (last) with (1 - alpha_s)/(1 - alpha_t)."""
    dtype = log_mu.dtype
    alpha_t, alpha_s = jnp.asarray(alpha_t, dtype), jnp.asarray(alpha_s, dtype)
    log_denom = jnp.log1p(-alpha_t)
    log_stay = jnp.log1p(-alpha_s) - log_denom
    log_move = jnp.log(alpha_s - alpha_t) - log_denom
    return jnp.concatenate([log_mu + log_move, jnp.broadcast_to(log_stay, log_mu.shape[:-1] + (1,))], axis=-1)


def ancestral_update(key, z, log_mu, alpha_t, alpha_s):
    """One exact reverse step t -> s of the masked process: z_s (B, L) from z_t and log mu (B, L, V)."""
    draw = jax.random.categorical(key, reverse_log_weights(log_mu, alpha_t, alpha_s), axis=-1).astype(z.dtype)
    return jnp.where(z == log_mu.shape[-1], draw, z)


def ancestral_update_from_uniforms(u, z, log_mu, alpha_t, alpha_s):
    """The same step with the randomness given: masked token l takes the value whose cumulative
    probability first exceeds u_l (inverse CDF; u (B, L) uniform on [0, 1)). The same law as
    `ancestral_update`; a deterministic map from u, which is what a search over noises needs."""
    cdf = jnp.cumsum(jax.nn.softmax(reverse_log_weights(log_mu, alpha_t, alpha_s), axis=-1), axis=-1)
    vocab_size = log_mu.shape[-1]
    draw = jnp.minimum(jnp.sum(cdf <= u[..., None], axis=-1), vocab_size).astype(z.dtype)
    return jnp.where(z == vocab_size, draw, z)


@solver_value
class Ancestral(Solver):
    """The exact ancestral sampler of masked diffusion (build it with `ancestral`)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    caching: bool = False

    @property
    def order(self) -> float:
        return 1.0

    @property
    def stochastic(self) -> bool:
        return True

    @property
    def token_states(self) -> bool:
        return True

    def init(self, x, timesteps, vocab_size: int = 0, dtype=None):
        del timesteps
        if self.caching and not vocab_size:
            raise ValueError("an ancestral(caching=True) sampler needs init(..., vocab_size=V) for its cache")
        dtype = dtype or jnp.result_type(float)
        cache = jnp.zeros(x.shape + (vocab_size,) if self.caching else (0,), dtype)
        return TokenState(x, cache, jnp.asarray(False), jnp.asarray(0, jnp.int32))

    def gather(self, state, ancestors):
        """The tokens (and cached predictions) of particle `ancestors[j]`; the cache is marked stale
        (a resampled batch has changed), the call count kept."""
        cache = take(state.cache, ancestors) if self.caching else state.cache
        return TokenState(take(state.x, ancestors), cache, jnp.asarray(False), state.nfe)

    def _log_mu(self, state, t, denoise):
        if not self.caching:
            return denoise(state.x, t).astype(state.cache.dtype), jnp.asarray(1, jnp.int32)
        log_mu = jax.lax.cond(state.valid, lambda: state.cache, lambda: denoise(state.x, t).astype(state.cache.dtype))
        return log_mu, 1 - state.valid.astype(jnp.int32)

    def step(self, state, key, t, t_next, denoise):
        log_mu, nfe = self._log_mu(state, t, denoise)
        probs = reshape_probs(log_mu, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        sched = denoise.schedule
        x = ancestral_update(key, state.x, probs, sched.alpha(t), sched.alpha(t_next))
        cache = log_mu if self.caching else state.cache
        valid = jnp.all(x == state.x)
        return TokenState(x, cache, valid, state.nfe + nfe), StepInfo(nfe, log_mu)


def ancestral(*, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, caching: bool = False) -> Ancestral:
    """The exact ancestral sampler of masked diffusion (MDLM `ddpm` / `ddpm_cache`, MD4 `ancestral`).

    Args:
      temperature: divides log mu_theta before the draw; > 0 (1 = exact).
      top_k: keep the k most likely tokens (0 = all).
      top_p: keep the smallest set of tokens with mass >= top_p (1 = all; MD4 offers 0.98).
      caching: reuse mu_theta when no token of the batch changed (time-agnostic denoisers only).

    Returns:
      An `Ancestral` sampler value (equal options compile once).
    """
    temperature = _checks.positive("temperature", temperature)
    top_k = 0 if top_k == 0 else _checks.positive_int("top_k", top_k)
    top_p = _checks.finite("top_p", top_p)
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p!r}")
    if not isinstance(caching, bool):
        raise ValueError(f"caching must be True or False, got {caching!r}")
    return Ancestral(temperature, top_k, top_p, caching)


def _noise_removal(x, log_mu):
    vocab_size = log_mu.shape[-1]
    return jnp.where(x == vocab_size, jnp.argmax(log_mu, axis=-1).astype(x.dtype), x)


@functools.partial(jax.jit, static_argnames=("noise_removal",))
def _sample(sampler, denoiser, timesteps, key, z, noise_removal):
    num_steps = timesteps.shape[0] - 1
    keys = jax.random.split(key, num_steps)
    state = sampler.init(z, timesteps, denoiser.vocab_size)

    def body(state, i):
        return sampler.step_at(i, num_steps)(state, keys[i], timesteps[i], timesteps[i + 1], denoiser)[0], None

    state, _ = run_steps(sampler, body, state, num_steps)
    x, nfe = state.x, state.nfe
    if noise_removal:
        x = _noise_removal(x, denoiser(x, timesteps[-1]))
        nfe = nfe + 1
    return x, SampleInfo(nfe=nfe)


def sample(sampler: Ancestral, denoiser, timesteps, key, z, *, noise_removal: bool = True):
    """Run the ancestral sampler from tokens z along `timesteps` (from noise to data).

    Args:
      sampler: an `ancestral(...)` value.
      denoiser: a masked-diffusion denoiser `den(z, t) -> log mu (B, L, V)` with `.schedule`,
        `.vocab_size` and, for caching, `.time_agnostic` True.
      timesteps: decreasing grid (`uniform_grid`, `cosine_grid`); only its length is a shape.
      key: a typed key, split once per step.
      z: start tokens (B, L): the mask id V where free, fixed tokens (a prompt) elsewhere.
      noise_removal: argmax any mask left after the last step (one more call).

    Returns:
      (tokens (B, L), SampleInfo(nfe)): nfe counts network calls (cached steps excluded).
    """
    if not isinstance(sampler, Ancestral):
        raise ValueError(f"sampler must be an ancestral(...) value, got {sampler!r}")
    check_denoiser("denoiser", denoiser)
    if sampler.caching and not getattr(denoiser, "time_agnostic", False):
        raise ValueError(f"caching needs a time-agnostic denoiser (denoiser.time_agnostic True), got {denoiser!r}")
    _checks.grid(timesteps)
    _checks.typed_key("key", key)
    check_tokens("z", z, denoiser.vocab_size, allow_mask=True)
    return _sample(sampler, denoiser, jnp.asarray(timesteps), key, jnp.asarray(z, jnp.int32), bool(noise_removal))


@struct.dataclass
class TokenGenerator:
    """The ancestral sampler as a deterministic map from standard-normal noise to token sequences, for
    the searches of `diffjax.steering.search` (`random_search`, `zero_order_search`, golden seeds).
    Build it with `generator`.

    `fn(noise, cond)`: noise (N, T, L) ~ N(0, I) drives step i through u = Phi(noise[:, i]) and
    `ancestral_update_from_uniforms` (the same law as `sample`); noise removal after the last step.
    Returns ((N, L) int32 tokens, NFE per sequence = T (+ 1 with noise removal)).
    """

    sampler: Ancestral
    denoiser: Any
    timesteps: jax.Array
    noise_removal: bool = struct.field(pytree_node=False, default=True)

    def fn(self, noise, cond):
        """Token sequences (N, L) and the NFE per sequence from standard-normal noise (N, T, L) under
        conditions `cond`, as the class docstring says."""
        den = self.denoiser if cond is None else self.denoiser.replace(cond=cond)
        ts, sched, s = self.timesteps, self.denoiser.schedule, self.sampler
        x = jnp.full((noise.shape[0], noise.shape[2]), den.vocab_size, jnp.int32)

        def step(x, inputs):
            t, t_next, z = inputs
            probs = reshape_probs(den(x, t), temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)
            u = jax.scipy.special.ndtr(z.astype(probs.dtype))
            return ancestral_update_from_uniforms(u, x, probs, sched.alpha(t), sched.alpha(t_next)), None

        x, _ = jax.lax.scan(step, x, (ts[:-1], ts[1:], jnp.moveaxis(noise, 1, 0)))
        if self.noise_removal:
            x = _noise_removal(x, den(x, ts[-1]))
        return x, jnp.asarray(ts.shape[0] - 1 + int(self.noise_removal), jnp.int32)


def generator(sampler: Ancestral, denoiser, timesteps, *, noise_removal: bool = True) -> TokenGenerator:
    """A search generator of token sequences: noise of shape (T, L) per candidate -> (L,) tokens.

    Every candidate starts fully masked; pass `shape=(B, T, L)` to `random_search` or
    `zero_order_search` (T = len(timesteps) - 1). Neighbouring noises give related sequences: the
    map is the inverse CDF of every step's categorical.

    Args:
      sampler: an `ancestral(...)` value (temperature, top-k, top-p are used; caching is not).
      denoiser: a masked-diffusion denoiser (its parameters are data of the generator).
      timesteps: the decreasing grid.
      noise_removal: argmax any mask left after the last step (one more call).

    Returns:
      A `TokenGenerator` value.
    """
    if not isinstance(sampler, Ancestral):
        raise ValueError(f"sampler must be an ancestral(...) value, got {sampler!r}")
    check_denoiser("denoiser", denoiser)
    _checks.grid(timesteps)
    return TokenGenerator(sampler, denoiser, jnp.asarray(timesteps), bool(noise_removal))


class HittingState(NamedTuple):
    """First-hitting sampler state: tokens, the current time per sequence, the network calls."""

    x: jax.Array
    t: jax.Array
    nfe: jax.Array


@solver_value
class FirstHitting:
    """The first-hitting sampler (build it with `first_hitting`): one token per call, exact times."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def step(self, state, key, denoise):
        """Unmask one token of every sequence that still has a mask, at its next hitting time."""
        x, t = state.x, state.t
        sched = denoise.schedule
        vocab_size = denoise.vocab_size
        masked = x == vocab_size
        n = jnp.sum(masked, axis=1)
        active = n > 0
        key_u, key_pos, key_tok = jax.random.split(key, 3)
        u = jax.random.uniform(key_u, t.shape, dtype=t.dtype, minval=jnp.finfo(t.dtype).tiny)
        log_gap = jnp.log1p(-sched.alpha(t)) + jnp.log(u) / jnp.maximum(n, 1)
        tau = jnp.where(active, sched.t_from_alpha(-jnp.expm1(log_gap)), t)
        log_mu = denoise(x, tau)
        probs = reshape_probs(log_mu, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        pos_logits = jnp.where(masked | ~active[:, None], 0.0, -jnp.inf)
        pos = jax.random.categorical(key_pos, pos_logits, axis=-1)
        row_probs = jnp.take_along_axis(probs, pos[:, None, None], axis=1)[:, 0]
        token = jax.random.categorical(key_tok, row_probs, axis=-1).astype(x.dtype)
        hit = (jnp.arange(x.shape[1]) == pos[:, None]) & active[:, None]
        x = jnp.where(hit, token[:, None], x)
        return HittingState(x, tau, state.nfe + jnp.any(active).astype(jnp.int32))


def first_hitting(*, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> FirstHitting:
    """The first-hitting sampler (Zheng et al. 2024): exact next unmasking times, one token per call.

    Args:
      temperature: as `ancestral`.
      top_k: as `ancestral`.
      top_p: as `ancestral`.

    Returns:
      A `FirstHitting` sampler value.
    """
    a = ancestral(temperature=temperature, top_k=top_k, top_p=top_p)
    return FirstHitting(a.temperature, a.top_k, a.top_p)


@jax.jit
def _sample_first_hitting(sampler, denoiser, key, z, t_start):
    length = z.shape[1]
    state = HittingState(z, jnp.full(z.shape[:1], t_start, jnp.result_type(float)), jnp.asarray(0, jnp.int32))
    keys = jax.random.split(key, length)
    state, _ = jax.lax.scan(lambda s, k: (sampler.step(s, k, denoiser), None), state, keys)
    return state.x, SampleInfo(nfe=state.nfe)


def sample_first_hitting(sampler: FirstHitting, denoiser, key, z, *, t_start: float = 1.0):
    """Run the first-hitting sampler from tokens z at time t_start until nothing is masked (L steps).

    Args:
      sampler: a `first_hitting(...)` value.
      denoiser: a masked-diffusion denoiser with `.schedule` and `.vocab_size`.
      key: a typed key.
      z: start tokens (B, L), mask id V where free.
      t_start: the time of z, in (0, 1].

    Returns:
      (tokens (B, L) without masks, SampleInfo(nfe)): nfe = the number of masks of the most masked row.
    """
    if not isinstance(sampler, FirstHitting):
        raise ValueError(f"sampler must be a first_hitting(...) value, got {sampler!r}")
    check_denoiser("denoiser", denoiser)
    _checks.typed_key("key", key)
    check_tokens("z", z, denoiser.vocab_size, allow_mask=True)
    t_start = _checks.in_range("t_start", t_start, np.finfo(float).tiny, 1.0)
    return _sample_first_hitting(sampler, denoiser, key, jnp.asarray(z, jnp.int32), t_start)


def all_masked(batch: int, length: int, vocab_size: int):
    """The fully masked start (batch, length), every entry the mask id vocab_size."""
    return jnp.full((batch, length), vocab_size, jnp.int32)
