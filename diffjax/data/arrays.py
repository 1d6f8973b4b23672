"""Users' own data: a ``.npz`` file of samples ``x`` and optional labels ``y``, or a folder of PNG images
(class labels from its subfolders)."""

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
        raise ValueError(f"{field}.path must name an existing .npz file or folder of PNGs, got {str(path)!r}")
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


def _png_files(root):
    return sorted(os.path.join(root, name) for name in os.listdir(root) if name.lower().endswith(".png"))


def load_png_folder(path, field: str = "data") -> ArrayData:
    """Load a folder of PNG images of one size as ``x`` (N, H, W, C) in [-1, 1], with class labels
    when the images sit in subfolders (``path/<class>/*.png``, as torchvision's ImageFolder).

    Pixel value v in 0..255 becomes v / 127.5 - 1 (0 -> -1, 255 -> 1). Greyscale images give C = 1;
    if any image has colour, every image is read as RGB (C = 3); alpha is dropped. Labels are the
    index of each image's subfolder among the sorted subfolder names; PNGs directly in `path` give
    no labels, and a folder with both is an error, as are images of different sizes.

    Args:
      path: the folder.
      field: the config section these options come from, named in errors (`config.data`).

    Returns:
      `ArrayData(x, y)`, y int32 (N,) or None; files in sorted order (by class, then name).
    """
    try:
        from PIL import Image
    except ImportError as e:  # Pillow comes with matplotlib, a dependency
        raise ValueError(f"{field}.path is a folder of PNGs, which needs Pillow: pip install pillow") from e
    if not os.path.isdir(path):
        raise ValueError(f"{field}.path must name an existing folder of PNG images, got {str(path)!r}")
    top = _png_files(path)
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))
                     and _png_files(os.path.join(path, d)))  # fmt: skip
    if top and classes:
        raise ValueError(f"{str(path)!r} must hold PNGs either directly or in class subfolders, got both "
                         f"({len(top)} PNGs and the subfolders {classes})")  # fmt: skip
    files = [(f, None) for f in top]
    files += [(f, i) for i, c in enumerate(classes) for f in _png_files(os.path.join(path, c))]
    if not files:
        raise ValueError(f"{field}.path {str(path)!r} holds no .png files, directly or in subfolders")
    images = []
    for name, _ in files:
        with Image.open(name) as image:
            images.append(image.convert("RGBA" if image.mode in ("P", "PA") else image.mode))
    colour = any(image.mode not in ("1", "L", "LA", "I", "I;16") for image in images)
    pixels = [np.asarray(image.convert("RGB" if colour else "L"), np.float64) for image in images]
    shapes = {p.shape for p in pixels}
    if len(shapes) > 1:
        first = pixels[0].shape
        other = next(i for i, p in enumerate(pixels) if p.shape != first)
        raise ValueError(f"the PNGs must share one size: {files[0][0]!r} is {first[:2]}, "
                         f"{files[other][0]!r} is {pixels[other].shape[:2]}")  # fmt: skip
    x = np.stack(pixels).reshape((len(pixels),) + pixels[0].shape[:2] + (-1,)) / 127.5 - 1.0
    y = np.asarray([label for _, label in files], np.int32) if classes else None
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
    """A user's `.npz` file (see `load_npz`) or folder of PNGs (see `load_png_folder`) as a `Dataset`
    (the `"npz"` entry of `diffjax.data.REGISTRY`).

    Args:
      path: the `.npz` file holding the samples and optionally integer class labels, or a folder of
        PNG images (with class subfolders for labels).
      key: the samples' array in the `.npz` ("x").
      label_key: the labels' array in the `.npz` ("y"), or None.
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
        raise ValueError(f"{field}.split must be 'all' for your own data, got {split!r}")
    arrays = load_png_folder(path, field) if os.path.isdir(path) else load_npz(path, key, label_key, field)
    if conditional and arrays.y is None:
        what = "no class subfolders" if os.path.isdir(path) else f"no {label_key!r} array"
        raise ValueError(f"{field}.conditional=True needs labels: {str(path)!r} has {what}")
    x = np.asarray(arrays.x, np.float32)
    labels = None if arrays.y is None or not conditional else np.asarray(arrays.y, np.int32)
    num_classes = None if labels is None else int(labels.max()) + 1
    batches = ArrayBatches((x, labels), batch_size, seed, mesh)
    return Dataset(batches, x.shape[1:], num_classes, None, lambda: (x, labels), False, x)
