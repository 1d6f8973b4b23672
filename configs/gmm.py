"""Sample the exact Gaussian-mixture oracle with several solvers and compare to exact samples.

    python experiments/sample.py --config=configs/gmm.py            # 8-mode ring in 2-D
    python experiments/sample.py --config=configs/gmm.py:blobs      # 3 blobs in 8-D, distinct scales
    python experiments/sample.py --config=configs/gmm.py --config.steps="(10, 40)" \
        --config.solvers="('euler', 'ddim(eta=0.5)')"
"""

import ml_collections

DATASETS = ("ring", "blobs")


def get_config(arg: str = "ring"):
    if arg not in DATASETS:
        raise ValueError(f"configs/gmm.py argument must be one of {DATASETS}, got {arg!r}")
    config = ml_collections.ConfigDict()
    config.data = arg
    config.seed = 0
    config.x64 = True
    config.num_samples = 4000
    config.schedule = "vp_linear"
    config.grid = "logsnr_uniform(t_min=0.002)"
    config.steps = (10, 25, 100)
    config.solvers = ("ddim", "euler", "ddim(eta=1.0)")
    return config
