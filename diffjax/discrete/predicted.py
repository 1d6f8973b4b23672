r"""The clean tokens a masked-diffusion step predicts, as steering scores them.

A step at z_t gives log mu_theta(x_0^l = v | z_t), (N, L, V), one categorical per position (SUBS:
visible positions are one-hot on their token). FK steering (`diffjax.steering.fk_steer`) scores
intermediate states through these (FK's code, `discrete_diffusion/fk_diffusion.py`):

- `reward_on="x0"`: the reward of `argmax_tokens(log mu)`, the most likely token per position;
- `reward_on="many"`: r-hat(z_t) = log (1/M) sum_j exp r(x_0^(j)) over M draws of an x0 sampler:
  `marginal_draws` (the default, FK's: every position drawn independently from its categorical,
  a product of marginals) or a joint posterior sampler such as the Markov chain's FFBS draws
  (`diffjax.discrete.markov.joint_draws`), which makes r-hat the exact log E[exp r | z_t] as
  M grows (the optimal twist at lmbda = 1).

An x0 sampler is a value called as `sampler(key, z, log_mu, num) -> (num, N, L)` int32 tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


def argmax_tokens(log_mu):
    """The most likely clean token per position, (N, L) int32, from log mu (N, L, V)."""
    return jnp.argmax(log_mu, axis=-1).astype(jnp.int32)


@struct.dataclass
class MarginalDraws:
    """Independent per-position draws from mu_theta (a product of marginals): FK's x0 samples."""

    def __call__(self, key, z, log_mu, num: int):
        """num draws (num, N, L) of x0 ~ prod_l mu_theta(x_0^l | z); z is unused (SUBS keeps it)."""
        del z
        return jax.random.categorical(key, log_mu, axis=-1, shape=(num,) + log_mu.shape[:-1]).astype(jnp.int32)


marginal_draws = MarginalDraws()
