r"""Classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance").

`classifier_free(den, scale, null_cond)` is a denoiser whose every view is

    view = view(x, t | null) + scale * (view(x, t | cond) - view(x, t | null)),

so its score is the score of p_t(x | c)^scale p_t(x)^(1 - scale). scale = 1 is the conditional
model, 0 the unconditional one; Ho & Salimans' guidance strength w is scale = 1 + w
(eps = (1 + w) eps_c - w eps_u). At fixed (x, t) every view is affine in the network output with
the same coefficients, so combining eps, x0, v, score or velocity gives the same guided model, and
the views stay consistent with each other. Both branches run as one network call on a (2B, ...)
batch.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from diffjax import _checks
from diffjax.denoiser import Prediction


def _to_batch(c, batch: int):
    """A condition of shape () or (B, ...) as (B, ...)."""
    c = jnp.asarray(c)
    return jnp.broadcast_to(c, (batch,) + c.shape[1:]) if c.ndim else jnp.full((batch,), c)


@struct.dataclass
class ClassifierFree:
    """A guided denoiser; build it with `classifier_free`. `scale` is data (no recompilation)."""

    denoiser: Any
    scale: jax.Array
    null_cond: Any
    cond: Any = None

    @property
    def schedule(self):
        return self.denoiser.schedule

    def __call__(self, x, t, cond=None) -> Prediction:
        cond = self.cond if cond is None else cond
        if cond is None:
            raise ValueError("classifier-free guidance needs a condition: pass cond= to sample() or to the call")
        batch = x.shape[0]
        pair = lambda c, n: jnp.concatenate([_to_batch(c, batch), _to_batch(n, batch)])
        conds = jax.tree.map(pair, cond, self.null_cond)
        t = jnp.asarray(t)
        times = t if t.ndim == 0 else jnp.concatenate([t, t])
        guided = self.denoiser(jnp.concatenate([x, x]), times, conds)
        combine = lambda view: (view[batch:] + self.scale * (view[:batch] - view[batch:])).astype(x.dtype)
        return Prediction(*(combine(view) for view in guided))


def classifier_free(denoiser, scale, null_cond) -> ClassifierFree:
    """Guide `denoiser` (called as `denoiser(x, t, cond)`) with `scale`; `null_cond` is the
    "no condition" input it was trained with under label dropout (for diffjax's networks the
    label `num_classes`). A condition of shape () or (B, ...) is broadcast to the batch."""
    if not callable(denoiser) or not hasattr(denoiser, "schedule"):
        raise ValueError(f"denoiser must be callable as denoiser(x, t, cond) and have a .schedule, got {denoiser!r}")
    if null_cond is None:
        raise ValueError("null_cond must be the unconditional input (e.g. the null label num_classes), got None")
    return ClassifierFree(denoiser, jnp.asarray(_checks.finite("scale", scale)), null_cond)
