"""Decentralized expert ensembles on the digits (`diffjax.compose.ensemble`): two experts trained in
isolation on label partitions and a noise-conditional router over the partition index, each run by
`experiments/train.py` unchanged.

    python experiments/train.py --config=configs/ensemble.py:expert0 --workdir=runs/expert0
    python experiments/train.py --config=configs/ensemble.py:expert1 --workdir=runs/expert1
    python experiments/train.py --config=configs/ensemble.py:router --workdir=runs/router

expert<k>: `configs/train.py:digits_unet`, unconditional (the ensemble is a model of all digits, so
its experts are models of their shares, not class-conditional ones), trained on the digits of
`PARTITIONS[k]` only (`config.data.classes`). router: `configs/classifier.py:digits_noisy` (a
time-conditioned classifier on x_t of the same vp_cosine schedule) whose labels are the partition
indices (`config.data.partitions`): its Bayes optimum is p(k | x_t), the router of the exact mixture.
All three see only the 80% training split (the filters apply after it). Then, in Python:

    experts = [dj.training.load_run(f"runs/expert{k}").denoiser for k in range(2)]
    r = dj.training.load_run("runs/router")
    den = ensemble(experts, classifier_router(r.module, r.ema_params, r.schedule))
"""

import importlib.util
import os

ARGS = ("expert0", "expert1", "router")
PARTITIONS = ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))


def _sibling(name: str):
    """configs/<name>.py as a module (config files are loaded by path, not as a package)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_diffjax_configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg: str = "expert0"):
    if arg not in ARGS:
        raise ValueError(f"configs/ensemble.py argument must be one of {ARGS}, got {arg!r}")
    if arg == "router":
        c = _sibling("classifier").get_config("digits_noisy")
        c.data.partitions = PARTITIONS
        return c
    c = _sibling("train").get_config("digits_unet")
    c.data.conditional = False
    c.model.label_dropout = 0.0
    c.data.classes = PARTITIONS[int(arg[-1])]
    return c
