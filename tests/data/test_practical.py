"""Tests of dkkt_plugin.data.practical.PracticalSubset."""
from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from dkkt_plugin.data import ImageDataset, PracticalSubset, practical, validation_indices
from dkkt_plugin.errors import ConfigError, DatasetError


def _labels(sizes) -> torch.Tensor:
    """Shuffled labels with ``sizes[c]`` items of class c (fixed permutation)."""
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(123))]


def _tensor_ds(sizes=(10, 20, 30)) -> TensorDataset:
    y = _labels(sizes)
    x = torch.arange(len(y), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
    return TensorDataset(x, y)                                     # x[i] is filled with i


class _Targets(Dataset):
    """A dataset with a `.targets` attribute of a given kind; counts item reads."""

    def __init__(self, targets, n):
        self.targets, self.n, self.reads = targets, n, 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.reads += 1
        return torch.full((1, 2, 2), float(i)), int(self.targets[i])


class _Items(Dataset):
    """Only items, no `.targets`."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_doctest():
    result = doctest.testmod(practical)
    assert result.attempted > 0 and result.failed == 0


def test_counts_order_and_access_ratio():
    ds = _tensor_ds((10, 20, 30))
    sub = PracticalSubset(ds, pipc=5, seed=0)
    assert len(sub) == 15 and sub.class_counts == {0: 5, 1: 5, 2: 5}
    assert sub.access_percent == pytest.approx(25.0)
    assert sub.indices.dtype == torch.int64 and sub.targets.dtype == torch.int64
    assert sub.targets.tolist() == [0] * 5 + [1] * 5 + [2] * 5           # sorted by class
    assert len(set(sub.indices.tolist())) == 15
    assert torch.equal(ds.tensors[1][sub.indices], sub.targets)
    x, y = sub[7]
    assert y == sub.targets[7] and float(x.flatten()[0]) == float(sub.indices[7])


@pytest.mark.parametrize("pipc", ["all", "ALL", " All "])
def test_all(pipc):
    ds = _tensor_ds((3, 4, 5))
    sub = PracticalSubset(ds, pipc=pipc, seed=7)
    assert sub.pipc == "all" and len(sub) == 12 and sub.access_percent == 100.0
    assert sub.class_counts == {0: 3, 1: 4, 2: 5}
    for c in range(3):   # dataset order within each class
        idx = sub.indices[sub.targets == c]
        assert idx.tolist() == sorted(idx.tolist())
    assert torch.equal(PracticalSubset(ds, "all", seed=1).indices, sub.indices)


def test_reproducible_and_global_rng_untouched():
    ds = _tensor_ds((50, 50, 50))
    torch.manual_seed(999)
    np.random.seed(5)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    a = PracticalSubset(ds, pipc=10, seed=0)
    b = PracticalSubset(ds, pipc=10, seed=0)
    c = PracticalSubset(ds, pipc=10, seed=1)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(x, y) for x, y in zip(np.random.get_state(), np_state))
    assert torch.equal(a.indices, b.indices)
    assert not torch.equal(a.indices, c.indices)


def test_class_draw_independent_of_other_classes_and_nested():
    base = _tensor_ds((30, 30))
    bigger = TensorDataset(torch.cat([base.tensors[0], torch.zeros(40, 1, 2, 2)]),
                           torch.cat([base.tensors[1], torch.full((40,), 1)]))  # class 1 grows
    a, b = PracticalSubset(base, 10, seed=3), PracticalSubset(bigger, 10, seed=3)
    assert torch.equal(a.indices[a.targets == 0], b.indices[b.targets == 0])
    small = PracticalSubset(base, 4, seed=3)
    for c in (0, 1):   # pipc=4 is the first 4 draws of pipc=10
        assert torch.equal(small.indices[small.targets == c], a.indices[a.targets == c][:4])


@pytest.mark.parametrize("kind", ["list", "numpy", "tensor"])
def test_targets_attribute_kinds_read_without_items(kind):
    y = _labels((6, 6, 6))
    targets = {"list": y.tolist(), "numpy": y.numpy(), "tensor": y}[kind]
    ds = _Targets(targets, len(y))
    sub = PracticalSubset(ds, pipc=2, seed=0)
    assert ds.reads == 0 and len(sub) == 6 and sub.targets.tolist() == [0, 0, 1, 1, 2, 2]
    images, labels = sub.tensors()
    assert images.shape == (6, 1, 2, 2) and torch.equal(labels, sub.targets)
    assert torch.equal(images[:, 0, 0, 0].long(), sub.indices)


def test_items_only_dataset():
    y = _labels((4, 5))
    ds = _Items([(torch.full((1, 3, 3), float(i)), int(label)) for i, label in enumerate(y)])
    sub = PracticalSubset(ds, pipc=3, seed=0)
    assert sub.class_counts == {0: 3, 1: 3} and torch.equal(y[sub.indices], sub.targets)
    assert torch.equal(sub.class_images(1)[:, 0, 0, 0].long(), sub.indices[sub.targets == 1])
    ds_tensor_labels = _Items([(torch.zeros(1), torch.tensor(int(c))) for c in y])
    assert PracticalSubset(ds_tensor_labels, 3).class_counts == {0: 3, 1: 3}


def test_subset_uses_parent_labels():
    y = _labels((10, 10))
    parent = _Targets(y, len(y))
    keep = list(range(0, 20, 2))
    sub = PracticalSubset(Subset(parent, keep), pipc="all")
    assert parent.reads == 0 and torch.equal(sub.targets.sort().values, y[keep].sort().values)
    nested = PracticalSubset(Subset(_Items([(torch.zeros(1), int(c)) for c in y]), keep), "all")
    assert sorted(nested.targets.tolist()) == sorted(y[keep].tolist())


def test_image_dataset_fast_tensors():
    y = _labels((5, 5))
    ds = ImageDataset(torch.randn(10, 3, 4, 4), y, classes=("a", "b"), mean=(0,) * 3,
                      std=(1,) * 3, name="toy")
    sub = PracticalSubset(ds, 2, seed=4)
    images, labels = sub.tensors()
    assert torch.equal(images, ds.images[sub.indices]) and torch.equal(labels, y[sub.indices])
    assert torch.equal(sub.class_images(1), ds.images[sub.indices[2:]])
    with pytest.raises(ConfigError, match="class 5"):
        sub.class_images(5)


def test_tensors_needs_tensor_items():
    sub = PracticalSubset(_Items([("pil image", 0), ("pil image", 1)]), 1)
    with pytest.raises(DatasetError, match="ToTensor"):
        sub.tensors()


def test_pipc_too_large_names_class_and_fix():
    with pytest.raises(DatasetError, match="class 0 has only 10") as e:
        PracticalSubset(_tensor_ds((10, 20, 30)), pipc=15)
    assert "pipc=15" in str(e.value) and "pipc='all'" in str(e.value)


@pytest.mark.parametrize("pipc", [0, -1, "some", "-3", True, False, 2.5, None])
def test_bad_pipc(pipc):
    with pytest.raises(ConfigError, match="pipc must be a positive integer or 'all'"):
        PracticalSubset(_tensor_ds(), pipc=pipc)


def test_pipc_is_read_as_the_command_line_reads_it():
    assert PracticalSubset(_tensor_ds(), pipc="2").pipc == 2 and PracticalSubset(_tensor_ds(), pipc=" ALL ").pipc == "all"


@pytest.mark.parametrize("kwargs", [{"seed": -1}, {"seed": 1.5}, {"num_classes": 0}])
def test_bad_seed_or_num_classes(kwargs):
    with pytest.raises(ConfigError):
        PracticalSubset(_tensor_ds(), pipc=1, **kwargs)


@pytest.mark.parametrize("ds", [
    _Items([torch.zeros(2), torch.zeros(2)]),                        # items are not pairs
    _Items([(torch.zeros(2), "cat"), (torch.zeros(2), "dog")]),      # labels not ints
    TensorDataset(torch.zeros(4, 2)),                                # no label tensor
    TensorDataset(torch.zeros(2, 2), torch.tensor([0.5, 1.0])),      # fractional labels
    TensorDataset(torch.zeros(2, 2), torch.tensor([-1, 0])),         # negative label
    _Items([]),                                                      # empty
], ids=["unpaired", "str_labels", "single_tensor", "float_labels", "negative", "empty"])
def test_unlabelled_or_bad_labels(ds):
    with pytest.raises(DatasetError):
        PracticalSubset(ds, pipc=1)


def test_num_classes():
    ds = _tensor_ds((3, 3))                                          # classes 0, 1 only
    with pytest.raises(DatasetError, match="class 2 has no images"):
        PracticalSubset(ds, pipc=1, num_classes=3)
    sub = PracticalSubset(ds, pipc="all", num_classes=3)
    assert sub.class_counts == {0: 3, 1: 3, 2: 0} and sub.class_images(2).shape[0] == 0
    with pytest.raises(DatasetError, match="0..0"):
        PracticalSubset(ds, pipc=1, num_classes=1)
    integral_floats = TensorDataset(torch.zeros(4, 1), torch.tensor([0.0, 1.0, 0.0, 1.0]))
    assert PracticalSubset(integral_floats, 2).class_counts == {0: 2, 1: 2}


def test_validation_split_is_balanced_reproducible_and_disjoint_from_practical_subsets():
    y = torch.arange(10).repeat_interleave(300)
    ds = ImageDataset(torch.zeros(len(y), 1, 2, 2), y, classes=tuple(map(str, range(10))), mean=(0.0,),
                      std=(1.0,), name="toy")
    val = validation_indices(ds, per_class=20)
    assert torch.bincount(ds.targets[val]).tolist() == [20] * 10
    for seed in range(5):
        for pipc in (10, 50):
            assert not set(val.tolist()) & set(PracticalSubset(ds, pipc, seed=seed).indices.tolist())
    assert torch.equal(val, validation_indices(ds, per_class=20))
    assert not torch.equal(val, validation_indices(ds, per_class=20, seed=1))


def test_access_percent_is_named_a_percentage_and_the_old_name_still_reads():
    sub = PracticalSubset(_tensor_ds((10, 20, 30)), pipc=3, seed=0)  # 9 of 60 images
    assert sub.access_percent == pytest.approx(15.0)
    assert "access_percent=15%" in repr(sub)
    with pytest.warns(DeprecationWarning, match="access_percent"):
        assert sub.access_ratio == sub.access_percent


@pytest.mark.parametrize("where", ["tensor_dataset", "targets", "items"])
def test_one_hot_labels_get_one_clear_error(where):
    y = _labels((5, 5))
    one_hot = torch.nn.functional.one_hot(y, 2)  # (10, 2)
    ds = {"tensor_dataset": TensorDataset(torch.zeros(10, 1, 2, 2), one_hot),
          "targets": _Targets(one_hot.numpy(), 10),
          "items": _Items([(torch.zeros(1), row) for row in one_hot])}[where]
    with pytest.raises(DatasetError, match="one-hot") as e:
        PracticalSubset(ds, pipc=2)
    shape = "(2,)" if where == "items" else "(10, 2)"  # an item's label, or all labels
    assert "argmax(" in str(e.value) and shape in str(e.value) and "\n" not in str(e.value)
    fixed = TensorDataset(torch.zeros(10, 1, 2, 2), one_hot.argmax(1))
    assert PracticalSubset(fixed, pipc=2).class_counts == {0: 2, 1: 2}


def test_column_of_labels_is_one_label_per_item():
    y = _labels((3, 3))
    assert PracticalSubset(TensorDataset(torch.zeros(6, 1), y[:, None]), pipc=1).class_counts == {0: 1, 1: 1}
