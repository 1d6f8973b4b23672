r"""SuperDiff (Skreta, Atanackovic, Bose, Tong & Neklyudov 2025, "The Superposition of Diffusion Models
Using the Itô Density Estimator"): sampling the mixture (OR) or the equal-density set (AND) of M
pretrained models from their scores alone, with the running log-densities ell_m of `ito.py`.

At every step the sampler moves with the kappa-weighted combination of the models, sum_m kappa_m view_m
(sum kappa = 1; every view is affine in the score, so the views stay consistent), and updates each
ell_m by the Itô increment along the path it actually took.

**OR** (the mixture sum_m w_m q_m): kappa = softmax(temperature * ell + bias), fixed within a step. With
exact ell_m = log q_m,t(x_t) and temperature 1, kappa_m = q_m,t / sum_j q_j,t, and sum_m kappa_m s_m is
exactly the score of the equal-weight mixture (the bias log w adds weights w). Any solver works: a
solver that evaluates the model several times per step calls the combined model with that step's
kappa every time.

**AND** (samples where all models are equally likely): kappa is chosen so that the increments of all
ell_m over the step are equal. For a step whose result is affine in the prediction, x'(kappa) =
sum_j kappa_j x'_j with x'_j the step taken with model j's prediction and the same noise, so
Delta ell_i(kappa) = sum_j A_ij kappa_j + c_i with A_ij = <x'_j - x, s_i>, c_i = h [D f + f <x, s_i> -
1/2 g^2 ||s_i||^2] (- 1/2 g^2 h div s_i on an ODE path). Equal increments with sum kappa = 1 are the
(M + 1) x (M + 1) linear system [A, -1; 1^T, 0] [kappa; lambda] = [-c; 1], solved per sample; for two
models it is the closed form

    kappa_1 = (A_22 - A_12 + c_2 - c_1) / (A_11 - A_21 - A_12 + A_22),   kappa_2 = 1 - kappa_1,

whose denominator is <x'_1 - x'_2, s_1 - s_2> (g^2 h ||s_1 - s_2||^2 for Euler-Maruyama, the official
code's 2 dt beta-bar ||s_1 - s_2||^2). Where it vanishes (equal scores) or the solve is not finite,
kappa = 1/M (any kappa then gives equal increments). kappa is not clipped to [0, 1], as in the
official code. The official code draws the noise first, takes the step of model 2 (kappa = 0) and
solves for kappa; this is the same computation for M = 2.

Solvers that AND can use: one network evaluation per step, at the step's own (x, t), with the new
sample affine in that prediction given the state: `ddim`, `ddpm`, `euler`, `euler_ancestral`,
`euler_maruyama`, `dpmpp_2m_sde`, and the multistep `dpm_multistep`/`dpmpp_2m`/`dpmpp_3m`, `deis`,
`unipc` (with their default lower-order start; the history is fixed within the step). Refused: `heun`,
`dpmpp_2s`, `dpm_solver`/`dpm_solver_fast`, `pndm`, `plms` (Runge-Kutta warm-up), `predictor_corrector`,
`time_shift` and any solver with head or tail steps (several evaluations at other points) and
`custom` solvers (unknown). The per-model steps are computed without network calls (each is the inner
step handed a precomputed prediction), so AND costs M evaluations a step, as OR does.

AND on an SDE path is biased: its kappa depends on the step's noise z (the O(sqrt(h)) noise term of
<x' - x, s_1 - s_2> is divided by an O(h) denominator) and cancels the noise along s_1 - s_2, so the path's
diffusion is no longer g and the Itô estimate misses -1/2 g^2 h u^T (ds/dx) u (u the unit vector along
s_1 - s_2). On the T-SD pair (tests/test_compose.py) DDPM and Euler-Maruyama end at a median
|log p1(x) - log p2(x)| of about 1.1 nat, deterministic solvers (Euler, DPM-Solver++(2M)) at 0.03-0.06. The
official code shares this property. Prefer a deterministic inner solver for AND.

Checked against the official code (necludov/super-diffusion @e3afac2, `notebooks/superposition_edu.ipynb`
and `cifar/dynamics.py`): OR's kappa = softmax(T ell + bias) with T = 1, bias 0 in the toy code; AND's
two-model closed form above (their sign conventions, reverse time dt > 0, give the same kappa); `lift`
(a target difference of the increments) is not offered.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffjax import _checks
from diffjax.arrays import Value
from diffjax.compose import ito
from diffjax.denoiser import Prediction
from diffjax.solvers.base import Solver, check_solver

MODES = ("or", "and")


class _Frozen:
    """A denoiser that answers only the step's own call (x, t), with a given prediction: how AND takes the
    inner step with one model's prediction without a network call. Any other call is an error."""

    def __init__(self, schedule, x, t, pred):
        self.schedule, self._x, self._t, self._pred = schedule, x, t, pred

    def __call__(self, x, t, cond=None):
        if x is self._x and t is self._t and cond is None:
            return self._pred
        raise ValueError(
            "superdiff(mode='and') needs a solver that evaluates the model once per step at the step's own (x, t); "
            "this solver evaluates it elsewhere"
        )


def _model(preds: Prediction, j: int) -> Prediction:
    return Prediction(*(v[j] for v in preds))


def and_weights(a, c):
    """kappa (B, M) making every row of A kappa + c equal with sum kappa = 1: a (B, M, M) with A_ij =
    <x'_j - x, s_i>, c (B, M). Closed form for M = 2, a linear solve otherwise; 1/M where not determined."""
    batch, m = c.shape
    uniform = jnp.full((batch, m), 1.0 / m, c.dtype)
    if m == 2:
        num = a[:, 1, 1] - a[:, 0, 1] + c[:, 1] - c[:, 0]
        den = a[:, 0, 0] - a[:, 1, 0] - a[:, 0, 1] + a[:, 1, 1]
        ok = jnp.abs(den) > 1e-12 * (jnp.abs(a).sum((1, 2)) + 1e-300)
        k1 = num / jnp.where(ok, den, 1.0)
        kappa = jnp.stack([k1, 1.0 - k1], axis=-1)
    else:
        top = jnp.concatenate([a, -jnp.ones((batch, m, 1), a.dtype)], axis=2)
        bottom = jnp.concatenate([jnp.ones((batch, 1, m), a.dtype), jnp.zeros((batch, 1, 1), a.dtype)], axis=2)
        system = jnp.concatenate([top, bottom], axis=1)
        rhs = jnp.concatenate([-c, jnp.ones((batch, 1), c.dtype)], axis=1)
        kappa = jnp.linalg.solve(system, rhs[..., None])[..., :m, 0]
        ok = jnp.ones((batch,), bool)
    ok = ok & jnp.all(jnp.isfinite(kappa), axis=-1)
    return jnp.where(ok[:, None], kappa, uniform)


@struct.dataclass(eq=False)
class SuperDiff(Value, ito.Tracking):
    """SuperDiff OR / AND around an inner solver; build it with `superdiff`.

    Attributes:
      inner: the inner solver (static).
      temperature: OR's temperature T (leaf: a new value never recompiles).
      bias: OR's bias, a scalar or (M,) (leaf).
      mode: "or" or "and" (static).
      num_models: M (static).
      path: "sde" or "ode", the Itô estimator's path (static).
      num_probes: Hutchinson probes per step on the ODE path (static).
    """

    inner: Solver
    temperature: jax.Array
    bias: jax.Array
    mode: str = struct.field(pytree_node=False, default="or")
    num_models: int = struct.field(pytree_node=False, default=2)
    path: str = struct.field(pytree_node=False, default="sde")
    num_probes: int = struct.field(pytree_node=False, default=1)

    def weights(self, state, stack_, preds, div, step_fn, key, t, t_next):
        """The mixing weights kappa (B, M) of one step: a softmax of the tracked log-densities for 'or',
        the weights that keep the models' log-densities equal after the step for 'and' (Skreta et al. 2025)."""
        if self.mode == "or":
            logits = self.temperature * state.log_q + self.bias
            return jax.nn.softmax(logits, axis=-1).astype(state.kappa.dtype)
        x = state.x
        steps = []
        for j in range(stack_.num_models):
            inner, _ = step_fn(state.inner, key, t, t_next, _Frozen(stack_.schedule, x, t, _model(preds, j)))
            steps.append(inner.x)
        steps = jnp.stack(steps)  # (M, B, *event): x'_j
        # A[b, i, j] = <x'_j - x, s_i>
        a = jnp.einsum("jbe,ibe->bij", (steps - x).reshape(steps.shape[:2] + (-1,)),
                       preds.score.reshape(preds.score.shape[:2] + (-1,)))  # fmt: skip
        c = ito.step_increments(stack_.schedule, x, x, preds, div, t, t_next)  # (B, M): the x'-independent part
        return and_weights(a, c).astype(state.kappa.dtype)


def _and_solver_problem(solver) -> str | None:
    """Why AND cannot use `solver` (None when it can)."""
    from diffjax.solvers.ancestral import DDPM, EulerAncestral
    from diffjax.solvers.ddim import DDIM
    from diffjax.solvers.deis import DEIS
    from diffjax.solvers.dpm_solver import DPMMultistep, DPMSolverPP2MSDE
    from diffjax.solvers.euler import Euler
    from diffjax.solvers.sde import EulerMaruyama
    from diffjax.solvers.unipc import UniPC

    allowed = (DDIM, DDPM, EulerAncestral, Euler, EulerMaruyama, DPMSolverPP2MSDE, DPMMultistep, DEIS, UniPC)
    if not isinstance(solver, allowed):
        return "its step is not one evaluation at (x, t) with a result affine in the prediction"
    if solver.head or solver.tail:
        return "it has warm-up or final steps that evaluate the model at other points (use its default start)"
    return None


def superdiff(
    solver: Solver,
    mode: str = "or",
    *,
    temperature: float = 1.0,
    bias=0.0,
    num_models: int | None = None,
    path: str | None = None,
    num_probes: int = 1,
) -> SuperDiff:
    """SuperDiff (Skreta et al. 2025, "The Superposition of Diffusion Models Using the Itô Density
    Estimator"): OR (the mixture) or AND (equal densities) of the models of a `stack`, around any inner
    solver (AND: the solvers listed in the module docstring).

    `dj.sample(superdiff(inner, "or"), stack(d1, d2), ts, key, x_T)` samples the superposition;
    `ito.sample_with_density` also returns the running log-densities and the weights of every step.

    Args:
      solver: the inner solver.
      mode: "or" (kappa = softmax(temperature * ell + bias)) or "and" (kappa equalising the increments of
        every ell_m).
      temperature: OR's finite temperature (1 gives the mixture; large values approach an argmax, as the
        official CIFAR code's 1e6). Data: new values reuse the compiled sampler. AND takes none.
      bias: OR's finite bias, a scalar or M values (log w gives mixture weights w). Data. AND takes none.
      num_models: M, the stack's number of models (default: the length of a vector bias, else 2; checked
        against the stack when traced).
      path: the Itô estimator's path, "sde", "ode" or None (from `solver.stochastic`), as in
        `ito.ito_density`.
      num_probes: Hutchinson probes per step on the ODE path (>= 1).

    Returns:
      A `SuperDiff` solver value; NFE M per evaluation of the inner solver (plus M num_probes JVPs on the
      ODE path).

    Raises:
      ValueError: for an unknown mode, a non-finite temperature or bias, a bias of another length than
        num_models, num_models < 2, a temperature or bias given with mode "and", a solver that AND cannot use
        (naming it), or a path that does not fit the solver.
    """
    _checks.one_of("mode", mode, MODES)
    temperature = _checks.finite("temperature", temperature)
    b = np.asarray(bias, dtype=np.float64)
    if b.ndim > 1 or not np.all(np.isfinite(b)):
        raise ValueError(f"bias must be a finite number or a vector of finite numbers (one per model), got {bias!r}")
    if num_models is None:
        num_models = b.shape[0] if b.ndim == 1 else 2
    check_solver("solver", solver)
    if mode == "and":
        if temperature != 1.0 or np.any(b != 0):
            raise ValueError(
                f"temperature and bias are OR's; mode='and' takes none, got temperature={temperature}, bias={bias!r}"
            )
        if (why := _and_solver_problem(solver)) is not None:
            raise ValueError(f"solver {solver!r} cannot be used with mode='and': {why}")
    num_models, path, num_probes = ito.check_tracking(solver, num_models, path, num_probes)
    if b.ndim == 1 and b.shape[0] != num_models:
        raise ValueError(f"bias must have num_models={num_models} entries, got {b.shape[0]}")
    return SuperDiff(solver, jnp.asarray(temperature), jnp.asarray(b), mode, num_models, path, num_probes)
