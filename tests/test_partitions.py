"""The digits' partition options (`data.digits.dataset(classes=..., partitions=...)`, `subset`, `partition`).

Exact: `classes` keeps exactly the images whose label is in the set, labels and images unchanged and in
their order; `partitions` keeps the digits of the groups, labelled by group index, and nothing else;
both filter after the train/test split, so an expert's training images are exactly the full run's
training images of its classes, and the held-out evaluation set is filtered the same way. Bad options
raise a ValueError naming `config.data.<option>`.
"""

import numpy as np
import pytest

from diffjax.data import digits

ALL = digits.load_digits()
TRAIN, TEST = digits.train_test_split(ALL)
GROUPS = ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))


def test_subset_keeps_exactly_the_chosen_classes_in_order():
    part = digits.subset(ALL, (3, 7))
    keep = (ALL.labels == 3) | (ALL.labels == 7)
    np.testing.assert_array_equal(part.images, ALL.images[keep])
    np.testing.assert_array_equal(part.labels, ALL.labels[keep])


def test_partition_relabels_by_group_and_drops_the_rest():
    part = digits.partition(ALL, ((1, 2), (8,)))
    keep = np.isin(ALL.labels, (1, 2, 8))
    np.testing.assert_array_equal(part.images, ALL.images[keep])
    np.testing.assert_array_equal(part.labels, (ALL.labels[keep] == 8).astype(int))


def test_expert_datasets_filter_after_the_split_and_together_cover_it():
    shares = [digits.dataset(classes=g, split="train", batch_size=4) for g in GROUPS]
    for g, data in zip(GROUPS, shares):
        np.testing.assert_array_equal(data.train_x, TRAIN.images[np.isin(TRAIN.labels, g)])
        x, labels = data.evaluation
        np.testing.assert_array_equal(x, TEST.images[np.isin(TEST.labels, g)])
        assert set(np.unique(labels)) == set(g) and data.num_classes is None and data.held_out
    assert sum(len(d.train_x) for d in shares) == len(TRAIN.labels)
    conditional = digits.dataset(classes=GROUPS[1], conditional=True, batch_size=4)
    _, labels = conditional.batches(0)
    assert conditional.num_classes == 10 and set(np.asarray(labels)) <= set(GROUPS[1])


def test_the_router_dataset_has_one_class_per_partition():
    data = digits.dataset(partitions=GROUPS, conditional=True, split="train", batch_size=16)
    assert data.num_classes == 2 and data.null_label == 2
    np.testing.assert_array_equal(data.train_x, TRAIN.images)
    x, labels = data.evaluation
    np.testing.assert_array_equal(labels, (TEST.labels >= 5).astype(int))
    batch_x, batch_labels = data.batches(3)
    assert set(np.asarray(batch_labels)) <= {0, 1} and batch_x.shape == (16, 8, 8, 1)


@pytest.mark.parametrize(
    "options,name",
    [
        (dict(classes=()), "config.data.classes"),
        (dict(classes=(1, 1)), "config.data.classes"),
        (dict(classes=(10,)), "config.data.classes"),
        (dict(classes=(True,)), "config.data.classes"),
        (dict(classes="01"), "config.data.classes"),
        (dict(partitions=((0, 1),)), "config.data.partitions"),
        (dict(partitions=((0, 1), (1, 2))), "config.data.partitions"),
        (dict(partitions=((0, 1), ())), r"config.data.partitions\[1\]"),
        (dict(partitions=((0, 1), (12,))), r"config.data.partitions\[1\]"),
        (dict(classes=(0,), partitions=((0,), (1,))), "config.data.classes and config.data.partitions"),
    ],
)
def test_bad_partition_options_name_the_field(options, name):
    with pytest.raises(ValueError, match=name):
        digits.dataset(batch_size=4, field="config.data", **options)
