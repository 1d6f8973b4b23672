"""Users' own data from a ``.npz`` file: samples ``x`` and optional labels or conditions ``y``."""

import os
from typing import NamedTuple

import numpy as np

from diffjax.data.dataset import Dataset
from diffjax.data.iterators import ArrayBatches


class ArrayData(NamedTuple):
    """x: (N, ...) float32 samples; y: (N, ...) labels or conditions with x's leading axis, or None."""

    x: np.ndarray
    y: np.ndarray | None


def load_npz(path, key: str = "x", label_key: str | None = "y", field: str = "data") -> ArrayData:
    """Load samples ``x`` (required) and labels ``y`` (optional) from an ``.npz`` file, e.g. one written
    by ``np.savez(path, x=images, y=labels)``.

    x must be a real (integer or floating) array with a leading sample axis of length >= 1 and
    finite values; it is returned as float32 without rescaling. y, when present, must have the
    same leading length; it keeps its dtype. Any other key is an error (to catch "X" for "x").
    Pickled objects are refused.

    Args:
      path: the file.
      key: the name of the samples' array in it.
      label_key: the name of the labels' array (absent is fine), or None to take no labels.
      field: the config section these options come from, named in errors (`config.data`).

    Returns:
      `ArrayData(x, y)`.
    """
    if not os.path.isfile(path):
        raise ValueError(f"{field}.path must name an existing .npz file, got {str(path)!r}")
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    known = {key} if label_key is None else {key, label_key}
    unknown = sorted(set(arrays) - known)
    if key not in arrays or unknown:
        wanted = f"{key!r}" + ("" if label_key is None else f" and optionally {label_key!r}")
        raise ValueError(
            f"{str(path)!r} must hold the key {wanted}, got keys {sorted(arrays)} (set {field}.key and "
            f"{field}.label_key to the names it uses)"
        )
    x = arrays[key]
    if x.ndim < 1 or len(x) < 1 or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"x must be a non-empty real array of shape (N, ...), got shape {x.shape} dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"x must be finite, got {np.size(x) - np.isfinite(x).sum()} non-finite values")
    y = None if label_key is None else arrays.get(label_key)
    if y is not None and (y.ndim < 1 or len(y) != len(x)):
        raise ValueError(f"y must have x's leading length {len(x)}, got shape {y.shape}")
    return ArrayData(x.astype(np.float32), y)


def dataset(
    *,
    path: str,
    key: str = "x",
    label_key: str | None = "y",
    conditional: bool = False,
    split: str = "all",
    batch_size: int,
    seed: int = 0,
    mesh=None,
    field: str = "data",
) -> Dataset:
    """A user's `.npz` file (see `load_npz`) as a `Dataset` (the `"npz"` entry of `diffjax.data.REGISTRY`).

    Args:
      path: the `.npz` file holding the samples and optionally integer class labels.
      key: the samples' array in it ("x").
      label_key: the labels' array ("y"), or None.
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
    arrays = load_npz(path, key, label_key, field)
    if conditional and arrays.y is None:
        raise ValueError(f"{field}.conditional=True needs labels: {str(path)!r} has no {label_key!r} array")
    x = np.asarray(arrays.x, np.float32)
    labels = None if arrays.y is None or not conditional else np.asarray(arrays.y, np.int32)
    num_classes = None if labels is None else int(labels.max()) + 1
    batches = ArrayBatches((x, labels), batch_size, seed, mesh)
    return Dataset(batches, x.shape[1:], num_classes, None, lambda: (x, labels), False, x)
