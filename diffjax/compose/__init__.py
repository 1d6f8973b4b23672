"""Composing diffusion models at sampling time.

- `stack(d1, ..., dM)`: M denoisers on one schedule, called as a denoiser it is their weighted
  combination (`average`, the score-averaging baseline); `Stack.predictions` gives each model's views.
- `ito_density(solver)`: any solver carrying the Itô estimates of every model's log-density along its
  path (`ito.increment` is the one-step formula); `sample_with_density` reads them out.
- `superdiff(solver, "or" | "and")`: SuperDiff's OR (the mixture) and AND (equal densities).
- `ensemble(experts, router)`: decentralized experts mixed by a router p(k | x_t, t) into one denoiser
  (`classifier_router` learned, `exact_router` for Gaussian-mixture experts, `exact_ensemble`).

    import diffjax as dj
    from diffjax import compose

    models = compose.stack(den_a, den_b)
    x, info = dj.sample(compose.superdiff(dj.solvers.euler_maruyama(), "or"), models, ts, key, x_T)
    x, dinfo = compose.sample_with_density(compose.superdiff(dj.solvers.ddpm(), "and"), models, ts, key, x_T)
    dinfo.log_q  # (B, 2): the running log-densities, equal for AND
"""

from diffjax.compose import ito
from diffjax.compose.ensemble import (
    Ensemble,
    ExactRouter,
    LogitsRouter,
    classifier_router,
    ensemble,
    exact_ensemble,
    exact_router,
    logits_router,
    partition_mixture,
)
from diffjax.compose.ito import (
    DensityInfo,
    DensityState,
    ItoDensity,
    Stack,
    average,
    increment,
    ito_density,
    mix,
    sample_with_density,
    stack,
)
from diffjax.compose.superdiff import SuperDiff, and_weights, superdiff

__all__ = [
    "DensityInfo",
    "DensityState",
    "Ensemble",
    "ExactRouter",
    "LogitsRouter",
    "ItoDensity",
    "Stack",
    "SuperDiff",
    "and_weights",
    "average",
    "classifier_router",
    "ensemble",
    "exact_ensemble",
    "exact_router",
    "increment",
    "ito",
    "ito_density",
    "logits_router",
    "mix",
    "partition_mixture",
    "sample_with_density",
    "stack",
    "superdiff",
]
