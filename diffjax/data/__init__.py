"""Data that ships with diffjax: exact oracles, toy 2-D sets, digits, procedural shapes, user arrays and PNG folders,
and deterministic, resumable, shardable batching.

`REGISTRY` maps the names configs use (`config.data.name`) to `Dataset` builders
(`dataset.py` says what they take); a new data set is its file with a `dataset(...)` builder and
one line here.
"""

from diffjax.data import arrays, digits, shapes, text, toy2d
from diffjax.data.arrays import ArrayData, load_npz, load_png_folder
from diffjax.data.dataset import Dataset
from diffjax.data.digits import Digits, load_digits, train_test_split
from diffjax.data.gaussian_mixture import GaussianMixture, ring
from diffjax.data.iterators import ArrayBatches, SamplerBatches, iterate
from diffjax.data.linear_gaussian import LinearGaussian
from diffjax.data.toy2d import (
    TOY_2D,
    checkerboard,
    eight_gaussians,
    eight_gaussians_mixture,
    moons,
    rings,
    swiss_roll,
)

REGISTRY = {
    "toy2d": toy2d.dataset,
    "digits": digits.dataset,
    "shapes": shapes.dataset,
    "npz": arrays.dataset,
    "text": text.dataset,
}

__all__ = [
    "REGISTRY",
    "TOY_2D",
    "ArrayBatches",
    "ArrayData",
    "Dataset",
    "Digits",
    "GaussianMixture",
    "LinearGaussian",
    "arrays",
    "digits",
    "SamplerBatches",
    "checkerboard",
    "eight_gaussians",
    "eight_gaussians_mixture",
    "iterate",
    "load_digits",
    "load_npz",
    "load_png_folder",
    "moons",
    "ring",
    "rings",
    "shapes",
    "text",
    "swiss_roll",
    "toy2d",
    "train_test_split",
]
