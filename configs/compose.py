"""Composing trained models (`experiments/compose.py`): SuperDiff's OR and AND of two digits models
trained on disjoint label sets, score averaging as the naive baseline, and the decentralized expert
ensemble against one model trained on everything.

    python experiments/train.py --config=configs/ensemble.py:expert0 --workdir=runs/expert0
    python experiments/train.py --config=configs/ensemble.py:expert1 --workdir=runs/expert1
    python experiments/train.py --config=configs/ensemble.py:router --workdir=runs/router
    python experiments/train.py --config=configs/train.py:digits_unet --workdir=runs/digits
    python experiments/train.py --config=configs/classifier.py:digits --workdir=runs/digits_classifier
    python experiments/compose.py --config=configs/compose.py:digits \
        --config.experts="('runs/expert0', 'runs/expert1')" --config.router=runs/router \
        --config.full=runs/digits --config.classifier=runs/digits_classifier --workdir=runs/compose

Only `experts` is required; methods that need a missing run are skipped with a line saying so.
`<method>_solver` fields are solver specs (`diffjax.specs`); AND needs one of the solvers
`compose.superdiff` lists (deterministic ones give equal densities; see its module docstring).
"""

import ml_collections

ARGS = ("digits",)
METHODS = ("expert0", "expert1", "average", "or", "and", "ensemble", "full")


def get_config(arg: str = "digits"):
    if arg not in ARGS:
        raise ValueError(f"configs/compose.py argument must be one of {ARGS}, got {arg!r}")
    c = ml_collections.ConfigDict()
    c.experts = ("", "")  # two expert workdirs (configs/ensemble.py:expert0, expert1), required
    c.router = ""  # a router workdir (configs/ensemble.py:router), for the ensemble
    c.full = ""  # a model trained on every digit (configs/train.py:digits_unet), used unconditionally
    c.classifier = ""  # a clean digits classifier (configs/classifier.py:digits): classes and FID
    c.methods = METHODS
    c.seed = 0
    c.num_samples = 256
    c.steps = 100
    c.grid = "uniform"  # diffjax.timesteps.REGISTRY
    c.solver = "dpmpp_2m"  # experts alone, the ensemble and the full model
    c.or_solver = "ddpm"  # OR on the reverse SDE: its Itô estimate needs no divergence
    c.and_solver = "euler"  # AND and the averaging baseline (deterministic, divergence by Hutchinson)
    c.temperature = 1.0  # OR's kappa = softmax(temperature * log q)
    c.num_probes = 1  # Hutchinson probes per step where the path is deterministic
    return c
