r"""Divergences (Jacobian traces) of batched vector fields, exact and stochastic.

For f: (B, *event) -> (B, *event) acting on each sample on its own (a network without batch
statistics, a denoiser's velocity), the per-sample divergence is

    div f(x)_b = tr J_b,    J_b = d f(x)_b / d x_b   (a D x D matrix, D = prod(event)).

- `exact`: D Jacobian-vector products with the basis vectors e_i (all samples at once, vmapped over i),
  div = sum_i (J e_i)_i. Cost D matvecs; for small events only.
- `hutchinson` (Hutchinson 1989; FFJORD / score_sde's estimator): with probes z_k, E[z z^T] = I,
  tr J ~ (1/K) sum_k z_k^T J z_k, unbiased for any J; the variance of one term is
  2 ||J_sym||_F^2 - 2 sum_i J_ii^2 for Rademacher and 2 ||J_sym||_F^2 for Gaussian probes
  (J_sym = (J + J^T)/2). Matvecs by `jax.jvp` (J z) or `jax.vjp` (z^T J), the same number.
- `hutch_plus_plus` (Meyer, Musco, Musco & Woodruff, SOSA 2021; checked against the official
  `simple/simple_hutchplusplus.m` and `simple_na_hutchplusplus.m` of RaphaelArkadyMeyerNYU/HutchPlusPlus):
  with a budget of m matvecs and m probes z_1..z_m,
    adaptive: S = z[:k], k = ceil(m/3), G = z[k:k+l], l = floor(m/3); Q = qr(J S);
      tr J ~ tr(Q^T J Q) + tr(G'^T J G') / l,  G' = (I - Q Q^T) G      (2k + l <= m + 1 matvecs);
    non-adaptive (one parallel pass): S = z[:a], R = z[a:a+r], G = the rest, a = ceil(m/6), r = ceil(m/3);
      Z = J R, W^T = S^T J;  tr J ~ tr((S^T Z)^+ W^T Z) + [tr(G^T J G) - tr(G^T Z (S^T Z)^+ W^T G)] / |G|.
  The official non-adaptive code forms W = J S, which equals (S^T J)^T only for symmetric J; here
  W^T = S^T J is taken by `jax.vjp`, so the estimator stays unbiased for a nonsymmetric Jacobian (a
  learned velocity's). Both are unbiased for every square J because G is independent of the
  low-rank part; the adaptive one is exact whenever rank J <= k, the non-adaptive one whenever
  rank J <= a. Q (or the pseudo-inverse) is recomputed at every call: inside an ODE solve the
  probes stay fixed and the projection follows the Jacobian.

All are pure, jit-able and batched; probes are drawn by the caller (`probes`) so that an ODE solve
can keep them fixed over the whole trajectory, as score_sde does.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from diffjax import _checks

DISTRIBUTIONS = ("rademacher", "gaussian")
MODES = ("jvp", "vjp")


def probes(key, num: int, like, dist: str = "rademacher"):
    """`num` probe vectors for every sample of `like`, E[z z^T] = I.

    Args:
      key: a typed key (`jax.random.key`).
      num: probes per sample, >= 1.
      like: an array (B, *event) whose shape and dtype the probes take.
      dist: "rademacher" (entries +-1, the lowest variance for a fixed J) or "gaussian" (N(0, 1)).

    Returns:
      An array (num, B, *event) in like's dtype.

    Raises:
      ValueError: a key that is not typed, num < 1 or an unknown dist.
    """
    _checks.typed_key("key", key)
    num = _checks.positive_int("num", num)
    _checks.one_of("dist", dist, DISTRIBUTIONS)
    shape = (num, *jnp.shape(like))
    if dist == "rademacher":
        z = jax.random.rademacher(key, shape, jnp.float32)
    else:
        z = jax.random.normal(key, shape, jnp.float32)
    return z.astype(jnp.result_type(like))


def _flat(a, batch):
    return a.reshape(batch, -1)


def _matvecs(f, x, vectors):
    """J v for each v in vectors (n, B, *event): (f(x), (n, B, *event)); one linearisation of f."""
    fx, lin = jax.linearize(f, x)
    return fx, jax.vmap(lin)(vectors)


def _vecmats(f, x, vectors):
    """v^T J for each v in vectors (n, B, *event)."""
    fx, pullback = jax.vjp(f, x)
    return fx, jax.vmap(lambda v: pullback(v)[0])(vectors)


def exact(f, x):
    """The exact per-sample divergence tr(df/dx) by D Jacobian-vector products.

    Args:
      f: a function (B, *event) -> (B, *event) that treats each sample separately.
      x: the point, (B, *event).

    Returns:
      (f(x), div) with div of shape (B,).
    """
    batch, dim = x.shape[0], math.prod(x.shape[1:])
    basis = jnp.broadcast_to(jnp.eye(dim, dtype=x.dtype)[:, None, :], (dim, batch, dim)).reshape((dim, *x.shape))
    fx, columns = _matvecs(f, x, basis)  # (D, B, *event): column i of each J_b
    columns = columns.reshape(dim, batch, dim)
    return fx, jnp.einsum("ibi->b", columns)


def hutchinson_terms(f, x, z, *, mode: str = "jvp"):
    """The per-probe Hutchinson terms z_k^T J z_k.

    Args:
      f: a function (B, *event) -> (B, *event) that treats each sample separately.
      x: the point, (B, *event).
      z: probes (K, B, *event) (`probes`).
      mode: "jvp" (J z, forward mode) or "vjp" (z^T J, reverse mode).

    Returns:
      (f(x), terms) with terms of shape (K, B); their mean over K is the estimate.
    """
    _checks.one_of("mode", mode, MODES)
    fx, products = (_matvecs if mode == "jvp" else _vecmats)(f, x, z)
    k, batch = z.shape[:2]
    return fx, jnp.sum(z.reshape(k, batch, -1) * products.reshape(k, batch, -1), axis=-1)


def hutchinson(f, x, z, *, mode: str = "jvp"):
    """Hutchinson's estimate of the per-sample divergence, (1/K) sum_k z_k^T J z_k.

    Args:
      f: a function (B, *event) -> (B, *event) that treats each sample separately.
      x: the point, (B, *event).
      z: probes (K, B, *event) with E[z z^T] = I (`probes`).
      mode: "jvp" or "vjp".

    Returns:
      (f(x), div) with div of shape (B,).
    """
    fx, terms = hutchinson_terms(f, x, z, mode=mode)
    return fx, jnp.mean(terms, axis=0)


def _to_columns(v, batch):
    """(n, B, *event) -> (B, D, n)."""
    return jnp.moveaxis(v.reshape(v.shape[0], batch, -1), 0, -1)


def _from_columns(m, like):
    """(B, D, n) -> (n, B, *event)."""
    return jnp.moveaxis(m, -1, 0).reshape((m.shape[-1], *like.shape))


def hutch_plus_plus(f, x, z, *, adaptive: bool = True):
    """Hutch++ estimate of the per-sample divergence with a budget of m = len(z) matvecs.

    Args:
      f: a function (B, *event) -> (B, *event) that treats each sample separately.
      x: the point, (B, *event).
      z: m >= 3 probes (m, B, *event) (`probes`, Rademacher as in the paper); the split into the
        sketch and the Hutchinson part is fixed by m (module docstring).
      adaptive: True for the QR (adaptive) variant, False for the single-pass non-adaptive one.

    Returns:
      (f(x), div) with div of shape (B,).

    Raises:
      ValueError: fewer than 3 probes.
    """
    m = z.shape[0]
    if m < 3:
        raise ValueError(f"hutch_plus_plus needs a budget of >= 3 probes (len(z)), got {m}")
    batch = x.shape[0]
    if adaptive:
        k, num_g = -(-m // 3), m // 3
        s, g = z[:k], z[k : k + num_g]
        fx, js = _matvecs(f, x, s)
        q, _ = jnp.linalg.qr(_to_columns(js, batch))  # (B, D, k)
        _, jq = _matvecs(f, x, _from_columns(q, x))
        low_rank = jnp.einsum("bdk,bdk->b", q, _to_columns(jq, batch))
        gc = _to_columns(g, batch)
        gc = gc - q @ (jnp.swapaxes(q, -1, -2) @ gc)
        _, jg = _matvecs(f, x, _from_columns(gc, x))
        return fx, low_rank + jnp.einsum("bdl,bdl->b", gc, _to_columns(jg, batch)) / num_g
    a, r = -(-m // 6), -(-m // 3)
    s, rr, g = z[:a], z[a : a + r], z[a + r :]
    fx, jr = _matvecs(f, x, jnp.concatenate([rr, g]))
    _, sj = _vecmats(f, x, s)
    zc, jgc = _to_columns(jr[:r], batch), _to_columns(jr[r:], batch)  # Z = J R, J G
    sc, gc, wt = _to_columns(s, batch), _to_columns(g, batch), jnp.swapaxes(_to_columns(sj, batch), -1, -2)  # W^T
    core = jnp.linalg.pinv(jnp.swapaxes(sc, -1, -2) @ zc)  # (S^T Z)^+, (B, r, a)
    low_rank = jnp.trace(core @ (wt @ zc), axis1=-2, axis2=-1)
    gjg = jnp.einsum("bdl,bdl->b", gc, jgc)
    correction = jnp.trace(jnp.swapaxes(gc, -1, -2) @ zc @ core @ wt @ gc, axis1=-2, axis2=-1)
    return fx, low_rank + (gjg - correction) / g.shape[0]
