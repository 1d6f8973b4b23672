"""Inference-time steering and search: resampling schemes and schedules, Feynman–Kac steering,
twisted SMC (TDS), SMCDiff, rewards; search over noises and paths, verifiers, golden seeds.

Particles are a vectorised axis: B conditions x K particles, with the network called on B K at
once. See `fk`, `twisted` (TDS) and `inpaint` (SMCDiff) for the algorithms, `resampling` for the schemes and
`rewards` for reward builders; `search`, `verifiers` and `seeds` for search.
"""

from diffjax.steering import fk, inpaint, particles, resampling, rewards, search, seeds, twisted, twists, verifiers
from diffjax.steering.fk import FK, POTENTIALS, FKInfo, FKState, default_schedule, fk_steer, importance_sample
from diffjax.steering.inpaint import smcdiff
from diffjax.steering.particles import Particles, best_of, resampled, weighted
from diffjax.steering.resampling import ess, maybe_resample, normalise, resampling_schedule
from diffjax.steering.rewards import chunked
from diffjax.steering.search import (
    Generator,
    ODEGenerator,
    SearchResult,
    noise_search,
    ode_generator,
    path_search,
    random_search,
    zero_order_search,
)
from diffjax.steering.seeds import SeedBank, golden_seeds
from diffjax.steering.twisted import tds
from diffjax.steering.twists import classifier_twist, inpainting_twist, measurement_twist, reward_twist

__all__ = [
    "FK",
    "FKInfo",
    "FKState",
    "Generator",
    "ODEGenerator",
    "default_schedule",
    "twists",
    "SearchResult",
    "SeedBank",
    "golden_seeds",
    "noise_search",
    "ode_generator",
    "path_search",
    "random_search",
    "search",
    "seeds",
    "verifiers",
    "zero_order_search",
    "POTENTIALS",
    "Particles",
    "best_of",
    "chunked",
    "classifier_twist",
    "ess",
    "fk",
    "fk_steer",
    "inpaint",
    "inpainting_twist",
    "measurement_twist",
    "importance_sample",
    "maybe_resample",
    "normalise",
    "particles",
    "resampled",
    "resampling",
    "resampling_schedule",
    "reward_twist",
    "rewards",
    "smcdiff",
    "tds",
    "twisted",
    "weighted",
]
