"""Guidance and inverse problems: one diffusion prior, many tasks, without retraining.

`cfg` is classifier-free guidance and its variants (rescale, interval, CFG++); `classifier` is
classifier guidance with a noise-aware classifier; `operators` are the measurement operators
(masks, downsampling, blur, any matrix or function) with their SVDs; `dps`, `pigdm`, `ddrm`,
`reddiff` and `repaint` solve y = A x + sigma_y n with any denoiser and schedule.
"""

from diffjax.guidance import cfg
from diffjax.guidance.cfg import ClassifierFree, classifier_free

__all__ = [
    "ClassifierFree",
    "cfg",
    "classifier_free",
]
