"""Inverse-problem experiments (`experiments/invert.py`): one trained prior restores held-out images
from inpainting (a box, random pixels), super-resolution and deblurring measurements with every
method of `diffjax.guidance`, scored by PSNR, SSIM and measurement consistency.

    python experiments/train.py --config=configs/train.py:digits_unet --workdir=runs/digits
    python experiments/invert.py --config=configs/invert.py:digits --config.run=runs/digits \
        --workdir=runs/invert_digits
    python experiments/invert.py --config=configs/invert.py:shapes --config.run=runs/shapes \
        --workdir=runs/invert_shapes

digits: the 359 held-out 8x8 digits of the run's train/test split (a class-conditional model
sampled with its null label). shapes: 32x32 procedural shapes from the run's evaluation scenes.
`<method>` sections hold each method's options (`diffjax.guidance.problems.METHOD_OPTIONS`);
`pigdm.data_variance` is a number or "data" (the training data's measured variance).
"""

import ml_collections

from diffjax.guidance import problems

ARGS = ("digits", "shapes")


def get_config(arg: str = "digits"):
    if arg not in ARGS:
        raise ValueError(f"configs/invert.py argument must be one of {ARGS}, got {arg!r}")
    c = ml_collections.ConfigDict()
    c.run = ""  # the trained model's workdir (required)
    c.use_ema = True
    c.seed = 0
    c.tasks = ("box", "random", "sr2", "blur")
    c.methods = problems.METHODS
    c.sigma_y = 0.05  # measurement noise, in the data's [-1, 1] units
    c.num_images = 64 if arg == "digits" else 32
    c.batch_size = 64  # images restored per jitted call
    for method, settings in problems.METHOD_OPTIONS.items():
        c[method] = ml_collections.ConfigDict(dict(settings))
    c.pigdm = ml_collections.ConfigDict(dict(c.pigdm.to_dict(), data_variance=str(c.pigdm.data_variance)))
    if arg == "shapes":  # at the official 0.1, RED-diff's deblurring of shapes stays below A^+ y (BENCHMARKS.md)
        c.reddiff.lr = 0.05
    return c
