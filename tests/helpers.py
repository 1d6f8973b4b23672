"""Shared fixtures for the tests: schedules of every kind and a small exact mixture."""

import jax.numpy as jnp

import diffjax as dj


def all_schedules():
    """(name, schedule, interior times) for every schedule kind, avoiding endpoints and knots."""
    interior = jnp.linspace(0.05, 0.95, 19) + 1.3e-3  # off the discrete knots at multiples of 1/N
    trig = dj.schedules.interpolant(lambda t: jnp.cos(0.5 * jnp.pi * t), lambda t: jnp.sin(0.5 * jnp.pi * t))
    return [
        ("vp_linear", dj.schedules.vp_linear(), interior),
        ("vp_cosine", dj.schedules.vp_cosine(), interior),
        ("ve", dj.schedules.ve(), interior),
        ("edm", dj.schedules.edm(), jnp.geomspace(0.003, 70.0, 19)),
        ("rectified_flow", dj.schedules.rectified_flow(), interior),
        ("interpolant_trig", trig, interior),
        ("discrete_linear", dj.schedules.discrete(), interior),
        (
            "discrete_scaled_linear",
            dj.schedules.discrete(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
            interior,
        ),
        ("discrete_cosine", dj.schedules.discrete(beta_schedule="squaredcos_cap_v2"), interior * 0.98),
        ("shifted_flow", dj.schedules.shifted(dj.schedules.rectified_flow(), 3.0), interior),
        ("shifted_vp", dj.schedules.shifted(dj.schedules.vp_linear(), 2.0), interior),
        ("shifted_discrete", dj.schedules.shifted(dj.schedules.discrete(), 0.5), interior),
    ]


def mixture(dim=3):
    """Three well-separated components with distinct per-dimension scales."""
    means = jnp.array(
        [
            [1.5, -1.0, 0.5, 0.0, 1.0, -0.5, 0.2, 2.0],
            [-2.0, 0.5, 1.0, 1.0, -1.0, 0.0, -0.7, 0.3],
            [0.3, 2.0, -1.5, -1.0, 0.0, 1.5, 1.1, -1.2],
        ]
    )[:, :dim]
    scales = jnp.array(
        [
            [0.3, 0.5, 0.2, 0.7, 0.1, 0.4, 0.25, 0.6],
            [0.1, 0.4, 1.0, 0.2, 0.3, 0.6, 0.5, 0.15],
            [0.6, 0.2, 0.35, 0.4, 0.8, 0.1, 0.3, 0.45],
        ]
    )[:, :dim]
    return dj.data.GaussianMixture(jnp.array([0.2, 0.5, 0.3]), means, scales)
