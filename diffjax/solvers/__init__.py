"""Samplers as solver values with pure `init` / `step` methods; any solver works with any schedule
and method. `REGISTRY` maps the names configs use to the constructors."""

from diffjax.solvers.ancestral import ddpm, euler_ancestral
from diffjax.solvers.base import (
    GaussianSolver,
    Solver,
    State,
    StepInfo,
    Wrapper,
    custom,
    denoise_to_zero,
    solver_value,
)
from diffjax.solvers.ddim import ddim
from diffjax.solvers.deis import deis
from diffjax.solvers.dpm_solver import (
    dpm_multistep,
    dpm_solver,
    dpm_solver_fast,
    dpmpp_2m,
    dpmpp_2m_sde,
    dpmpp_2s,
    dpmpp_3m,
    fast_orders,
)
from diffjax.solvers.euler import euler
from diffjax.solvers.heun import heun
from diffjax.solvers.pndm import plms, pndm
from diffjax.solvers.sde import euler_maruyama, predictor_corrector
from diffjax.solvers.time_shift import time_shift
from diffjax.solvers.unipc import unipc

REGISTRY = {
    "ddim": ddim,
    "ddpm": ddpm,
    "euler": euler,
    "euler_ancestral": euler_ancestral,
    "heun": heun,
    "dpm_solver": dpm_solver,
    "dpm_multistep": dpm_multistep,
    "dpmpp_2s": dpmpp_2s,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_3m": dpmpp_3m,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "euler_maruyama": euler_maruyama,
    "predictor_corrector": predictor_corrector,
    "pndm": pndm,
    "plms": plms,
    "unipc": unipc,
    "deis": deis,
}

__all__ = [
    "REGISTRY",
    "GaussianSolver",
    "Solver",
    "State",
    "StepInfo",
    "Wrapper",
    "custom",
    "ddim",
    "ddpm",
    "deis",
    "denoise_to_zero",
    "dpm_multistep",
    "dpm_solver",
    "dpm_solver_fast",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_2s",
    "dpmpp_3m",
    "euler",
    "euler_ancestral",
    "euler_maruyama",
    "fast_orders",
    "heun",
    "plms",
    "pndm",
    "predictor_corrector",
    "solver_value",
    "time_shift",
    "unipc",
]
