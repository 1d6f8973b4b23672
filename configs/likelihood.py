"""Likelihood evaluation (`experiments/likelihood.py`): NLL and bits/dim of a trained model on
held-out images, by the probability-flow ODE with the exact divergence and with Hutchinson's
estimator, and the DDPM variational bound where the run's schedule is discrete.

    python experiments/train.py --config=configs/train.py:digits_unet --workdir=runs/digits
    python experiments/likelihood.py --config=configs/likelihood.py:digits --config.run=runs/digits \
        --workdir=runs/likelihood_digits
    python experiments/likelihood.py --config=configs/likelihood.py:digits --config.run=runs/digits \
        --config.compare_untrained=True --workdir=runs/likelihood_digits

digits: the held-out 8x8 digits of the run's split; their pixels take 17 levels (ink counts 0..16 on
[-1, 1]), so num_bins = 17: dequantised data, bits/dim offset log2(17/2) = 3.09.
"""

import ml_collections

ARGS = ("digits",)


def get_config(arg: str = "digits"):
    if arg not in ARGS:
        raise ValueError(f"configs/likelihood.py argument must be one of {ARGS}, got {arg!r}")
    c = ml_collections.ConfigDict()
    c.run = ""  # the trained model's workdir (required)
    c.use_ema = True
    c.compare_untrained = False  # also score the same network with freshly initialised parameters
    c.seed = 0
    c.num_images = 64
    c.batch_size = 32  # images per diffeqsolve
    c.estimators = ("exact", "hutchinson")  # diffjax.likelihood.pf_ode.DIVERGENCES
    c.num_probes = 4  # Hutchinson probes per image, fixed over the solve
    c.probe = "rademacher"
    c.method = "tsit5"
    c.rtol = 1e-5  # score_sde's defaults
    c.atol = 1e-5
    c.num_bins = 17  # quantisation levels of the data
    c.data_range = (-1.0, 1.0)
    c.vlb = True  # the DDPM bound too, where the run's schedule is discrete
    return c
