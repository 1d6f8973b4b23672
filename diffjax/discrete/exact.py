r"""The exact output law of the masked-diffusion samplers, by dynamic programming over token states.

For a tiny vocabulary V and length L, every state of a sampler is one of the S = (V + 1)^L sequences
over {0 .. V} (mask id V; `all_states`, lexicographic, row `state_index(x)`). A law is a mass vector
(S,) over them, and each sampler step moves it exactly (references/anchors-inverse-discrete.md §9,
T-MD 3: "for any T, the exact output law is computable by dynamic programming").

Ancestral (`ancestral_law`, the law of `samplers.sample(ancestral(...), ...)`): step t -> s calls
the denoiser once on all S states, reshapes mu with `samplers.reshape_probs`, and takes the exact
reverse kernel of `samplers.reverse_log_weights`, a product over positions given the state i:

    K(i, j) = prod_l k_l(i, j_l),  k_l(i, c) = 1[c = i_l]                          (i_l visible),
                                   k_l(i, c) = (alpha_s - alpha_t)/(1 - alpha_t) mu_i(l, c)  (c < V),
                                   k_l(i, V) = (1 - alpha_s)/(1 - alpha_t)                  (i_l masked),

so m'(j) = sum_i m(i) K(i, j). The sum is taken one position at a time (the outer product of the L
factors of each i in lexicographic order), O(S^2) per step and no (S, S) matrix before the last
position. Noise removal maps every state deterministically (its masks -> the argmax of mu at the
grid's last time, as `sample` does). The kernel's weights are normalised with a softmax, as
`jax.random.categorical` normalises its logits, so the law is the sampler's to float rounding.

First hitting (`first_hitting_law`, the law of `samplers.sample_first_hitting` with a time-agnostic
denoiser): each round unmasks one masked position of every state, chosen uniformly among its n
masks, with a token from the reshaped mu; after L rounds nothing is masked. The hitting times then
do not matter, which is why the denoiser must be time-agnostic.

What the laws show (tests/test_discrete_exact.py): with the exact denoiser of a Markov chain p,
one ancestral step gives the product of p's marginals; T steps give a law that is not p for any
finite T unless the positions of p are independent (each step unmasks the masked positions
independently given z_t, which is exact only where at most one of them changes or p factorises),
its distance to p falling like 1/T; the first-hitting law is p exactly.

Mass is kept in the default float type (float64 with `jax_enable_x64`, as the tests run). The work
per step is O(S^2 + S L V) and S is limited to `MAX_STATES`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import _checks
from diffjax.discrete import markov, samplers
from diffjax.discrete.process import check_denoiser, check_tokens

MAX_STATES = 4096


def _num_states(vocab_size: int, length: int) -> int:
    num = (vocab_size + 1) ** length
    if num > MAX_STATES:
        raise ValueError(
            f"the exact law needs (vocab_size + 1)**length <= {MAX_STATES} token states, got vocab_size={vocab_size}, "
            f"length={length} ({num} states)"
        )
    return num


def all_states(vocab_size: int, length: int) -> np.ndarray:
    """Every token state of length L over {0 .. V} (mask id V), in lexicographic order.

    Args:
      vocab_size: V >= 1 (the mask id is V).
      length: L >= 1, with (V + 1)^L <= `MAX_STATES`.

    Returns:
      int32 (S, L), S = (V + 1)^L; row `state_index(x, V)` is x.
    """
    vocab_size = _checks.positive_int("vocab_size", vocab_size)
    length = _checks.positive_int("length", length)
    _num_states(vocab_size, length)
    return markov.all_sequences(vocab_size + 1, length)


def state_index(x, vocab_size: int):
    """The row of each state x (..., L) in `all_states(vocab_size, L)`: base-(V + 1) digits (...,) (jit-able)."""
    x = jnp.asarray(x)
    place = (vocab_size + 1) ** np.arange(x.shape[-1] - 1, -1, -1)
    return jnp.sum(x * jnp.asarray(place, x.dtype), axis=-1)


def mask_free(law, vocab_size: int, length: int):
    """A law over states restricted to the mask-free ones, in `markov.all_sequences(V, L)` order.

    Args:
      law: (S,) probabilities over `all_states(vocab_size, length)`.
      vocab_size: V.
      length: L.

    Returns:
      (V^L,) the law's mass on each clean sequence (it sums to 1 when no mass is left on masks), so
      it compares directly with `markov.brute_force_probs(chain)`.
    """
    law = jnp.asarray(law)
    if law.shape != ((vocab_size + 1) ** length,):
        raise ValueError(
            f"law must have shape ({(vocab_size + 1) ** length},) for V={vocab_size}, L={length}, got {law.shape}"
        )
    return law[state_index(markov.all_sequences(vocab_size, length), vocab_size)]


def _start(denoiser, z):
    """Validated (states (S, L), the start mass (S,): one at z)."""
    check_denoiser("denoiser", denoiser)
    vocab_size = _checks.positive_int("denoiser.vocab_size", getattr(denoiser, "vocab_size", None))
    if not _checks.is_concrete(z):
        raise ValueError("z must be a concrete token array (the exact law is built on the host), got a tracer")
    check_tokens("z", z, vocab_size, allow_mask=True)
    if np.shape(z)[0] != 1:
        raise ValueError(f"z must hold one start sequence, shape (1, L), got shape {np.shape(z)}")
    states = all_states(vocab_size, np.shape(z)[1])
    dtype = jnp.result_type(float)
    mass = jnp.zeros(states.shape[0], dtype).at[state_index(np.asarray(z, np.int32), vocab_size)[0]].set(1.0)
    return jnp.asarray(states), mass


def _moved_mass(mass, factors):
    """m'(j) = sum_i m(i) prod_l factors[i, l, j_l] for every state j (S,), from m (S,) and factors
    (S, L, V + 1): the outer product of each state's L factors, grown one position at a time."""
    out = mass[:, None] * factors[:, 0]
    for pos in range(1, factors.shape[1]):
        out = (out[:, :, None] * factors[:, pos, None, :]).reshape(out.shape[0], -1)
    return jnp.sum(out, axis=0)


def _ancestral_factors(states, probs, alpha_t, alpha_s):
    """k_l(i, c) of the module docstring, (S, L, V + 1): the reverse kernel at masks, a copy elsewhere."""
    vocab_size = probs.shape[-1]
    move = jax.nn.softmax(samplers.reverse_log_weights(probs, alpha_t, alpha_s), axis=-1)
    copy = jax.nn.one_hot(states, vocab_size + 1, dtype=move.dtype)
    return jnp.where((states == vocab_size)[..., None], move, copy)


def _reshaped(sampler, denoiser, states, t, dtype):
    log_mu = denoiser(states, t).astype(dtype)
    return samplers.reshape_probs(log_mu, temperature=sampler.temperature, top_k=sampler.top_k, top_p=sampler.top_p)


@functools.partial(jax.jit, static_argnames=("noise_removal",))
def _ancestral_law(sampler, denoiser, timesteps, states, mass, noise_removal):
    sched = denoiser.schedule

    def step(mass, times):
        t, s = times
        probs = _reshaped(sampler, denoiser, states, t, mass.dtype)
        return _moved_mass(mass, _ancestral_factors(states, probs, sched.alpha(t), sched.alpha(s))), None

    mass, _ = jax.lax.scan(step, mass, (timesteps[:-1], timesteps[1:]))
    if noise_removal:
        filled = samplers._noise_removal(states, denoiser(states, timesteps[-1]))
        mass = jnp.zeros_like(mass).at[state_index(filled, denoiser.vocab_size)].add(mass)
    return mass


def ancestral_law(
    denoiser,
    timesteps,
    z,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    noise_removal: bool = True,
):
    """The exact law of `samplers.sample(ancestral(...), denoiser, timesteps, key, z)` over all states.

    T-MD 3 of references/anchors-inverse-discrete.md §9; the recursion is in the module docstring.
    Any masked-diffusion denoiser works (a network too): it is called once per step on all S states
    in one batch (a condition it holds must broadcast to S rows).

    Args:
      denoiser: a masked-diffusion denoiser `den(z, t) -> log mu (B, L, V)` with `.schedule` and
        `.vocab_size` V.
      timesteps: the decreasing grid the sampler runs on (T + 1 times).
      z: the start tokens (1, L), mask id V where free; visible tokens (a prompt) are kept.
      temperature: the sampler's reshaping of mu (as `samplers.ancestral`).
      top_k: as `samplers.ancestral`.
      top_p: as `samplers.ancestral`.
      noise_removal: as `sample`: after the last step, masks -> the argmax of mu at timesteps[-1].

    Returns:
      (S,) probabilities over `all_states(V, L)` (S = (V + 1)^L), summing to 1. With noise removal,
      or when alpha(timesteps[-1]) = 1, all mass is on mask-free states (`mask_free` reads it off).

    Raises:
      ValueError: for a bad denoiser, grid, z (shape, ids, more than one row) or reshaping option,
        or (V + 1)^L > `MAX_STATES`.
    """
    sampler = samplers.ancestral(temperature=temperature, top_k=top_k, top_p=top_p)
    _checks.grid(timesteps)
    states, mass = _start(denoiser, z)
    return _ancestral_law(sampler, denoiser, jnp.asarray(timesteps), states, mass, bool(noise_removal))


@jax.jit
def _first_hitting_law(sampler, denoiser, states, mass):
    vocab_size, length = denoiser.vocab_size, states.shape[1]
    masked = states == vocab_size
    num_masked = jnp.sum(masked, axis=1)
    place = (vocab_size + 1) ** jnp.arange(length - 1, -1, -1)
    # the state i with position l set to v: index(i) + (v - V) (V + 1)^(L - 1 - l), (S, L, V)
    targets = state_index(states, vocab_size)[:, None, None] + (jnp.arange(vocab_size) - vocab_size) * place[:, None]
    t = jnp.ones((), mass.dtype)  # any time: the denoiser is time-agnostic

    def round_(mass, _):
        token = jax.nn.softmax(_reshaped(sampler, denoiser, states, t, mass.dtype), axis=-1)
        weights = jnp.where(masked[..., None], token / jnp.maximum(num_masked, 1)[:, None, None], 0.0)
        moved = jnp.zeros_like(mass).at[jnp.where(masked[..., None], targets, 0).reshape(-1)]
        moved = moved.add((mass[:, None, None] * weights).reshape(-1))
        return moved + jnp.where(num_masked == 0, mass, 0.0), None

    mass, _ = jax.lax.scan(round_, mass, None, length=length)
    return mass


def first_hitting_law(denoiser, z, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """The exact law of `samplers.sample_first_hitting(first_hitting(...), denoiser, key, z)`.

    Zheng et al. 2024 (arXiv 2409.02908): one masked position, uniform among the masked ones, gets a
    token from the reshaped mu per call; with a time-agnostic denoiser the hitting times do not
    change the law (so there is no t_start), and L rounds of the module docstring's recursion give it.

    Args:
      denoiser: a time-agnostic masked-diffusion denoiser (`.time_agnostic` True) with `.schedule`
        and `.vocab_size` V.
      z: the start tokens (1, L), mask id V where free.
      temperature: the sampler's reshaping of mu (as `samplers.first_hitting`).
      top_k: as `samplers.first_hitting`.
      top_p: as `samplers.first_hitting`.

    Returns:
      (S,) probabilities over `all_states(V, L)`, all on mask-free states.

    Raises:
      ValueError: for a denoiser that is not time-agnostic, a bad z or option, or too many states.
    """
    sampler = samplers.first_hitting(temperature=temperature, top_k=top_k, top_p=top_p)
    check_denoiser("denoiser", denoiser)
    if not getattr(denoiser, "time_agnostic", False):
        raise ValueError(
            f"denoiser must be time-agnostic (denoiser.time_agnostic True) for the first-hitting law, got {denoiser!r}"
        )
    states, mass = _start(denoiser, z)
    return _first_hitting_law(sampler, denoiser, states, mass)
