r"""What the multistep solvers share: the order of each step, the declared convergence order, and
the names of the ways to start.

DPM-Solver(++) multistep, SDE-DPM-Solver++(2M), DEIS and UniPC keep the model outputs of earlier
steps in a `History` and pick each step's order as a traced integer (`step_order`, branch-free):

- warm-up: step i (counted from 0) uses at most order i + 1, the outputs it has;
- `lower_order_final`: step i uses at most n - i, the steps left, so the last step is first order
  and the one before at most second. DPM-Solver and DEIS apply it only on grids of fewer than 15
  steps (diffusers' `lower_order_final` threshold; the official DPM-Solver uses 10); UniPC applies
  it on every grid, as diffusers' code and the official UniPC do;
- `euler_at_final` (DPM-Solver): the last step is first order on every grid;
- a step into sigma = 0 (logSNR = inf) is first order: it returns the data prediction exactly.

**Starting.** With `start="lower_order"` (diffusers') the first step is first order, whose local
error O(h^2) caps the global order at 2 once that step's error dominates, which happens early on
grids that do not start in almost pure noise (an EDM grid over sigma in [0.2, 5]; at sigma_max = 80
or logSNR = -10, x0 barely moves over the first step and the cap shows only at thousands of
steps). `start="singlestep"` takes the first step as a `head` step with the singlestep
third-order DPM-Solver++ update (3 NFE, local error O(h^4)); it records the model output at the
start time in the solver's history and advances the counters, so the second step has two outputs
and the third a full history, and the method keeps its nominal order up to 4.

**Declared order.** A fixed number of steps of order q adds O(h^(q + 1)) to the global error, so
the declared order is the nominal order of the middle steps capped by q + 1 for every special step
(`global_order`). The < 15 rule does not change the asymptotic order; a first-order last step
(UniPC's `lower_order_final`, `euler_at_final`) caps it at 2.
"""

from __future__ import annotations

from collections.abc import Iterable

import jax.numpy as jnp

from diffjax import _checks

LOWER_ORDER_FINAL_BELOW = 15  # diffusers' threshold for DPM-Solver and DEIS (the official DPM-Solver code uses 10)
STARTS = ("lower_order", "singlestep")
START_ORDER = 3  # the order of the singlestep start


def step_order(order: int, i, n, *, into_zero, lower_order_final: bool, below: int | None = None,
               euler_at_final: bool = False):  # fmt: skip
    """The order of step i of a grid of n steps (traced int32), branch-free.

    Args:
      order: the solver's order (its history holds order - 1 earlier outputs).
      i: steps taken before this one (a traced int32; 0 for the first step).
      n: steps in the grid.
      into_zero: whether the step lands on sigma = 0 (a traced bool); such a step is first order.
      lower_order_final: use at most order n - i (the steps left) on the last steps.
      below: apply `lower_order_final` only when n < below (DPM-Solver's and DEIS's rule, 15);
        None applies it on every grid (UniPC's).
      euler_at_final: the last step is first order on every grid.

    Returns:
      The order of the step: min(order, i + 1), lowered as above.
    """
    k = jnp.minimum(order, i + 1)
    remaining = n - i
    if lower_order_final:
        lowered = jnp.minimum(k, remaining)
        k = lowered if below is None else jnp.where(n < below, lowered, k)
    if euler_at_final:
        k = jnp.where(remaining == 1, 1, k)
    return jnp.where(into_zero, 1, k)


def warm_up_orders(order: int, start: str, boost: int = 0) -> list[int]:
    """The orders of the first steps before the history is full (`boost` = 1 for a step that a
    corrector lifts by one): [1, 2, ..., order - 1] (+ boost) for a lower-order start, the
    singlestep start's order then [2, ..., order - 1] (+ boost) for a singlestep start."""
    warm = [k + boost for k in range(1, order)]
    if start == "singlestep":
        warm = [START_ORDER] + warm[1:]
    return warm


def global_order(nominal: float, special_orders: Iterable[int]) -> float:
    """The global order of a method of order `nominal` whose special steps (warm-up, final) have
    the orders `special_orders`: a fixed number of steps of order q adds O(h^(q + 1))."""
    return float(min([nominal] + [q + 1 for q in special_orders]))


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_start(start: str) -> str:
    _checks.one_of("start", start, STARTS)
    return start
