r"""Classifier-free guidance (Ho & Salimans 2022) and its variants: guidance rescale, guidance
interval and CFG++.

**CFG.** `classifier_free(den, scale, null_cond)` is a denoiser whose every view is

    view_w = scale * view(x, t | cond) + (1 - scale) * view(x, t | null),

so its score is the score of p_t(x | c)^scale p_t(x)^(1 - scale). scale = 1 is the conditional
model and 0 the unconditional one, both bit-exactly (the two-ended form above); Ho & Salimans'
guidance strength w is scale = 1 + w (eps = (1 + w) eps_c - w eps_u). At fixed (x, t) every view is
affine in the network output with the same coefficients, so combining eps, x0, v, score or
velocity gives the same guided model, and the views stay consistent with each other
(alpha x0 + sigma eps = x). Both branches run as one network call on a (2B, ...) batch.

**Guidance rescale** (Lin, Liu, Li & Yang, WACV 2024, "Common Diffusion Noise Schedules and Sample
Steps are Flawed", §3.4). For one view o (`rescale_view`: "eps", "v" or "x0"; by default the
network's own output, as diffusers' `rescale_noise_cfg` does),

    o_r = o_w std(o_c) / std(o_w),    o = phi o_r + (1 - phi) o_w = o_w (1 + phi (std(o_c) / std(o_w) - 1)),

with the standard deviations taken per sample over all non-batch axes (per particle for flattened
particles; a ratio, so the estimator's ddof does not matter; 1 where std(o_w) = 0). The rescale is
not affine, so the result depends on the view rescaled; the other views follow it: at fixed x
every view is an affine function of any other, so the change delta = o - o_w moves (x0, eps) by the
linear part of that view's conversion (`predictions.to_x0_eps` at x = 0) and every view by
`prediction_views` of that move (`shift`). The guided views stay consistent, and phi = 0, or
scale = 1 (where o_w = o_c), leaves them bit-exactly unchanged.

**Guidance interval** (Kynkäänniemi, Aittala, Karras, Laine, Aila & Lehtinen, NeurIPS 2024,
"Applying Guidance in a Limited Interval Improves Sample and Distribution Quality in Diffusion
Models"). The scale applies only where the VE noise level sigma(t) / alpha(t) lies in
(sigma_lo, sigma_hi]; elsewhere the scale is 1, the CONDITIONAL model (not the unconditional one).
The choice is made per sample (t may be (B,)) with `jnp.where`, so outside the interval both branches
still run in the one batched call: the interval changes the result, not the cost.

**CFG++** (Chung, Kim, Park, Nam & Ye, ICLR 2025, "CFG++: Manifold-constrained Classifier Free
Guidance for Diffusion Models"). `classifier_free_pp(den, lmbda, null_cond)` returns the views of

    x0 = x0_lambda (the x0 of eps_lambda = eps_u + lambda (eps_c - eps_u), lambda in [0, 1]),   eps = eps_u,

(v, score and velocity built from these two by `prediction_views`). These views are NOT consistent
with x: alpha x0 + sigma eps = x + sigma lambda (eps_u - eps_c) != x. A solver that renoises with
the prediction's eps takes CFG++'s step: DDIM(eta=0) gives x_s = alpha_s x0_lambda + sigma_s eps_u,
the paper's DDIM-CFG++ (and its VE-Euler form), `ddim(eta > 0)` and `ddpm()` its stochastic
analogue (`gaussian.posterior` reads x0 and eps). Solvers that recompute the direction from x and
x0 alone (`euler`, `heun`, `euler_ancestral`, `dpmpp_2s`, `dpmpp_2m`, `dpmpp_3m`, `dpmpp_2m_sde`,
`dpm_multistep` with its default algorithm "dpmsolver++", `unipc`) give plain CFG with scale lambda
instead, and solvers that read only eps or the score (`deis`, `pndm`, `plms`, `dpm_solver`,
`dpm_solver_fast`, `dpm_multistep(algorithm="dpmsolver")`, `euler_maruyama`, `predictor_corrector`)
give the unconditional model.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from diffjax import _checks, predictions
from diffjax.arrays import Value, broadcast_to_x
from diffjax.denoiser import Prediction, prediction_views

RESCALE_VIEWS = ("eps", "v", "x0")
# the view a network's own output is rescaled in; a score is -eps / sigma, whose rescale is the eps one
_OUTPUT_VIEWS = {"eps": "eps", "score": "eps", "v": "v", "x0": "x0"}


def _to_batch(c, batch: int):
    """A condition of shape () or (B, ...) as (B, ...)."""
    c = jnp.asarray(c)
    return jnp.broadcast_to(c, (batch,) + c.shape[1:]) if c.ndim else jnp.full((batch,), c)


def _branches(denoiser, null_cond, cond, x, t) -> tuple[Prediction, Prediction]:
    """(conditional, unconditional) predictions at (x, t) from one call on a (2B, ...) batch."""
    if cond is None:
        raise ValueError("classifier-free guidance needs a condition: pass cond= to sample() or to the call")
    batch = x.shape[0]
    pair = lambda c, n: jnp.concatenate([_to_batch(c, batch), _to_batch(n, batch)])
    conds = jax.tree.map(pair, cond, null_cond)
    times = t if t.ndim == 0 else jnp.concatenate([t, t])
    both = denoiser(jnp.concatenate([x, x]), times, conds)
    return Prediction(*(view[:batch] for view in both)), Prediction(*(view[batch:] for view in both))


def _lerp(w, conditional, unconditional, dtype):
    """w c + (1 - w) u: exactly c at w = 1 and exactly u at w = 0."""
    return (w * conditional + (1 - w) * unconditional).astype(dtype)


def _per_sample_std(a):
    return jnp.std(a.reshape(a.shape[0], -1), axis=-1)


def shift(pred: Prediction, schedule, t, view: str, delta) -> Prediction:
    """`pred` with its `view` ("eps", "v", "x0" or "score") moved by `delta` and every other view moved
    with it, so that the views stay as consistent as they were.

    At fixed x each view is an affine function of any other, so the move of (x0, eps) is the linear
    part of `view`'s conversion (`predictions.to_x0_eps` at x = 0), and the move of every view is
    `prediction_views` of that. delta = 0 leaves `pred` bit-exactly unchanged.

    Args:
      pred: the `Prediction` at (x, t).
      schedule: the schedule of `pred`.
      t: the time, scalar or (B,).
      view: the view `delta` applies to, "eps", "v", "x0" or "score".
      delta: the change of that view, shaped like x.

    Returns:
      The moved `Prediction`, in the dtype of `pred.x0`.
    """
    t = jnp.asarray(t)
    alpha, sigma = (broadcast_to_x(f(t), delta) for f in (schedule.alpha, schedule.sigma))
    zero = jnp.zeros_like(delta)
    dx0, deps = predictions.to_x0_eps(
        view, delta, x=zero, alpha=alpha, sigma=sigma, dalpha=None, dsigma=None, sigma_data=None
    )
    moved = prediction_views(schedule, dx0, deps, t)
    return Prediction(*((a + b).astype(pred.x0.dtype) for a, b in zip(pred, moved)))


@struct.dataclass(eq=False)
class ClassifierFree(Value):
    """A guided denoiser; build it with `classifier_free`.

    Attributes:
      denoiser: the model called as `denoiser(x, t, cond)` (pytree).
      scale: the guidance scale (leaf: a new scale does not recompile).
      null_cond: the unconditional input (pytree).
      rescale: phi in [0, 1] of guidance rescale, 0 = off (leaf).
      interval: (sigma_lo, sigma_hi) of the guidance interval in VE noise levels (leaf), or None to
        guide at every time.
      cond: the condition, set by `sample(cond=...)` (pytree).
      rescale_view: the view rescaled, one of `RESCALE_VIEWS`, or None when rescale is off and the
        denoiser's output has no such view (static).
    """

    denoiser: Any
    scale: jax.Array
    null_cond: Any
    rescale: jax.Array
    interval: jax.Array | None
    cond: Any = None
    rescale_view: str | None = struct.field(pytree_node=False, default=None)

    @property
    def schedule(self):
        """The wrapped denoiser's schedule."""
        return self.denoiser.schedule

    def __call__(self, x, t, cond=None) -> Prediction:
        t = jnp.asarray(t)
        conditional, unconditional = _branches(self.denoiser, self.null_cond, self.cond if cond is None else cond, x, t)
        scale = self.scale
        if self.interval is not None:
            level = self.schedule.ve_sigma(t)
            inside = (level > self.interval[0]) & (level <= self.interval[1])
            scale = jnp.where(inside, scale, jnp.ones_like(scale))
        scale = broadcast_to_x(scale, x)
        guided = Prediction(*(_lerp(scale, c, u, x.dtype) for c, u in zip(conditional, unconditional)))
        if self.rescale_view is None:
            return guided
        o_w, o_c = getattr(guided, self.rescale_view), getattr(conditional, self.rescale_view)
        std_w, std_c = _per_sample_std(o_w), _per_sample_std(o_c)
        ratio = jnp.where(std_w > 0, std_c / jnp.where(std_w > 0, std_w, 1), 1)
        delta = o_w * (self.rescale * broadcast_to_x(ratio - 1, o_w))
        return shift(guided, self.schedule, t, self.rescale_view, delta.astype(x.dtype))


@struct.dataclass(eq=False)
class ClassifierFreePP(Value):
    """A CFG++ denoiser; build it with `classifier_free_pp`.

    Attributes:
      denoiser: the model called as `denoiser(x, t, cond)` (pytree).
      lmbda: lambda in [0, 1] (leaf: a new lambda does not recompile).
      null_cond: the unconditional input (pytree).
      cond: the condition, set by `sample(cond=...)` (pytree).
    """

    denoiser: Any
    lmbda: jax.Array
    null_cond: Any
    cond: Any = None

    @property
    def schedule(self):
        """The wrapped denoiser's schedule."""
        return self.denoiser.schedule

    def __call__(self, x, t, cond=None) -> Prediction:
        t = jnp.asarray(t)
        conditional, unconditional = _branches(self.denoiser, self.null_cond, self.cond if cond is None else cond, x, t)
        x0 = _lerp(broadcast_to_x(self.lmbda, x), conditional.x0, unconditional.x0, x.dtype)
        return prediction_views(self.schedule, x0, unconditional.eps.astype(x.dtype), t)


def _check_guided(denoiser, null_cond):
    if not callable(denoiser) or not hasattr(denoiser, "schedule"):
        raise ValueError(f"denoiser must be callable as denoiser(x, t, cond) and have a .schedule, got {denoiser!r}")
    if null_cond is None:
        raise ValueError("null_cond must be the unconditional input (e.g. the null label num_classes), got None")
    _checks.labels("null_cond", null_cond, _checks.num_classes_of(denoiser))


def _check_interval(interval):
    if interval is None:
        return None
    if not isinstance(interval, (tuple, list)) or len(interval) != 2:
        raise ValueError(f"interval must be None or a pair (sigma_lo, sigma_hi), got {interval!r}")
    low = _checks.in_range("sigma_lo", interval[0], 0.0, math.inf)
    high = interval[1]
    if not (isinstance(high, (int, float)) and high == math.inf):
        high = _checks.finite("sigma_hi", high)
    _checks.less("sigma_lo", low, "sigma_hi", high)
    return jnp.asarray([low, high])


def _resolve_view(denoiser, rescale_view, rescale: float):
    if rescale_view is not None:
        _checks.one_of("rescale_view", rescale_view, RESCALE_VIEWS)
        return rescale_view
    view = _OUTPUT_VIEWS.get(getattr(denoiser, "prediction", None))
    if view is None and rescale > 0:
        raise ValueError(
            f"rescale_view must be given (one of {RESCALE_VIEWS}) for a denoiser whose output is not eps, v, x0 or "
            f"a score (prediction={getattr(denoiser, 'prediction', None)!r}), got rescale_view=None"
        )
    return view


def classifier_free(
    denoiser, scale, null_cond, *, rescale: float = 0.0, rescale_view: str | None = None, interval=None
) -> ClassifierFree:
    """Classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance"), with
    guidance rescale (Lin et al., WACV 2024) and the guidance interval (Kynkäänniemi et al.,
    NeurIPS 2024) (module docstring).

    Every view is scale * view(cond) + (1 - scale) * view(null); both branches run as one network
    call on a (2B, ...) batch, at every time, inside the interval or not (the interval costs the same
    NFE as plain CFG).

    Args:
      denoiser: the model, called as `denoiser(x, t, cond)`, with a `.schedule`.
      scale: the finite guidance scale; 1 is the conditional model, 0 the unconditional one,
        1 + w Ho & Salimans' strength w. Data: new scales reuse the compiled sampler.
      null_cond: the "no condition" input the model was trained with under label dropout (for
        diffjax's networks the label `num_classes`). A condition of shape () or (B, ...) is broadcast
        to the batch.
      rescale: phi in [0, 1] of guidance rescale (0 = off; 0.7 is the customary value). Data.
      rescale_view: the view rescaled, "eps", "v" or "x0"; None (default) rescales the network's own
        output (`denoiser.prediction`; a score output is rescaled as eps, which is the same). Needed
        when rescale > 0 and the denoiser predicts something else ("velocity", "edm") or has no
        `.prediction`.
      interval: None (guide at every time) or (sigma_lo, sigma_hi) with 0 <= sigma_lo < sigma_hi
        (sigma_hi may be inf): guide only where sigma(t) / alpha(t) lies in (sigma_lo, sigma_hi] and
        use the conditional model elsewhere. Data; switching between None and an interval compiles
        a second program once.

    Returns:
      A `ClassifierFree` denoiser (a value: equal options share one compiled sampler).

    Raises:
      ValueError: if `denoiser` is not callable with a `.schedule`, `null_cond` is None, `scale` is
        not finite, `rescale` is not in [0, 1], `rescale_view` is not one of `RESCALE_VIEWS` (or is
        missing where needed), or `interval` is not a valid pair; when called without a condition.
    """
    _check_guided(denoiser, null_cond)
    scale = _checks.finite("scale", scale)
    rescale = _checks.in_range("rescale", rescale, 0.0, 1.0)
    interval = _check_interval(interval)
    view = _resolve_view(denoiser, rescale_view, rescale)
    return ClassifierFree(denoiser, jnp.asarray(scale), null_cond, jnp.asarray(rescale), interval, rescale_view=view)


def classifier_free_pp(denoiser, lmbda, null_cond) -> ClassifierFreePP:
    """CFG++ (Chung, Kim, Park, Nam & Ye, ICLR 2025, "CFG++: Manifold-constrained Classifier Free
    Guidance for Diffusion Models"): the data prediction of eps_u + lambda (eps_c - eps_u),
    renoised with the unconditional eps_u.

    The denoiser's views are (x0_lambda, eps_u), which are not consistent with x
    (alpha x0 + sigma eps != x). `ddim()` (eta = 0) with it is the paper's DDIM-CFG++
    x_s = alpha_s x0_lambda + sigma_s eps_u; solvers that read only x0 give plain CFG with scale
    lambda, and those that read only eps or the score the unconditional model (module docstring).

    Args:
      denoiser: the model, called as `denoiser(x, t, cond)`, with a `.schedule`.
      lmbda: lambda in [0, 1]; 0 is the unconditional model. Data: new values reuse the compiled
        sampler.
      null_cond: the unconditional input, as for `classifier_free`.

    Returns:
      A `ClassifierFreePP` denoiser.

    Raises:
      ValueError: if `denoiser` is not callable with a `.schedule`, `null_cond` is None or `lmbda`
        is not in [0, 1]; when called without a condition.
    """
    _check_guided(denoiser, null_cond)
    lmbda = _checks.in_range("lmbda", lmbda, 0.0, 1.0)
    return ClassifierFreePP(denoiser, jnp.asarray(lmbda), null_cond)
