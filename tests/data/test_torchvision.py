"""PracticalSubset and our loaders against torchvision's own datasets (needs torchvision).

torchvision 0.29 facts these tests rely on:
- ``FashionMNIST(root, download=False)`` reads ``root/FashionMNIST/raw/<name>`` UNCOMPRESSED
  and requires all four files (train and t10k) to exist; ``.gz`` files alone count as missing,
  and ``download=True`` would not reuse the Debian ``.gz`` files either (their md5s differ from
  torchvision's list, because Debian recompressed them). So the files are decompressed here.
- ``CIFAR10`` checks every batch file against the md5 of the real CIFAR-10 files; the fixture
  from ``write_cifar10`` is read through a subclass that lists the fixture's md5s instead.
"""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import torch

torchvision = pytest.importorskip("torchvision")

from dkkt_plugin.data import PracticalSubset, load_cifar10, load_fashion_mnist, write_cifar10  # noqa: E402
from dkkt_plugin.data.cifar_format import (META_FILE, TEST_FILE, TRAIN_FILES,  # noqa: E402
                                           file_md5)

FMNIST = Path("/usr/share/datasets/fashion-mnist")
NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture(scope="module")
def tv_fashion_root(tmp_path_factory):
    if not all((FMNIST / f"{n}.gz").is_file() for n in NAMES):
        pytest.skip(f"Fashion-MNIST not at {FMNIST}: apt-get install -y dataset-fashion-mnist")
    root = tmp_path_factory.mktemp("tv")
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for n in NAMES:
        with gzip.open(FMNIST / f"{n}.gz") as src, open(raw / n, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return root


@pytest.mark.realdata
def test_fashion_mnist_gz_only_is_not_enough_for_torchvision(tmp_path):
    if not (FMNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not at {FMNIST}")
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for n in NAMES:
        (raw / f"{n}.gz").symlink_to(FMNIST / f"{n}.gz")
    with pytest.raises(RuntimeError, match="not found"):
        torchvision.datasets.FashionMNIST(tmp_path, train=False, download=False)


@pytest.mark.realdata
def test_practical_subset_of_torchvision_fashion_mnist(tv_fashion_root):
    to_tensor = torchvision.transforms.ToTensor()
    tv = torchvision.datasets.FashionMNIST(tv_fashion_root, train=True, download=False,
                                           transform=to_tensor)
    sub = PracticalSubset(tv, pipc=10, seed=0)
    assert len(sub) == 100 and sub.class_counts == {c: 10 for c in range(10)}
    assert torch.equal(sub.targets, tv.targets[sub.indices])
    images, labels = sub.tensors()
    assert images.shape == (100, 1, 28, 28) and images.dtype == torch.float32
    assert torch.equal(labels, sub.targets)
    assert [sub[i][1] for i in range(0, 100, 10)] == list(range(10))
    # the same selection from our loader gives the same pixels and the same indices
    ours = load_fashion_mnist(FMNIST, train=True)
    assert torch.equal(ours.targets, tv.targets)
    mine = PracticalSubset(ours, pipc=10, seed=0)
    assert torch.equal(mine.indices, sub.indices)
    assert torch.allclose(ours.denormalize(mine.tensors()[0]), images, atol=1e-6)


def _fixture_cifar(root: Path):
    """torchvision's CIFAR10 with the fixture's md5s in place of the real data's."""
    folder = root / "cifar-10-batches-py"

    class FixtureCIFAR10(torchvision.datasets.CIFAR10):
        train_list = [[f, file_md5(folder / f)] for f in TRAIN_FILES]
        test_list = [[TEST_FILE, file_md5(folder / TEST_FILE)]]
        meta = {**torchvision.datasets.CIFAR10.meta, "md5": file_md5(folder / META_FILE)}

    return FixtureCIFAR10


@pytest.mark.parametrize("train", [True, False])
def test_torchvision_cifar10_reads_write_cifar10(tmp_path, train):
    write_cifar10(tmp_path, num_train=50, num_test=20, seed=11)
    with pytest.raises(RuntimeError, match="corrupted"):   # real md5s reject the fixture
        torchvision.datasets.CIFAR10(tmp_path, train=train, download=False)
    tv = _fixture_cifar(tmp_path)(tmp_path, train=train, download=False,
                                  transform=torchvision.transforms.ToTensor())
    ours = load_cifar10(tmp_path, train=train)
    assert tv.classes == list(ours.classes) and tv.targets == ours.targets.tolist()
    pixels = torch.from_numpy(tv.data).permute(0, 3, 1, 2).float()      # (N, 3, 32, 32)
    assert torch.allclose(ours.denormalize(ours.images) * 255, pixels, atol=1e-3)

    sub = PracticalSubset(tv, pipc=2, seed=0)                  # list targets
    assert len(sub) == 20 and sub.access_percent == pytest.approx(100 * 20 / len(tv))
    images, labels = sub.tensors()
    assert images.shape == (20, 3, 32, 32)
    assert torch.equal(labels, torch.tensor(tv.targets)[sub.indices])
    mine = PracticalSubset(ours, pipc=2, seed=0)
    assert torch.equal(mine.indices, sub.indices)
    assert torch.allclose(ours.denormalize(mine.tensors()[0]), images, atol=1e-6)
