"""Users' own data from a ``.npz`` file: samples ``x`` and optional labels or conditions ``y``."""

import os
from typing import NamedTuple

import numpy as np

from diffjax.data.dataset import Dataset
from diffjax.data.iterators import ArrayBatches

KEYS = ("x", "y")


class ArrayData(NamedTuple):
    """x: (N, ...) float32 samples; y: (N, ...) labels or conditions with x's leading axis, or None."""

    x: np.ndarray
    y: np.ndarray | None


def load_npz(path) -> ArrayData:
    """Load ``x`` (required) and ``y`` (optional) from an ``.npz`` file, e.g. one written by
    ``np.savez(path, x=images, y=labels)``.

    x must be a real (integer or floating) array with a leading sample axis of length >= 1 and
    finite values; it is returned as float32 without rescaling. y, when present, must have the
    same leading length; it keeps its dtype. Any other key is an error (to catch "X" for "x").
    Pickled objects are refused.
    """
    if not os.path.isfile(path):
        raise ValueError(f"path must name an existing .npz file, got {path!r}")
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    unknown = sorted(set(arrays) - set(KEYS))
    if "x" not in arrays or unknown:
        raise ValueError(f"{path!r} must hold the key 'x' and optionally 'y', got keys {sorted(arrays)}")
    x = arrays["x"]
    if x.ndim < 1 or len(x) < 1 or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"x must be a non-empty real array of shape (N, ...), got shape {x.shape} dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"x must be finite, got {np.size(x) - np.isfinite(x).sum()} non-finite values")
    y = arrays.get("y")
    if y is not None and (y.ndim < 1 or len(y) != len(x)):
        raise ValueError(f"y must have x's leading length {len(x)}, got shape {y.shape}")
    return ArrayData(x.astype(np.float32), y)


def dataset(
    *,
    path: str,
    conditional: bool = False,
    split: str = "all",
    batch_size: int,
    seed: int = 0,
    mesh=None,
    field: str = "data",
) -> Dataset:
    """A user's `.npz` file (see `load_npz`) as a `Dataset` (the `"npz"` entry of `diffjax.data.REGISTRY`).

    Args:
      path: the `.npz` file holding `x` and optionally integer class labels `y`.
      conditional: whether batches carry `y` (num_classes = max(y) + 1); False ignores `y`.
      split: must be "all": the whole file is trained on and evaluated against.
      batch_size: samples per training batch.
      seed: the data seed (epoch permutations, see `ArrayBatches`).
      mesh: a mesh with a 'data' axis to shard batches over, or None.
      field: the config section these options come from, for error messages.

    Returns:
      A finite `Dataset` evaluated against its own training set.
    """
    if split != "all":
        raise ValueError(f"{field}.split must be 'all' for npz data, got {split!r}")
    arrays = load_npz(path)
    x = np.asarray(arrays.x, np.float32)
    labels = None if arrays.y is None or not conditional else np.asarray(arrays.y, np.int32)
    num_classes = None if labels is None else int(labels.max()) + 1
    batches = ArrayBatches((x, labels), batch_size, seed, mesh)
    return Dataset(batches, x.shape[1:], num_classes, None, lambda: (x, labels), False, x)
