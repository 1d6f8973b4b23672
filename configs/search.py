"""Search experiments (`experiments/search.py`): verifier score against search NFE for random
search, zero-order search, search over paths and FK steering on the same budgets.

    python experiments/search.py --config=configs/search.py:toy --workdir=runs/search_toy
    python experiments/search.py --config=configs/search.py:digits --config.run=runs/digits \
        --config.classifier_run=runs/digits_classifier --workdir=runs/search_digits

A budget of N is about N samples' worth of network evaluations: random search scores N noises,
zero-order search min(3, N - 1) neighbours plus the pivot for N // (neighbours + 1) rounds, path
search N / 2 paths with 2 branches re-noised 2 steps back and solved 4 forward from the grid's
middle, FK steering N particles (its best particle is reported, as a search result). Each row
prints the NFE actually spent. The tasks and rewards are those of configs/steer.py.
"""

import ml_collections

ARGS = ("toy", "digits", "shapes")


def get_config(arg: str = "toy"):
    if arg not in ARGS:
        raise ValueError(f"configs/search.py argument must be one of {ARGS}, got {arg!r}")
    c = ml_collections.ConfigDict()
    c.task = arg
    c.seed = 0
    c.budgets = (1, 2, 4, 8, 16)
    c.methods = ("random", "zero_order", "paths", "fk")
    c.solver = "dpmpp_2m"  # deterministic: the noise is all the randomness the searches choose
    c.fk_solver = "ddim(eta=1.0)"
    c.lmbda = 2.0  # FK's
    c.cosine = 0.95  # zero-order neighbours
    c.branches, c.forward, c.backward = 2, 2, 4  # path search, in grid steps
    c.grid = "logsnr_uniform"
    c.steps = 16
    c.hit_threshold = 0.05
    if arg == "toy":
        c.reward = "quadratic(center=(2.0, 0.0), precision=1.0)"
        c.schedule = "vp_linear"
        c.num_conditions = 1024
    else:
        c.run = ""
        c.classifier_run = ""
        c.use_ema = True
        c.reward = "classifier(target=3)" if arg == "digits" else "classifier(target=0)"
        c.num_conditions = 64
    return c
