"""Samplers as pure `Solver(init, step)` pairs; any solver works with any schedule and method."""

from diffjax.solvers.base import Solver, State, StepInfo
from diffjax.solvers.ddim import ddim
from diffjax.solvers.euler import euler

REGISTRY = {"ddim": ddim, "euler": euler}

__all__ = ["REGISTRY", "Solver", "State", "StepInfo", "ddim", "euler"]
