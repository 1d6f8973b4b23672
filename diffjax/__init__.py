"""diffjax: compiled samplers, guidance and inference-time steering for diffusion and flow models."""

from diffjax import data, metrics, predictions, schedules, solvers, specs, timesteps
from diffjax.denoiser import Denoiser, Prediction
from diffjax.sampling import SampleInfo, prior_sample, sample
from diffjax.solvers import Solver

__version__ = "0.1.0"

__all__ = [
    "Denoiser",
    "Prediction",
    "SampleInfo",
    "Solver",
    "data",
    "metrics",
    "predictions",
    "prior_sample",
    "sample",
    "schedules",
    "solvers",
    "specs",
    "timesteps",
]
