"""scikit-learn's handwritten digits (UCI optdigits test set): 1797 images of 8 x 8 pixels, labels 0-9.

Real data that ships with scikit-learn, so it needs no download. Pixels are counts 0..16 of ink in
4 x 4 blocks of the original 32 x 32 bitmaps; here they are mapped linearly to [-1, 1]
(0 -> -1 background, 16 -> 1), channels-last.

Partitions (decentralized expert ensembles, `diffjax.compose.ensemble`): `dataset(classes=...)` keeps
the digits of some classes (an expert's share of the data, labels unchanged) and
`dataset(partitions=...)` keeps the digits of disjoint groups of classes relabelled by their group's
index (the labels a router p(k | x_t, t) is trained on). Both filter after the train/test split, so
the experts and the router of a partition see exactly the training images the full model sees.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

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
    from sklearn import datasets  # imported here: scikit-learn takes 1.5 s to import

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


def _check_classes(name: str, classes) -> tuple[int, ...]:
    """`classes` as a tuple of distinct digits 0..9 (at least one); a ValueError naming `name` if not."""
    if isinstance(classes, (str, bytes)) or not hasattr(classes, "__iter__"):
        raise ValueError(f"{name} must be a sequence of distinct digits 0..9, got {classes!r}")
    classes = tuple(classes)
    valid = all(not isinstance(c, bool) and isinstance(c, (int, np.integer)) and 0 <= c < NUM_CLASSES for c in classes)
    if not classes or not valid or len(set(classes)) != len(classes):
        raise ValueError(f"{name} must be a non-empty sequence of distinct digits 0..9, got {classes!r}")
    return tuple(int(c) for c in classes)


def _check_partitions(name: str, partitions) -> tuple[tuple[int, ...], ...]:
    """`partitions` as a tuple of >= 2 disjoint groups of digits; a ValueError naming `name` if not."""
    if isinstance(partitions, (str, bytes)) or not hasattr(partitions, "__iter__") or len(tuple(partitions)) < 2:
        raise ValueError(
            f"{name} must be a sequence of >= 2 groups of digits, e.g. ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9)), "
            f"got {partitions!r}"
        )
    groups = tuple(_check_classes(f"{name}[{k}]", group) for k, group in enumerate(partitions))
    flat = [c for group in groups for c in group]
    if len(set(flat)) != len(flat):
        raise ValueError(f"{name} must be disjoint groups (no digit in two groups), got {partitions!r}")
    return groups


def subset(data: Digits, classes) -> Digits:
    """The digits whose label is in `classes`, in their order in `data`, labels unchanged.

    Args:
      data: the digits.
      classes: a non-empty sequence of distinct digits 0..9.

    Returns:
      A `Digits` of the selected images and their labels.

    Raises:
      ValueError: if `classes` is not a non-empty sequence of distinct digits 0..9.
    """
    keep = np.isin(data.labels, _check_classes("classes", classes))
    return Digits(data.images[keep], data.labels[keep])


def partition(data: Digits, partitions) -> Digits:
    """The digits of the groups in `partitions`, each relabelled by its group's index k (0, 1, ...);
    digits in no group are dropped. The labels a noise-conditional router over experts trained on
    `subset(data, partitions[k])` learns.

    Args:
      data: the digits.
      partitions: >= 2 disjoint non-empty groups of digits 0..9, e.g. ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9)).

    Returns:
      A `Digits` of the selected images (in their order in `data`) and labels k in 0..len(partitions) - 1.

    Raises:
      ValueError: if `partitions` is not a sequence of >= 2 disjoint groups of distinct digits.
    """
    groups = _check_partitions("partitions", partitions)
    group_of = np.full(NUM_CLASSES, -1, np.int32)
    for k, group in enumerate(groups):
        group_of[list(group)] = k
    labels = group_of[data.labels]
    keep = labels >= 0
    return Digits(data.images[keep], labels[keep])


def dataset(
    *,
    size: int = 8,
    conditional: bool = False,
    split: str = "all",
    classes=None,
    partitions=None,
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
      classes: None (every digit) or a sequence of digits to keep, in training and evaluation alike
        (an expert's partition; labels unchanged, 10 classes). Applied after the split.
      partitions: None or >= 2 disjoint groups of digits: keep their digits, labelled by their group's
        index (a router's labels; `len(partitions)` classes). Applied after the split.
      batch_size: images per training batch.
      seed: the data seed (epoch permutations, see `ArrayBatches`).
      mesh: a mesh with a 'data' axis to shard batches over, or None.
      field: the config section these options come from, for error messages.

    Returns:
      A finite `Dataset` (`train_x` set, no `fresh`).

    Raises:
      ValueError: naming `{field}.<option>` for a bad size, split, classes or partitions, or both of
        classes and partitions.
    """
    _checks.one_of(f"{field}.size", size, SIZES)
    _checks.one_of(f"{field}.split", split, SPLITS)
    if classes is not None and partitions is not None:
        raise ValueError(f"{field}.classes and {field}.partitions cannot both be set, got classes={classes!r}, "
                         f"partitions={partitions!r}")  # fmt: skip
    select, num_classes = (lambda d: d), NUM_CLASSES
    if classes is not None:
        chosen = _check_classes(f"{field}.classes", classes)
        select = lambda d: subset(d, chosen)
    if partitions is not None:
        groups = _check_partitions(f"{field}.partitions", partitions)
        select, num_classes = (lambda d: partition(d, groups)), len(groups)
    digits = load_digits(size=size)
    test = digits
    if split == "train":  # the split's test part (20%) is held out
        digits, test = train_test_split(digits)
    digits, test = select(digits), select(test)
    evaluation = (test.images, test.labels)
    images, labels = digits.images.astype(np.float32), digits.labels.astype(np.int32)
    batches = ArrayBatches((images, labels if conditional else None), batch_size, seed, mesh)
    return Dataset(batches, images.shape[1:], num_classes if conditional else None, None, lambda: evaluation,
                   split == "train", images)  # fmt: skip
