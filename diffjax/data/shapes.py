"""Procedural images whose contents are known exactly: coloured shapes on a black canvas.

An image of ``image_size`` x ``image_size`` RGB pixels in [-1, 1] shows 1 to ``max_shapes`` shapes
(``CLASSES``: circle, square, triangle, cross), each in one colour of ``PALETTE`` on the background
-1 (black). Everything drawn is recorded in a `Scene`, so rewards and verifiers ("is there a red
circle?", "how many squares?") have ground truth; see `count`.

Law. The count is uniform on 1..max_shapes and each shape's class and colour uniform and
independent. The canvas is cut into 2 x 2 cells and the shapes go to distinct cells (a uniformly
random assignment), so shapes never overlap and each is fully visible. A shape's half-extent is
uniform in [0.2, 0.4] of the cell side and its centre uniform over the positions that keep its
bounding box [centre - size, centre + size] inside the cell.

Rendering is exact and hard-edged: pixel (i, j) covers [i, i+1) x [j, j+1) (row, column) and belongs
to a shape when its centre (i + 1/2, j + 1/2) lies inside it (boundary included), so every pixel
has exactly one colour, either the background or a palette colour. With image_size >= 16 every
shape covers at least one pixel. Draws are float32 whatever ``jax_enable_x64`` says; `sample`,
`sample_scene` and `render` are pure and work under ``jit`` and ``vmap`` (sizes are static).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import _checks
from diffjax.data.dataset import Dataset
from diffjax.data.iterators import SamplerBatches

CLASSES = ("circle", "square", "triangle", "cross")
PALETTE_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan")
PALETTE = (
    (1.0, -1.0, -1.0),
    (-1.0, 1.0, -1.0),
    (-1.0, -1.0, 1.0),
    (1.0, 1.0, -1.0),
    (1.0, -1.0, 1.0),
    (-1.0, 1.0, 1.0),
)
BACKGROUND = -1.0
NUM_LABELS = len(CLASSES)
SIZE_RANGE = (0.2, 0.4)  # half-extent as a fraction of the cell side
_F32 = jnp.float32


class Scene(NamedTuple):
    """What an image shows; slot k < count holds a shape, later slots are empty.

    count: int32 (), number of shapes (1..max_shapes).
    classes: int32 (max_shapes,), index into ``CLASSES``; -1 for an empty slot.
    colours: int32 (max_shapes,), index into ``PALETTE``; -1 for an empty slot.
    centres: float32 (max_shapes, 2), (row, column) in pixel units; 0 for an empty slot.
    sizes: float32 (max_shapes,), half-extent in pixels (circle radius, half the square's side,
        half the triangle's height and base, half the length of each bar of the cross); 0 for an
        empty slot.

    A batch of scenes has a leading batch axis on every field.
    """

    count: jax.Array
    classes: jax.Array
    colours: jax.Array
    centres: jax.Array
    sizes: jax.Array


def _shape_masks(centre, size, image_size: int):
    """Boolean (len(CLASSES), H, W) masks of every class at one centre and size."""
    grid = jnp.arange(image_size, dtype=_F32) + 0.5
    dy, dx = grid[:, None] - centre[0], grid[None, :] - centre[1]
    near, far = jnp.minimum(jnp.abs(dy), jnp.abs(dx)), jnp.maximum(jnp.abs(dy), jnp.abs(dx))
    circle = dy**2 + dx**2 <= size**2
    square = far <= size
    triangle = (dy <= size) & (jnp.abs(dx) <= (dy + size) / 2)  # apex at the top, base at the bottom
    cross = (far <= size) & (near <= size / 3)  # two bars of half-width size / 3
    return jnp.stack([circle, square, triangle, cross])


def masks(scene: Scene, image_size: int = 32):
    """Boolean (max_shapes, H, W): the pixels inside each slot's shape (all False for an empty slot)."""
    one_hot = scene.classes[:, None] == jnp.arange(len(CLASSES))
    per_class = jax.vmap(functools.partial(_shape_masks, image_size=image_size))(scene.centres, scene.sizes)
    return jnp.any(one_hot[:, :, None, None] & per_class, axis=1)


def render(scene: Scene, image_size: int = 32):
    """The (H, W, 3) float32 image of one scene; where hand-made shapes overlap, later slots win."""
    palette = jnp.asarray(PALETTE, _F32)
    image = jnp.full((image_size, image_size, 3), BACKGROUND, _F32)
    for mask, colour in zip(masks(scene, image_size), scene.colours):
        image = jnp.where(mask[..., None], palette[colour], image)
    return image


def _choice(u, k: int):
    """Uniform integers in 0..k-1 from uniforms in [0, 1) (exact up to float32 resolution)."""
    return jnp.minimum(jnp.floor(u * k), k - 1).astype(jnp.int32)


def sample_scene(key, *, image_size: int = 32, max_shapes: int = 3) -> Scene:
    """One random scene (see the module docstring for the law); image_size >= 16, max_shapes 1..4.

    Every attribute comes from one (7, 4) block of uniforms (one threefry call keeps compilation
    fast): row 0 the count, row 1 the order of the 4 cells, rows 2-6 each slot's class, colour,
    size, row and column."""
    _checks.positive_int("image_size", image_size, minimum=16)
    _checks.one_of("max_shapes", max_shapes, (1, 2, 3, 4))
    u = jax.random.uniform(key, (7, 4), _F32)
    count = 1 + _choice(u[0, 0], max_shapes)
    present = jnp.arange(max_shapes) < count
    cell = image_size / 2
    cells = jnp.argsort(u[1])[:max_shapes]
    origin = cell * jnp.stack([cells // 2, cells % 2], axis=-1).astype(_F32)
    low, high = SIZE_RANGE
    sizes = cell * (low + (high - low) * u[4, :max_shapes])
    centres = origin + sizes[:, None] + (cell - 2 * sizes[:, None]) * u[5:7, :max_shapes].T
    return Scene(
        count=count,
        classes=jnp.where(present, _choice(u[2, :max_shapes], len(CLASSES)), -1),
        colours=jnp.where(present, _choice(u[3, :max_shapes], len(PALETTE)), -1),
        centres=jnp.where(present[:, None], centres, 0.0),
        sizes=jnp.where(present, sizes, 0.0),
    )


@functools.partial(jax.jit, static_argnames=("n", "image_size", "max_shapes"))
def sample(key, n: int, *, image_size: int = 32, max_shapes: int = 3):
    """n images and their scenes: ``(images (n, H, W, 3) float32 in [-1, 1], Scene with leading n)``.

    Image i is ``render(sample_scene(jax.random.split(key, n)[i]))``."""
    scenes = jax.vmap(lambda k: sample_scene(k, image_size=image_size, max_shapes=max_shapes))(jax.random.split(key, n))
    return jax.vmap(lambda s: render(s, image_size))(scenes), scenes


def label(scene: Scene):
    """The class-conditional training label: the class of slot 0, in 0..NUM_LABELS - 1.

    Slot 0 always holds a shape and its cell is random, so label c means "the image contains a
    shape of class c" (other shapes are unconstrained)."""
    return scene.classes[..., 0]


def count(scene: Scene, *, shape: str | None = None, colour: str | None = None):
    """How many shapes of the given class and/or colour (names from ``CLASSES``, ``PALETTE_NAMES``)
    each scene shows, int32 of the scene's batch shape; with neither, ``scene.count``."""
    match = scene.classes >= 0
    if shape is not None:
        _checks.one_of("shape", shape, CLASSES)
        match &= scene.classes == CLASSES.index(shape)
    if colour is not None:
        _checks.one_of("colour", colour, PALETTE_NAMES)
        match &= scene.colours == PALETTE_NAMES.index(colour)
    return jnp.sum(match, axis=-1, dtype=jnp.int32)


EVALUATION_SIZE = 2000  # held-out scenes `dataset` evaluates against
EVALUATION_SEED = 2**31 - 1  # their root key; training draws from fold_in(key(seed), step), never this


def dataset(
    *, image_size: int = 32, conditional: bool = False, batch_size: int, seed: int = 0, mesh=None, field: str = "data"
) -> Dataset:
    """Procedural shapes as a `Dataset` (the `"shapes"` entry of `diffjax.data.REGISTRY`).

    Args:
      image_size: image side in pixels, >= 16 (every shape then covers a pixel).
      conditional: whether batches carry `label` (the first shape's class; `NUM_LABELS` classes).
      batch_size: images per training batch.
      seed: the data seed; batch k is drawn from `fold_in(key(seed), k)`.
      mesh: a mesh with a 'data' axis to shard batches over, or None.
      field: the config section these options come from, for error messages.

    Returns:
      A synthetic `Dataset` with `fresh` draws and `EVALUATION_SIZE` held-out scenes (drawn on
      first use of `evaluation`).
    """
    image_size = _checks.positive_int(f"{field}.image_size", image_size, 16)

    def draw(key, n):
        images, scenes = sample(key, n, image_size=image_size)
        return images, label(scenes) if conditional else None

    def evaluation():
        x, labels = draw(jax.random.key(EVALUATION_SEED), EVALUATION_SIZE)
        return np.asarray(x), None if labels is None else np.asarray(labels)

    batches = SamplerBatches(draw, batch_size, seed, mesh)
    fresh = lambda key, n: draw(key, n)[0]
    return Dataset(batches, (image_size, image_size, 3), NUM_LABELS if conditional else None, fresh, evaluation, True)
