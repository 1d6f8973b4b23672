r"""Inverse problems by name: the degradations and the methods `experiments/invert.py` and the
benchmarks compare, each a few lines over the method modules.

A task names a measurement operator for an image shape (`task_operator`):

| task | operator |
|---|---|
| box | inpainting of a centred box of half the image's side |
| random | inpainting with half the pixels missing at random (shared over channels) |
| sr2, sr4 | super-resolution: block averaging by 2 or 4 |
| blur | circular Gaussian blur (a kernel of side about a third of the image, std side / 10) |
| motion | circular motion blur (`operators.motion_kernel`) |

Blur operators treat frequencies whose gain is below `BLUR_TOL` (5% of the peak; DDRM's official
deblurring cuts at 3%) as unobserved: inverting them would multiply the measurement noise by up to
1000 (the default operator tolerance), which ruins A^+ y and RED-diff's start from it.

A method restores x from y = A x + sigma_y n with one prior (`restore`): "pinv" is the
measurement-only baseline A^+ y; "dps", "steered" (steered diffusion with the squared measurement
residual as its loss), "pigdm", "ddrm", "reddiff" and "repaint" are the methods of
this package with their options given as a dict (`METHOD_OPTIONS` lists them and their defaults).
RePaint applies to the inpainting tasks only (`applies`).

PiGDM samples with DDPM (DDIM with eta = 1) by default: against DDIM (eta = 0) it raised box
inpainting of 32x32 shapes from 23.6 to 37.1 dB and deblurring from 17.4 to 22.9 dB (BENCHMARKS.md).
Its `data_variance` (1 = the paper) may be `"data"`, which `resolve` measures on the training set:
that helped digits (variance 0.57; box 15.8 -> 16.9 dB) but not shapes (0.25; box 37.1 -> 33.4 dB).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax import _checks, specs
from diffjax import timesteps as timesteps_lib
from diffjax.guidance import operators
from diffjax.guidance.ddrm import ddrm
from diffjax.guidance.dps import dps, measurement_loss, steered
from diffjax.guidance.pigdm import pigdm
from diffjax.guidance.reddiff import red_diff
from diffjax.guidance.repaint import repaint
from diffjax.sampling import prior_sample, sample
from diffjax.solvers import REGISTRY as SOLVERS

BLUR_TOL = 0.05  # Fourier coefficients below 5% of the kernel's peak gain count as unobserved
TASKS = ("box", "random", "sr2", "sr4", "blur", "motion")
METHODS = ("pinv", "dps", "steered", "pigdm", "ddrm", "reddiff", "repaint")
METHOD_OPTIONS = {  # each method's options and their defaults (steps: sampling steps on `grid`)
    "pinv": {},
    "dps": dict(steps=100, solver="ddpm", zeta=1.0, grid="uniform"),
    "steered": dict(steps=50, solver="ddim", rho=1.0, repeats=1, grid="uniform"),
    "pigdm": dict(steps=50, solver="ddpm", scale=1.0, data_variance=1.0, grid="uniform"),
    "ddrm": dict(steps=20, eta=0.85, eta_b=1.0, grid="uniform"),
    "reddiff": dict(steps=50, lr=0.1, lmbda=0.25, grid="uniform"),
    "repaint": dict(steps=50, solver="ddpm", jump_length=5, jump_n_sample=3, grid="uniform"),
}


def task_operator(task: str, event_shape, key) -> operators.LinearOperator:
    """The measurement operator of `task` (see the module docstring) for images of `event_shape`.

    Args:
      task: one of `TASKS`.
      event_shape: (H, W, C).
      key: a typed key for the random mask and the motion kernel.

    Returns:
      A linear operator with its SVD.

    Raises:
      ValueError: if `task` is not one of `TASKS` or the image is too small for it.
    """
    _checks.one_of("task", task, TASKS)
    h, w = event_shape[:2]
    if task == "box":
        return operators.inpainting(operators.box_mask(event_shape, h // 4, w // 4, h // 2, w // 2))
    if task == "random":
        return operators.inpainting(operators.random_mask(key, event_shape, 0.5))
    if task in ("sr2", "sr4"):
        return operators.downsample(event_shape, int(task[2]))
    side = max(3, (min(h, w) // 3) | 1)
    kernel = operators.gaussian_kernel(side, max(min(h, w) / 10, 0.5)) if task == "blur" else None
    if kernel is None:
        kernel = operators.motion_kernel(key, side)
    return operators.blur(kernel, event_shape, tol=BLUR_TOL)


def applies(method: str, operator) -> bool:
    """Whether `method` can restore measurements of `operator` (RePaint: inpainting only)."""
    return method != "repaint" or isinstance(operator, operators.Inpainting)


def options(method: str, given: dict | None = None, *, field: str = "options") -> dict:
    """`method`'s options: its defaults (`METHOD_OPTIONS`) updated by `given`, whose keys must be
    among them (a ValueError naming `field` and the allowed keys otherwise)."""
    _checks.one_of("method", method, METHODS)
    chosen = dict(METHOD_OPTIONS[method])
    unknown = set(given or {}) - set(chosen)
    if unknown:
        raise ValueError(f"{field} has no option(s) {sorted(unknown)} for {method}; allowed: {sorted(chosen)}")
    chosen.update(given or {})
    return chosen


def resolve(method: str, settings: dict, dataset, *, field: str | None = None) -> dict:
    """`settings` with data-dependent values measured: PiGDM's `data_variance="data"` becomes the
    training data's pooled variance (`Dataset.variance`); a number (or a number's string, as the command
    line gives it) becomes a float. Other methods' settings are returned as they are.

    Args:
      method: one of `METHODS`.
      settings: the method's options (see `options`).
      dataset: the prior's training data (a `diffjax.data.Dataset`).
      field: how errors name the settings (default: the method's name).

    Returns:
      A new dict of settings.

    Raises:
      ValueError: if PiGDM's data_variance is neither "data" nor a positive finite number.
    """
    settings, field = dict(settings), field or method
    if method == "pigdm" and "data_variance" in settings:
        value = settings["data_variance"]
        if value == "data":
            settings["data_variance"] = dataset.variance()
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ValueError(f'{field}.data_variance must be "data" or a number > 0, got {value!r}') from None
            settings["data_variance"] = _checks.positive(f"{field}.data_variance", number)
    return settings


def restore(method: str, denoiser, operator, y, sigma_y: float, key, shape, *, settings: dict | None = None):
    """Restore x from y = A x + sigma_y n with `method` and the prior `denoiser`.

    Args:
      method: one of `METHODS`.
      denoiser: the prior (any Denoiser; its `cond` is used as set, e.g. the null label).
      operator: the measurement operator.
      y: the measurements (B, *measurement_shape).
      sigma_y: the measurement noise's standard deviation (DPS ignores it, as in the paper).
      key: a typed key.
      shape: the shape (B, *event) of the restorations.
      settings: the method's options (see `options`).

    Returns:
      (x (B, *event), nfe, backward): the restorations, network evaluations per restoration and
      whether each evaluation also runs a backward pass (DPS, PiGDM).
    """
    o = options(method, settings)
    if method == "pinv":
        return operator.pinv(y), 0, False
    sched = denoiser.schedule
    ts = specs.parse(f"{method}.grid", o["grid"], timesteps_lib.REGISTRY)(sched, o["steps"])
    key_start, key_run = jax.random.split(key)
    x_T = prior_sample(key_start, sched, ts, shape)
    solver_of = lambda: specs.parse(f"{method}.solver", o["solver"], SOLVERS)()  # noqa: E731
    if method == "dps":
        solver, den, backward = dps(solver_of(), operator, y, o["zeta"]), denoiser, True
    elif method == "steered":
        loss = measurement_loss(operator, y, squared=True)
        solver, den, backward = steered(solver_of(), loss, o["rho"], repeats=o["repeats"]), denoiser, True
    elif method == "pigdm":
        solver, den, backward = solver_of(), pigdm(denoiser, operator, y, sigma_y, scale=o["scale"],
                                                     data_variance=o["data_variance"]), True  # fmt: skip
    elif method == "ddrm":
        solver, den, backward = ddrm(operator, y, sigma_y, eta=o["eta"], eta_b=o["eta_b"]), denoiser, False
    elif method == "reddiff":
        solver, den, backward = red_diff(operator, y, lr=o["lr"], lmbda=o["lmbda"]), denoiser, False
    else:
        x, info = repaint(denoiser, ts, key_run, x_T, y, operator.mask, solver=solver_of(),
                                  jump_length=o["jump_length"], jump_n_sample=o["jump_n_sample"])  # fmt: skip
        return x, int(info.nfe), False
    x, info = sample(solver, den, ts, key_run, x_T)
    return x, int(info.nfe), backward


def measurement_error(operator, x, y) -> jax.Array:
    """||y - A x|| per sample over the measurement's axes, (B,): a restoration's consistency with y."""
    r = (jnp.asarray(y) - operator(x)).reshape(len(x), -1)
    return jnp.sqrt(jnp.sum(r**2, axis=-1))
