"""A TokenTransformer trained by the masked NELBO on the Markov-chain oracle: its NELBO bounds the
chain's exact entropy at every checkpoint, and the gap shrinks as it learns.

Everything is exact: the chain has V = 2 and L = 6, so the expectation over x ~ p is a sum over all
64 sequences with their exact probabilities, and each sequence's NELBO is the exact sum over its 63
mask patterns (`exact_continuous_nelbo`). E_p[NELBO_theta(x)] >= E_p[-log p_theta(x)] >= H(p): the
first by the ELBO, the second because a cross-entropy is at least the entropy. The only tolerance is
float64 rounding.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import diffjax as dj
import diffjax.discrete as dd
from diffjax.discrete.markov import all_sequences, brute_force_probs

LENGTH = 6
CHAIN = dd.markov_chain([0.5, 0.5], [[0.9, 0.1], [0.2, 0.8]], LENGTH)
SCHEDULE = dd.log_linear(0.0)
MODULE = dj.models.TokenTransformer(vocab_size=2, hidden_size=32, depth=2, num_heads=2, max_length=LENGTH,
                                    positions="sinusoidal", time_conditioned=False)  # fmt: skip
APPLY = dj.models.apply_fn(MODULE)


def expected_nelbo(params, x, p):
    den = dd.masked_denoiser(APPLY, params, SCHEDULE, 2)
    return float(p @ np.asarray(dd.exact_continuous_nelbo(den, x)))


def test_the_nelbo_of_a_learning_network_bounds_the_entropy_and_the_gap_shrinks():
    x = jnp.asarray(all_sequences(2, LENGTH))
    p = brute_force_probs(CHAIN)
    entropy = float(-(p @ np.log(p)))  # 2.69 nats per sequence
    loss = dd.masked_nelbo(SCHEDULE, 2)
    optimizer = optax.adam(3e-3)
    params = MODULE.init(jax.random.key(0), jnp.zeros((2, LENGTH), jnp.int32), jnp.zeros((2,)))
    opt_state = optimizer.init(params)

    @jax.jit
    def steps(params, opt_state, key):
        def one(carry, key):
            params, opt_state = carry
            key_x, key_loss = jax.random.split(key)
            grad = jax.grad(lambda q: loss(q, APPLY, CHAIN.sample(key_x, 256), key_loss)[0])(params)
            updates, opt_state = optimizer.update(grad, opt_state)
            return (optax.apply_updates(params, updates), opt_state), None

        return jax.lax.scan(one, (params, opt_state), jax.random.split(key, 100))[0]

    gaps = [expected_nelbo(params, x, p) - entropy]
    for round_ in range(3):
        params, opt_state = steps(params, opt_state, jax.random.key(round_ + 1))
        gaps.append(expected_nelbo(params, x, p) - entropy)
    # measured gaps (nats per sequence): 1.47 at init, then 0.163, 0.084, 0.049 after 100, 200, 300 steps
    assert min(gaps) > -1e-10, gaps  # a bound at every checkpoint
    assert gaps[0] > 0.5 and gaps[-1] < 0.1 * gaps[0], gaps  # it learns: the gap falls tenfold (measured: thirtyfold)
    assert gaps[-1] < gaps[1], gaps
