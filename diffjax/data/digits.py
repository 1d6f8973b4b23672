"""scikit-learn's handwritten digits (UCI optdigits test set): 1797 images of 8 x 8 pixels, labels 0-9.

Real data that ships with scikit-learn, so it needs no download. Pixels are counts 0..16 of ink in
4 x 4 blocks of the original 32 x 32 bitmaps; here they are mapped linearly to [-1, 1]
(0 -> -1 background, 16 -> 1), channels-last.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from sklearn import datasets

from diffjax import _checks
from diffjax.data.dataset import Dataset
from diffjax.data.iterators import ArrayBatches

NUM_CLASSES = 10
METHODS = ("nearest", "bilinear", "pad")
SIZES = (8, 16, 32)


class Digits(NamedTuple):
    """images (N, size, size, 1) float32 in [-1, 1]; labels (N,) int32 in 0..9 (host numpy arrays)."""

    images: np.ndarray
    labels: np.ndarray


def _resize(images: np.ndarray, size: int, method: str) -> np.ndarray:
    """Upsample (N, 8, 8, 1) images to size x size.

    "nearest": each pixel becomes a (size/8)^2 block (exact replication); "bilinear":
    ``jax.image.resize`` with linear interpolation (upsampling only, so values stay in [-1, 1]);
    "pad": the 8 x 8 image centred on a background (-1) canvas.
    """
    if method == "pad":
        margin = (size - 8) // 2
        return np.pad(images, ((0, 0), (margin, margin), (margin, margin), (0, 0)), constant_values=-1.0)
    resized = jax.image.resize(jnp.asarray(images), (len(images), size, size, 1), method)
    return np.asarray(resized, np.float32)


def load_digits(*, size: int = 8, method: str = "nearest") -> Digits:
    """All 1797 digits as ``Digits(images, labels)``, images (N, size, size, 1) in [-1, 1].

    size is 8 (the original), 16 or 32; method ("nearest", "bilinear" or "pad") says how larger
    images are made (see ``_resize``) and is ignored for size 8.
    """
    _checks.one_of("size", size, SIZES)
    _checks.one_of("method", method, METHODS)
    raw = datasets.load_digits()
    images = (raw.images.astype(np.float32) / 8.0 - 1.0)[..., None]
    if size != 8:
        images = _resize(images, size, method)
    return Digits(images, raw.target.astype(np.int32))


def train_test_split(data: Digits, *, test_fraction: float = 0.2, seed: int = 0) -> tuple[Digits, Digits]:
    """A deterministic split: the first round(test_fraction N) entries of
    ``jax.random.permutation(jax.random.key(seed), N)`` are the test set (in that order), the rest
    the training set (in permutation order). The same seed gives the same split on every machine."""
    _checks.in_range("test_fraction", test_fraction, 0.0, 1.0)
    n = len(data.labels)
    order = np.asarray(jax.random.permutation(jax.random.key(seed), n))
    n_test = round(test_fraction * n)
    take = lambda idx: Digits(data.images[idx], data.labels[idx])
    return take(order[n_test:]), take(order[:n_test])


SPLITS = ("all", "train")


def dataset(
    *,
    size: int = 8,
    conditional: bool = False,
    split: str = "all",
    batch_size: int,
    seed: int = 0,
    mesh=None,
    field: str = "data",
) -> Dataset:
    """The digits as a `Dataset` (the `"digits"` entry of `diffjax.data.REGISTRY`).

    Args:
      size: image side, 8, 16 or 32 (nearest-neighbour upsampling, see `load_digits`).
      conditional: whether batches carry the labels (10 classes, null label 10).
      split: "all" trains and evaluates on all 1797 digits; "train" trains on the 80% training
        part of `train_test_split` (seed 0) and evaluates on the held-out 20%.
      batch_size: images per training batch.
      seed: the data seed (epoch permutations, see `ArrayBatches`).
      mesh: a mesh with a 'data' axis to shard batches over, or None.
      field: the config section these options come from, for error messages.

    Returns:
      A finite `Dataset` (`train_x` set, no `fresh`).
    """
    _checks.one_of(f"{field}.size", size, SIZES)
    _checks.one_of(f"{field}.split", split, SPLITS)
    digits = load_digits(size=size)
    evaluation = (digits.images, digits.labels)
    if split == "train":  # the split's test part (20%) is held out
        digits, test = train_test_split(digits)
        evaluation = (test.images, test.labels)
    images, labels = digits.images.astype(np.float32), digits.labels.astype(np.int32)
    batches = ArrayBatches((images, labels if conditional else None), batch_size, seed, mesh)
    return Dataset(batches, images.shape[1:], NUM_CLASSES if conditional else None, None, lambda: evaluation,
                   split == "train", images)  # fmt: skip
