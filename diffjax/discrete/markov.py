r"""The exact oracle of masked diffusion: a first-order Markov chain over V tokens and length L.

p(x) = (1/Z) pi(x_1) prod_l P(x_l, x_{l+1}) prod_l exp(phi(x_l)), with phi = 0 (Z = 1) for a plain
chain and phi = lambda c for the chain tilted by an additive reward r(x) = sum_l c(x_l).

Forward-backward over evidence e_l(v) = 1[v = z_l] (visible) or 1 (masked), times exp(phi(v)),
all in log space:

    f_1 = pi . e_1,  f_{l+1} = (f_l P) . e_{l+1};   b_L = 1,  b_l = P (e_{l+1} . b_{l+1}),
    p(x_l = v | visible) = f_l(v) b_l(v) / sum_v f_L(v).

These posterior marginals are the exact SUBS denoiser, independent of t (`denoiser`). FFBS draws
the joint posterior: x_L ~ f_L, then x_l ~ f_l(v) P(v, x_{l+1}). log Z = logsumexp f_L with no
evidence; `log_evidence(z)` = log sum over x consistent with z of the unnormalised p, so
`tilted(c, lmbda).log_evidence(z) - log_evidence(z)` is the exact twist log E[e^{lambda r} | z].
Fixture M-1 and its numbers are in `references/anchors-inverse-discrete.md` §9
(tests/test_markov.py checks them and forward-backward against enumeration).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffjax import _checks
from diffjax.arrays import Value
from diffjax.discrete.schedules import MaskingSchedule, check_schedule


def _logsumexp_matvec(log_f, log_p):
    """log of (f P) for log f (..., V) and log P (V, V): logsumexp over the first index of P."""
    return jax.nn.logsumexp(log_f[..., :, None] + log_p, axis=-2)


@struct.dataclass(eq=False)
class MarkovChain(Value):
    """A (possibly tilted) first-order Markov chain over `vocab_size` tokens of length `length`.

    Build it with `markov_chain(pi, P, length)`; `tilted(c, lmbda)` gives the tilted chain.
    """

    log_pi: jax.Array  # (V,)
    log_trans: jax.Array  # (V, V), rows sum to 1 in probability
    log_potential: jax.Array  # (V,), phi added at every position
    length: int = struct.field(pytree_node=False)

    @property
    def vocab_size(self) -> int:
        """V, the number of tokens (the mask token is V)."""
        return self.log_pi.shape[0]

    def _log_evidence_terms(self, z):
        """log e_l(v) + phi(v), (B, L, V), from z (B, L) with mask id V."""
        v = jnp.arange(self.vocab_size)
        visible = z[..., None] < self.vocab_size
        hard = jnp.where(visible & (z[..., None] != v), -jnp.inf, 0.0)
        return hard + self.log_potential

    def forward_backward(self, z):
        """log f and log b (B, L, V) of the recursion in the module docstring for evidence z."""
        log_e = self._log_evidence_terms(z).astype(self.log_pi.dtype)
        log_f1 = self.log_pi + log_e[:, 0]

        def fwd(log_f, log_e_next):
            nxt = _logsumexp_matvec(log_f, self.log_trans) + log_e_next
            return nxt, nxt

        _, log_f_rest = jax.lax.scan(fwd, log_f1, jnp.moveaxis(log_e[:, 1:], 1, 0))
        log_f = jnp.concatenate([log_f1[:, None], jnp.moveaxis(log_f_rest, 0, 1)], axis=1)

        def bwd(log_b, log_e_next):
            prev = jax.nn.logsumexp(self.log_trans + (log_e_next + log_b)[..., None, :], axis=-1)
            return prev, prev

        log_bL = jnp.zeros_like(log_f1)
        _, log_b_rest = jax.lax.scan(bwd, log_bL, jnp.moveaxis(log_e[:, 1:], 1, 0), reverse=True)
        log_b = jnp.concatenate([jnp.moveaxis(log_b_rest, 0, 1), log_bL[:, None]], axis=1)
        return log_f, log_b

    def log_evidence(self, z):
        """log sum_{x consistent with z} pi(x_1) prod P prod exp(phi), (B,)."""
        log_f, _ = self.forward_backward(z)
        return jax.nn.logsumexp(log_f[:, -1], axis=-1)

    def log_z(self):
        """log Z, the log normaliser (0 for an untilted chain)."""
        z = jnp.full((1, self.length), self.vocab_size, jnp.int32)
        return self.log_evidence(z)[0]

    def log_prob(self, x):
        """log p(x) (B,) of complete sequences x (B, L)."""
        first = self.log_pi[x[:, 0]]
        steps = jnp.sum(self.log_trans[x[:, :-1], x[:, 1:]], axis=1)
        return first + steps + jnp.sum(self.log_potential[x], axis=1) - self.log_z()

    def posterior_marginals(self, z):
        """log p(x_l = v | visible part of z), (B, L, V): the exact SUBS denoiser's output."""
        log_f, log_b = self.forward_backward(z)
        joint = log_f + log_b
        return joint - jax.nn.logsumexp(joint, axis=-1, keepdims=True)

    def marginals(self):
        """The unconditional marginals p(x_l = v), (L, V), in probability."""
        z = jnp.full((1, self.length), self.vocab_size, jnp.int32)
        return jnp.exp(self.posterior_marginals(z)[0])

    def posterior_sample(self, key, z):
        """FFBS: one exact draw (B, L) from p(x | visible part of z) per row of z."""
        log_f, _ = self.forward_backward(z)
        keys = jax.random.split(key, self.length)
        x_last = jax.random.categorical(keys[-1], log_f[:, -1], axis=-1)

        def back(x_next, inputs):
            k, log_f_l = inputs
            x_l = jax.random.categorical(k, log_f_l + self.log_trans[:, x_next].T, axis=-1)
            return x_l, x_l

        _, xs = jax.lax.scan(back, x_last, (keys[:-1], jnp.moveaxis(log_f[:, :-1], 1, 0)), reverse=True)
        return jnp.concatenate([jnp.moveaxis(xs, 0, 1), x_last[:, None]], axis=1).astype(jnp.int32)

    def sample(self, key, num_samples: int):
        """num_samples exact draws (num_samples, L) (FFBS with everything masked: handles tilting)."""
        z = jnp.full((num_samples, self.length), self.vocab_size, jnp.int32)
        return self.posterior_sample(key, z)

    def tilted(self, c, lmbda: float) -> MarkovChain:
        """The chain tilted by exp(lmbda sum_l c(x_l)) (c: (V,) reward per token), normalised by `log_z`."""
        c = jnp.asarray(c, self.log_pi.dtype)
        if c.shape != (self.vocab_size,):
            raise ValueError(f"c must have shape ({self.vocab_size},), one reward per token, got {c.shape}")
        lmbda = _checks.finite("lmbda", lmbda)
        return self.replace(log_potential=self.log_potential + lmbda * c)

    def denoiser(self, schedule: MaskingSchedule) -> MarkovDenoiser:
        """The exact SUBS denoiser of this chain (time-agnostic) under `schedule`."""
        check_schedule("schedule", schedule)
        return MarkovDenoiser(self, schedule)


@struct.dataclass(eq=False)
class MarkovDenoiser(Value):
    """`den(z, t) = chain.posterior_marginals(z)` for every t, with `.schedule` (time-agnostic)."""

    chain: MarkovChain
    schedule: MaskingSchedule = struct.field(pytree_node=False)

    time_agnostic = True

    @property
    def vocab_size(self) -> int:
        """V, the chain's number of tokens."""
        return self.chain.vocab_size

    def __call__(self, z, t):
        del t
        return self.chain.posterior_marginals(z)


@struct.dataclass(eq=False)
class JointDraws(Value):
    """FFBS draws from the chain's joint posterior given z: an x0 sampler for FK steering
    (`diffjax.discrete.predicted`); build it with `joint_draws`."""

    chain: MarkovChain

    def __call__(self, key, z, log_mu, num: int):
        """num joint posterior draws (num, N, L) given the visible tokens of z; log_mu is unused."""
        del log_mu
        return jax.vmap(lambda k: self.chain.posterior_sample(k, z))(jax.random.split(key, num))


def joint_draws(chain: MarkovChain) -> JointDraws:
    """The chain's FFBS posterior sampler as FK's x0 sampler (`fk_steer(..., x0_sampler=...)`).

    With it the many-sample reward log (1/M) sum_j exp r(x0_j) converges to the exact
    log E[exp r(x0) | z_t] as M grows, where the default product-of-marginals draws do not.

    Args:
      chain: the `MarkovChain` whose posterior to draw (the one the denoiser is exact for).

    Returns:
      A `JointDraws` value (the chain's arrays are its leaves).
    """
    if not isinstance(chain, MarkovChain):
        raise ValueError(f"chain must be a MarkovChain (markov_chain(...)), got {chain!r}")
    return JointDraws(chain)


def markov_chain(pi, trans, length: int) -> MarkovChain:
    """A first-order Markov chain p(x) = pi(x_1) prod_l P(x_l, x_{l+1}) of `length` tokens.

    Args:
      pi: initial distribution (V,), nonnegative, summing to 1.
      trans: transition matrix P (V, V), rows summing to 1.
      length: L >= 1.

    Returns:
      A `MarkovChain` value (log-probabilities as leaves, in the default float type).
    """
    pi_np, trans_np = np.asarray(pi, float), np.asarray(trans, float)
    if pi_np.ndim != 1 or np.any(pi_np < 0) or not np.isclose(pi_np.sum(), 1.0):
        raise ValueError(f"pi must be a probability vector (V,), got {pi_np}")
    v = pi_np.shape[0]
    if trans_np.shape != (v, v) or np.any(trans_np < 0) or not np.allclose(trans_np.sum(axis=1), 1.0):
        raise ValueError(f"trans must be a ({v}, {v}) matrix with rows summing to 1, got {trans_np}")
    length = _checks.positive_int("length", length)
    dtype = jnp.result_type(float)
    with np.errstate(divide="ignore"):
        return MarkovChain(
            jnp.asarray(np.log(pi_np), dtype), jnp.asarray(np.log(trans_np), dtype), jnp.zeros(v, dtype), length
        )


def all_sequences(vocab_size: int, length: int) -> np.ndarray:
    """Every sequence of `length` tokens over `vocab_size` ids, (V^L, L) int32, in lexicographic order."""
    return np.array(list(itertools.product(range(vocab_size), repeat=length)), dtype=np.int32).reshape(-1, length)


def sequence_index(x, vocab_size: int):
    """The row of x (B, L) in `all_sequences(vocab_size, L)`: base-V digits, (B,)."""
    x = np.asarray(x)
    return x @ (vocab_size ** np.arange(x.shape[1] - 1, -1, -1))


def brute_force_probs(chain: MarkovChain) -> np.ndarray:
    """p over all V^L sequences (in `all_sequences` order) by explicit products, numpy float64."""
    xs = all_sequences(chain.vocab_size, chain.length)
    pi, trans, phi = (np.exp(np.asarray(a, np.float64)) for a in (chain.log_pi, chain.log_trans, chain.log_potential))
    p = pi[xs[:, 0]] * np.prod(phi[xs], axis=1)
    for l in range(chain.length - 1):  # noqa: E741
        p = p * trans[xs[:, l], xs[:, l + 1]]
    return p / p.sum()


def brute_force_posterior_marginals(chain: MarkovChain, z) -> np.ndarray:
    """p(x_l = v | visible part of z) (B, L, V) by enumerating every sequence, numpy float64."""
    xs = all_sequences(chain.vocab_size, chain.length)
    p = brute_force_probs(chain)
    z = np.asarray(z)
    out = np.zeros(z.shape + (chain.vocab_size,))
    for b, row in enumerate(z):
        visible = row < chain.vocab_size
        weights = p * np.all((xs == row) | ~visible, axis=1)
        weights = weights / weights.sum()
        for v in range(chain.vocab_size):
            out[b, :, v] = weights @ (xs == v)
    return out
