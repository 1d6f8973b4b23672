"""Inference-time steering with particles: resampling schemes and schedules, Feynman–Kac steering.

Particles are a vectorised axis: B conditions x K particles, with the network called on B K at
once. See `fk` for the algorithm and `resampling` for the schemes.
"""

from diffjax.steering import fk, resampling
from diffjax.steering.fk import (
    POTENTIALS,
    Particles,
    best_of,
    chunked,
    fk_steer,
    importance_sample,
    resampled,
    weighted,
)
from diffjax.steering.resampling import ess, maybe_resample, normalise, resampling_schedule

__all__ = [
    "POTENTIALS",
    "Particles",
    "best_of",
    "chunked",
    "ess",
    "fk",
    "fk_steer",
    "importance_sample",
    "maybe_resample",
    "normalise",
    "resampled",
    "resampling",
    "resampling_schedule",
    "weighted",
]
