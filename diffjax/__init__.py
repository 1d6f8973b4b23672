"""diffjax: compiled samplers, guidance and inference-time steering for diffusion and flow models."""

from diffjax import (
    compose,
    data,
    discrete,
    guidance,
    likelihood,
    metrics,
    models,
    parallel,
    predictions,
    schedules,
    solvers,
    specs,
    steering,
    timesteps,
    training,
)
from diffjax.denoiser import Denoiser, Prediction
from diffjax.sampling import SampleInfo, prior_sample, sample
from diffjax.solvers import Solver

__version__ = "0.1.0"

__all__ = [
    "Denoiser",
    "Prediction",
    "SampleInfo",
    "Solver",
    "compose",
    "data",
    "discrete",
    "guidance",
    "likelihood",
    "metrics",
    "models",
    "parallel",
    "predictions",
    "prior_sample",
    "sample",
    "schedules",
    "solvers",
    "specs",
    "steering",
    "timesteps",
    "training",
]
