"""Steering experiments (`experiments/steer.py`): reward, hit rate, diversity, NFE and time against
the number of particles K for FK steering, TDS, importance sampling and best-of-N.

    python experiments/steer.py --config=configs/steer.py:toy --workdir=runs/steer_toy
    python experiments/steer.py --config=configs/steer.py:digits --config.run=runs/digits \
        --config.classifier_run=runs/digits_classifier --workdir=runs/steer_digits
    python experiments/steer.py --config=configs/steer.py:shapes --config.run=runs/shapes \
        --config.classifier_run=runs/shapes_classifier --workdir=runs/steer_shapes

toy: the 8-mode ring oracle with r(x) = -|x - c|^2 / 2 around mode 0; the exactly tilted target
is known, so its reward and hit rate are printed as the answer the samplers should reach.
digits / shapes: a trained class-conditional model sampled unconditionally (its null label) and
steered by a project-trained classifier's log p(target | x) ("classifier(target=3)"), or for shapes by
the painted fraction of a colour ("colour(colour='red')", hit: fraction > hit_threshold).
"""

import ml_collections

ARGS = ("toy", "digits", "shapes")


def get_config(arg: str = "toy"):
    if arg not in ARGS:
        raise ValueError(f"configs/steer.py argument must be one of {ARGS}, got {arg!r}")
    c = ml_collections.ConfigDict()
    c.task = arg
    c.seed = 0
    c.particles = (1, 2, 4, 8, 16)
    c.methods = ("fk", "tds", "importance", "best_of_n")
    c.lmbda = 1.0
    c.potential = "diff"  # FK's potential: diff | max | sum | rt
    c.reward_on = "x0"  # FK's intermediate reward: x0 (Tweedie) | xt | many
    c.resample_start = 0  # FK: resample at steps start, start + interval, ... (sampling steps)
    c.resample_interval = 1
    c.ess_threshold = 0.0  # > 0: resample only where ESS < threshold K
    c.solver = "ddim(eta=1.0)"  # FK's, importance sampling's and best-of-N's proposal
    c.grid = "logsnr_uniform"
    c.steps = 25
    c.num_conditions = 512  # independent populations; one output each
    c.hit_threshold = 0.05  # colour rewards: a hit paints more than this fraction of the image
    if arg == "toy":
        c.reward = "quadratic(center=(2.0, 0.0), precision=1.0)"
        c.schedule = "vp_linear"
        c.num_conditions = 2048
        c.lmbda = 2.0
    else:
        c.run = ""  # the trained model's workdir (required)
        c.classifier_run = ""  # a clean classifier's workdir (class rewards, feature diversity)
        c.use_ema = True
        c.reward = "classifier(target=3)" if arg == "digits" else "classifier(target=0)"
        c.lmbda = 4.0
        c.num_conditions = 64
    return c
