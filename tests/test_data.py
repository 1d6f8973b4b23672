"""Shipped data: toy 2-D laws, digits, exactly known shape scenes, user arrays, and batching that is a
pure function of (seed, step), sharded over a mesh without changing a bit."""

import functools
import hashlib
import inspect
import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from helpers import FAST_COMPILE_FLAGS

D = dj.data
S = dj.data.shapes
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Per-coordinate variances after standardisation, as documented in toy2d.py.
TOY_VARIANCES = {
    "moons": (1.4987, 0.5013),
    "swiss_roll": (0.9519, 1.0481),
    "checkerboard": (1.0, 1.0),
    "eight_gaussians": (1.0, 1.0),
    "rings": (1.0, 1.0),
}


# --- toy 2-D sets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(D.TOY_2D))
def test_toy_sets_are_deterministic_float32_centred_with_the_documented_variances(name):
    n, f = 200_000, D.TOY_2D[name]
    x = f(jax.random.key(0), n)
    assert x.shape == (n, 2) and x.dtype == jnp.float32  # float32 even with x64 on (conftest)
    assert np.array_equal(f(jax.random.key(0), n), x) and not np.allclose(f(jax.random.key(1), n), x)
    x = np.asarray(x, np.float64)
    se = x.std(0) / math.sqrt(n)
    assert np.all(np.abs(x.mean(0)) < 4 * se)
    sq = (x**2).sum(-1)
    assert abs(sq.mean() - 2.0) < 4 * sq.std() / math.sqrt(n)  # E|x|^2 = 2 by construction
    np.testing.assert_allclose(x.var(0), TOY_VARIANCES[name], atol=0.02)


def test_checkerboard_fills_exactly_the_even_cells_uniformly():
    n = 50_000
    raw = np.asarray(D.checkerboard(jax.random.key(3), n), np.float64) * math.sqrt(4 / 3)
    assert np.all(np.abs(raw) <= 2 + 1e-6)
    cells = np.clip(np.floor(raw).astype(int) + 2, 0, 3)  # 0..3 along each axis
    counts = np.bincount(4 * cells[:, 0] + cells[:, 1], minlength=16)
    even = (np.arange(16) // 4 + np.arange(16) % 4) % 2 == 0
    assert counts[~even].sum() <= 5  # only float32 rounding at a cell edge can land there
    assert np.all(np.abs(counts[even] / n - 1 / 8) < 0.01)


def test_eight_gaussians_has_the_law_of_its_exact_mixture():
    gmm = D.eight_gaussians_mixture()
    x = np.asarray(D.eight_gaussians(jax.random.key(4), 40_000), np.float64)
    exact = np.asarray(gmm.sample(jax.random.key(5), 40_000))
    log_p, log_p_exact = (np.asarray(gmm.log_prob(a)) for a in (x, exact))
    assert abs(log_p.mean() - log_p_exact.mean()) < 4 * math.hypot(log_p.std(), log_p_exact.std()) / 200
    mode = np.argmin(((x[:, None] - np.asarray(gmm.means)) ** 2).sum(-1), axis=1)
    assert np.all(np.abs(np.bincount(mode, minlength=8) / 40_000 - 1 / 8) < 0.01)
    within = x - np.asarray(gmm.means)[mode]
    np.testing.assert_allclose(within.std(0), D.toy2d.EIGHT_GAUSSIANS_STD, rtol=0.02)


def test_rings_lie_on_the_documented_radii():
    x = np.asarray(D.rings(jax.random.key(6), 40_000), np.float64)
    radius = np.linalg.norm(x, axis=-1)
    gap = np.min(np.abs(radius[:, None] - np.asarray(D.toy2d.RINGS_RADII)), axis=1)
    noise = 0.03 * D.toy2d.RINGS_RADII[0] * 4  # the raw noise std 0.03 in scaled units
    assert np.quantile(gap, 0.99) < 3 * noise
    ring = np.argmin(np.abs(radius[:, None] - np.asarray(D.toy2d.RINGS_RADII)), axis=1)
    assert np.all(np.abs(np.bincount(ring, minlength=4) / 40_000 - 1 / 4) < 0.01)


# --- digits ----------------------------------------------------------------------------------------


def test_digits_are_the_1797_scikit_learn_images_in_minus_one_to_one():
    digits = D.load_digits()
    assert digits.images.shape == (1797, 8, 8, 1) and digits.images.dtype == np.float32
    assert digits.labels.shape == (1797,) and digits.labels.dtype == np.int32
    assert set(np.unique(digits.labels)) == set(range(10))
    assert digits.images.min() == -1.0 and digits.images.max() == 1.0
    np.testing.assert_array_equal(np.unique(digits.images), np.arange(17, dtype=np.float32) / 8 - 1)


def test_digits_resizing_methods():
    small = D.load_digits().images
    nearest = D.load_digits(size=16, method="nearest").images
    np.testing.assert_array_equal(nearest, small.repeat(2, axis=1).repeat(2, axis=2))
    padded = D.load_digits(size=32, method="pad").images
    np.testing.assert_array_equal(padded[:, 12:20, 12:20], small)
    assert np.sum(padded != -1.0) == np.sum(small != -1.0)
    bilinear = D.load_digits(size=32, method="bilinear").images
    assert bilinear.shape == (1797, 32, 32, 1) and bilinear.min() >= -1.0 and bilinear.max() <= 1.0
    np.testing.assert_allclose(bilinear.mean((1, 2, 3)), small.mean((1, 2, 3)), atol=0.05)


def test_digits_split_is_a_deterministic_partition():
    digits = D.load_digits()
    train, test = D.train_test_split(digits, seed=3)
    again, _ = D.train_test_split(digits, seed=3)
    other, _ = D.train_test_split(digits, seed=4)
    assert len(test.labels) == round(0.2 * 1797) and len(train.labels) + len(test.labels) == 1797
    np.testing.assert_array_equal(train.images, again.images)
    assert not np.array_equal(train.labels, other.labels)
    rows = lambda d: {r.tobytes() + bytes([int(y)]) for r, y in zip(d.images, d.labels)}
    assert rows(train) | rows(test) == rows(digits) and not rows(train) & rows(test)


def test_dataset_variance_pools_the_training_entries():
    digits = D.REGISTRY["digits"](batch_size=8)
    assert digits.variance() == pytest.approx(np.var(np.asarray(digits.train_x, np.float64)), rel=1e-12)
    shapes = D.REGISTRY["shapes"](batch_size=8, image_size=16)  # synthetic: n fresh draws at the seed
    x = np.asarray(shapes.fresh(jax.random.key(0), 64), np.float64)
    assert shapes.variance(n=64) == pytest.approx(np.var(x), rel=1e-12)
    assert shapes.variance(n=64, seed=1) != shapes.variance(n=64)
    with pytest.raises(ValueError, match="train_x"):
        D.Dataset(batches=lambda step: None, event_shape=(2,)).variance()


# --- procedural shapes -----------------------------------------------------------------------------

RED, GREEN, BLUE, YELLOW = (np.asarray(S.PALETTE[i], np.float32) for i in range(4))


_render = jax.jit(S.render)  # one compilation instead of op-by-op dispatch


def _hand_scene():
    """A red square, a green circle, a blue triangle and a yellow cross, one per quadrant."""
    return S.Scene(
        count=jnp.int32(4),
        classes=jnp.array([1, 0, 2, 3], jnp.int32),
        colours=jnp.array([0, 1, 2, 3], jnp.int32),
        centres=jnp.array([[8.0, 8.0], [8.5, 24.5], [24.0, 8.0], [24.0, 24.0]], jnp.float32),
        sizes=jnp.array([4.0, 3.0, 4.0, 3.0], jnp.float32),
    )


def test_a_hand_specified_scene_renders_exactly_the_expected_pixels():
    image = np.asarray(_render(_hand_scene()))
    masks = np.asarray(jax.jit(S.masks)(_hand_scene()))
    # Square at (8, 8), half-extent 4: pixel centres 4.5..11.5 in both axes, an 8 x 8 block.
    expected = np.zeros((32, 32), bool)
    expected[4:12, 4:12] = True
    np.testing.assert_array_equal(masks[0], expected)
    # Circle of radius 3 centred on pixel (8, 24): the 29 lattice points of the disc (Gauss circle, r = 3).
    i, j = np.nonzero(masks[1])
    assert len(i) == 29 and np.all((i - 8) ** 2 + (j - 24) ** 2 <= 9)
    # Triangle at (24, 8), half-extent 4: rows 20..27, widths 0, 2, 2, 4, 4, 6, 6, 8, symmetric about 8.
    np.testing.assert_array_equal(masks[2].sum(1)[20:28], [0, 2, 2, 4, 4, 6, 6, 8])
    assert masks[2].sum() == 32 and np.all(np.abs(np.nonzero(masks[2])[1] + 0.5 - 8) <= 4)
    # Cross at (24, 24), half-extent 3: two 6 x 2 bars (rows/cols 21..26 and 23..24), 20 pixels.
    expected = np.zeros((32, 32), bool)
    expected[21:27, 23:25] = expected[23:25, 21:27] = True
    np.testing.assert_array_equal(masks[3], expected)
    for mask, colour in zip(masks, (RED, GREEN, BLUE, YELLOW)):
        np.testing.assert_array_equal(image[mask], np.broadcast_to(colour, (mask.sum(), 3)))
    np.testing.assert_array_equal(image[~masks.any(0)], -1.0)


def test_empty_slots_draw_nothing_and_later_slots_paint_over_earlier_ones():
    scene = _hand_scene()._replace(count=jnp.int32(1), classes=jnp.array([1, -1, -1, -1], jnp.int32))
    image = np.asarray(_render(scene))
    assert np.sum(np.any(image != -1.0, axis=-1)) == 64
    overlap = _hand_scene()._replace(centres=jnp.full((4, 2), 16.0, jnp.float32))
    assert np.array_equal(np.asarray(_render(overlap))[16, 16], YELLOW)  # the cross, slot 3, is on top


def test_sampled_scenes_match_what_is_drawn():
    n = 256
    images, scenes = S.sample(jax.random.key(7), n)
    assert images.shape == (n, 32, 32, 3) and images.dtype == jnp.float32
    assert images.min() == -1.0 and images.max() == 1.0
    masks = np.asarray(jax.jit(jax.vmap(S.masks))(scenes))
    images, scenes = np.asarray(images), jax.tree.map(np.asarray, scenes)
    present = np.arange(3) < scenes.count[:, None]
    assert set(np.unique(scenes.count)) == {1, 2, 3}
    assert np.array_equal(scenes.classes >= 0, present) and np.array_equal(scenes.colours >= 0, present)
    np.testing.assert_array_equal(masks.any((2, 3)), present)  # every shape covers pixels; empty slots none
    assert masks.sum(1).max() == 1  # shapes never overlap
    for b, k in zip(*np.nonzero(present)):
        inside = images[b][masks[b, k]]
        np.testing.assert_array_equal(inside.mean(0), S.PALETTE[scenes.colours[b, k]])
        rows, cols = np.nonzero(masks[b, k])
        low, high = scenes.centres[b, k] - scenes.sizes[b, k], scenes.centres[b, k] + scenes.sizes[b, k]
        assert rows.min() + 0.5 >= low[0] and rows.max() + 0.5 <= high[0]
        assert cols.min() + 0.5 >= low[1] and cols.max() + 0.5 <= high[1]
    np.testing.assert_array_equal(images[~masks.any(1)], -1.0)
    lo, hi = S.SIZE_RANGE
    sizes = scenes.sizes[present]
    assert sizes.min() >= lo * 16 and sizes.max() <= hi * 16


def test_labels_and_counts_are_read_from_the_scene():
    _, scenes = S.sample(jax.random.key(8), 256)
    classes, colours = np.asarray(scenes.classes), np.asarray(scenes.colours)
    np.testing.assert_array_equal(S.label(scenes), classes[:, 0])
    assert set(np.unique(S.label(scenes))) == set(range(S.NUM_LABELS))
    np.testing.assert_array_equal(S.count(scenes, shape="square"), (classes == 1).sum(1))
    red_circles = S.count(scenes, shape="circle", colour="red")
    np.testing.assert_array_equal(red_circles, ((classes == 0) & (colours == 0)).sum(1))
    np.testing.assert_array_equal(S.count(scenes), scenes.count)
    assert S.count(_hand_scene(), colour="blue") == 1 and S.count(_hand_scene(), shape="circle", colour="red") == 0


def test_shapes_are_deterministic_per_key_and_work_under_jit_and_vmap():
    key = jax.random.key(9)
    images, scenes = S.sample(key, 8, image_size=48)  # sample is itself jitted
    again, again_scenes = S.sample(key, 8, image_size=48)
    assert images.shape == (8, 48, 48, 3) and np.array_equal(images, again)
    assert all(np.array_equal(a, b) for a, b in zip(scenes, again_scenes))
    assert not np.array_equal(S.sample(jax.random.key(10), 8, image_size=48)[0], images)
    one = jax.jit(lambda k: S.render(S.sample_scene(k, image_size=48), 48))
    np.testing.assert_array_equal(jax.vmap(one)(jax.random.split(key, 8)), images)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: S.sample(jax.random.key(0), 2, image_size=8), "image_size"),
        (lambda: S.sample(jax.random.key(0), 2, max_shapes=5), "max_shapes"),
        (lambda: S.count(_hand_scene(), shape="hexagon"), "shape"),
        (lambda: D.load_digits(size=12), "size"),
        (lambda: D.load_digits(size=16, method="cubic"), "method"),
        (lambda: D.train_test_split(D.load_digits(), test_fraction=1.5), "test_fraction"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- user arrays -----------------------------------------------------------------------------------


def test_load_npz_round_trips_and_validates(tmp_path):
    x = np.arange(24, dtype=np.uint8).reshape(6, 2, 2)
    y = np.arange(6)
    np.savez(tmp_path / "ok.npz", x=x, y=y)
    data = D.load_npz(tmp_path / "ok.npz")
    assert data.x.dtype == np.float32 and np.array_equal(data.x, x) and np.array_equal(data.y, y)
    np.savez(tmp_path / "no_y.npz", x=x)
    assert D.load_npz(tmp_path / "no_y.npz").y is None
    np.savez(tmp_path / "named.npz", images=x, classes=y)  # config.data.key and config.data.label_key
    data = D.load_npz(tmp_path / "named.npz", key="images", label_key="classes")
    assert np.array_equal(data.x, x) and np.array_equal(data.y, y)
    assert D.load_npz(tmp_path / "no_y.npz", label_key=None).y is None
    with pytest.raises(ValueError, match="must hold the key 'x'.*set data.key"):
        D.load_npz(tmp_path / "named.npz")
    bad = {
        "missing": ({"X": x}, "'x'"),
        "extra": ({"x": x, "labels": y}, "'x'"),
        "lengths": ({"x": x, "y": y[:5]}, "y must"),
        "nonfinite": ({"x": np.array([0.0, np.nan])}, "finite"),
        "strings": ({"x": np.array(["a", "b"])}, "x must"),
    }
    for name, (arrays, match) in bad.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(ValueError, match=match):
            D.load_npz(tmp_path / f"{name}.npz")
    with pytest.raises(ValueError, match="path"):
        D.load_npz(tmp_path / "absent.npz")
    np.savez(tmp_path / "objects.npz", x=np.array([{}, {}], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        D.load_npz(tmp_path / "objects.npz")


def _write_png(path, pixels):
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(pixels, np.uint8)).save(path)


def test_a_png_folder_loads_exactly_with_labels_from_its_subfolders(tmp_path):
    """Pixel v becomes v / 127.5 - 1 rounded once to float32 (0 -> -1, 255 -> 1); labels are the sorted subfolders'
    indices; one colour image makes every image RGB (grey g -> (g, g, g))."""
    grey = np.array([[0, 255], [51, 204]], np.uint8)
    _write_png(tmp_path / "pngs" / "b_cats" / "1.png", grey)
    _write_png(tmp_path / "pngs" / "a_dogs" / "2.png", 255 - grey)
    _write_png(tmp_path / "pngs" / "a_dogs" / "1.png", grey)
    data = D.load_png_folder(str(tmp_path / "pngs"))
    assert data.x.shape == (3, 2, 2, 1) and data.x.dtype == np.float32
    np.testing.assert_array_equal(data.y, [0, 0, 1])  # a_dogs/1, a_dogs/2, b_cats/1
    np.testing.assert_array_equal(data.x[0, ..., 0], np.float32(grey / 127.5 - 1.0))
    np.testing.assert_array_equal(data.x[1, ..., 0], np.float32((255 - grey) / 127.5 - 1.0))
    assert data.x.min() == -1.0 and data.x.max() == 1.0
    _write_png(tmp_path / "flat" / "grey.png", grey)
    _write_png(tmp_path / "flat" / "red.png", np.stack([grey, 0 * grey, 0 * grey], -1))
    flat = D.load_png_folder(str(tmp_path / "flat"))
    assert flat.y is None and flat.x.shape == (2, 2, 2, 3)
    np.testing.assert_array_equal(flat.x[0], np.float32(np.repeat(grey[..., None] / 127.5 - 1.0, 3, -1)))
    # the training configs take it through data.path; labels condition when asked
    ds = D.REGISTRY["npz"](path=str(tmp_path / "pngs"), conditional=True, batch_size=3)
    assert ds.event_shape == (2, 2, 1) and ds.num_classes == 2


def test_a_bad_png_folder_is_refused_naming_the_problem(tmp_path):
    _write_png(tmp_path / "sizes" / "a.png", np.zeros((2, 2)))
    _write_png(tmp_path / "sizes" / "b.png", np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"share one size: .*a.png' is \(2, 2\), .*b.png' is \(4, 2\)"):
        D.load_png_folder(str(tmp_path / "sizes"))
    _write_png(tmp_path / "both" / "a.png", np.zeros((2, 2)))
    _write_png(tmp_path / "both" / "cls" / "b.png", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="either directly or in class subfolders"):
        D.load_png_folder(str(tmp_path / "both"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ValueError, match="holds no .png files"):
        D.load_png_folder(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="data.path must name an existing folder"):
        D.load_png_folder(str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="conditional=True needs labels.*no class subfolders"):
        D.REGISTRY["npz"](path=str(tmp_path / "both" / "cls"), conditional=True, batch_size=1)


# --- batching --------------------------------------------------------------------------------------


def _indexed(n=103, batch_size=10, seed=0):
    """Batches of (ids, ids^2) so a batch shows which examples it holds."""
    ids = np.arange(n)
    return D.ArrayBatches((ids, ids**2), batch_size, seed=seed)


def test_an_array_batch_is_a_pure_function_of_seed_and_step():
    a, b = _indexed()(17), _indexed()(17)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    np.testing.assert_array_equal(a[1], a[0] ** 2)
    np.testing.assert_array_equal(a[0], _indexed().indices(17))
    assert not np.array_equal(_indexed(seed=1)(17)[0], a[0])


def test_each_epoch_visits_every_kept_example_once_in_a_new_order():
    batches = _indexed()
    assert batches.steps_per_epoch == 10
    epochs = [np.concatenate([batches(e * 10 + i)[0] for i in range(10)]) for e in range(3)]
    for ids in epochs:
        assert len(ids) == 100 and len(np.unique(ids)) == 100  # 3 dropped per epoch
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    order = np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.key(0), 2), 103))
    np.testing.assert_array_equal(epochs[2], order[:100])


def test_resuming_at_step_k_reproduces_the_tail_of_an_uninterrupted_run():
    for make in (lambda: _indexed(), lambda: D.SamplerBatches(D.moons, 16, seed=5)):
        full = [jax.tree.map(np.asarray, b) for _, b in D.iterate(make(), stop=25)]
        resumed = [jax.tree.map(np.asarray, b) for _, b in D.iterate(make(), start=13, stop=25)]
        assert len(resumed) == 12
        for u, v in zip(full[13:], resumed):
            assert all(np.array_equal(p, q) for p, q in zip(jax.tree.leaves(u), jax.tree.leaves(v)))


def test_a_sampler_batch_is_the_sampler_at_the_folded_key():
    batches = D.SamplerBatches(functools.partial(S.sample, image_size=48), 8, seed=2)
    images, scenes = batches(7)
    expected, expected_scenes = S.sample(jax.random.fold_in(jax.random.key(2), 7), 8, image_size=48)
    np.testing.assert_array_equal(images, expected)
    np.testing.assert_array_equal(scenes.classes, expected_scenes.classes)
    assert not np.array_equal(batches(8)[0], images)


def test_batching_validates_its_arguments():
    ids = np.arange(10)
    with pytest.raises(ValueError, match="batch_size must be <="):
        D.ArrayBatches(ids, 11)
    with pytest.raises(ValueError, match="leading length"):
        D.ArrayBatches((ids, ids[:9]), 2)
    with pytest.raises(ValueError, match="step"):
        D.ArrayBatches(ids, 2)(-1)
    with pytest.raises(ValueError, match="'data' axis"):
        D.ArrayBatches(ids, 2, mesh=jax.make_mesh((1,), ("model",)))
    with pytest.raises(ValueError, match="seed"):
        D.SamplerBatches(D.moons, 2, seed=-1)


_SHARDED_SCRIPT = textwrap.dedent(
    """
    import functools
    import hashlib
    import jax, numpy as np
    import diffjax as dj
    import diffjax.parallel

    assert jax.device_count() == 8
    ids = np.arange(1000)
    data = (ids.astype(np.float32).reshape(-1, 1) * np.ones((1, 3), np.float32), ids)
    sources = {
        "arrays": lambda mesh: dj.data.ArrayBatches(data, 32, seed=3, mesh=mesh),
        "moons": lambda mesh: dj.data.SamplerBatches(dj.data.moons, 32, seed=3, mesh=mesh),
        "shapes": lambda mesh: dj.data.SamplerBatches(
            functools.partial(dj.data.shapes.sample, image_size=16), 32, seed=3, mesh=mesh),
    }
    meshes = [  # parallel's Auto-typed 1-D mesh, and an Explicit 2-D one with a second axis
        (dj.parallel.data_mesh(), sources),
        (jax.make_mesh((4, 2), ("data", "model")), ("arrays", "moons")),
    ]
    for mesh, names in meshes:
        rows = 32 // mesh.shape["data"]
        for name in names:
            make = sources[name]
            plain, sharded = make(None), make(mesh)
            for step in (0, 31, 32, 500):
                for p, s in zip(jax.tree.leaves(plain(step)), jax.tree.leaves(sharded(step))):
                    assert np.array_equal(np.asarray(p), np.asarray(s)), (name, mesh, step)
                    assert len(s.sharding.device_set) == 8, s.sharding
                    assert {sh.data.shape[0] for sh in s.addressable_shards} == {rows}
    try:
        dj.data.ArrayBatches(data, 12, mesh=jax.make_mesh((8,), ("data",)))
    except ValueError as error:
        assert "divisible" in str(error)
    else:
        raise AssertionError("batch 12 on 8 devices was accepted")
    print("SHARDED OK")
    """
)


def draws_digest() -> str:
    """A hash of toy, shapes and batch draws, to compare between float32-only and x64 processes.

    The sizes are those of the other tests, so this process reuses their compilations."""
    digest = hashlib.sha1()
    for f in dj.data.TOY_2D.values():
        digest.update(np.asarray(f(jax.random.key(0), 200_000)).tobytes())
    images, scenes = dj.data.shapes.sample(jax.random.key(9), 8, image_size=48)
    digest.update(np.asarray(images).tobytes() + np.asarray(scenes.centres).tobytes())
    digest.update(dj.data.ArrayBatches(np.arange(50), 7, seed=2).indices(9).astype(np.int64).tobytes())
    return digest.hexdigest()


def test_sharded_global_batches_equal_unsharded_ones_on_eight_devices():
    # The subprocess runs without jax_enable_x64, so it also checks that draws do not depend on it.
    script = _SHARDED_SCRIPT + inspect.getsource(draws_digest) + 'print("DRAWS", draws_digest())\n'
    devices = f"{FAST_COMPILE_FLAGS} --xla_force_host_platform_device_count=8"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": devices}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SHARDED OK" in out.stdout
    assert f"DRAWS {draws_digest()}" in out.stdout  # the same bits with and without x64
