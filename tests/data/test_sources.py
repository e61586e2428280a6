"""Tests of dkkt_plugin.data.sources and .cifar_format: Fashion-MNIST IDX files, CIFAR-10 batches."""
from __future__ import annotations

import doctest
import gzip
import io
import pickle
import pickletools
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import dkkt_plugin.data as data
from dkkt_plugin.data import ImageDataset, load_cifar10, load_fashion_mnist, write_cifar10
from dkkt_plugin.data import cifar_format, sources
from dkkt_plugin.errors import ConfigError, DatasetError

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST not at {FMNIST}: apt-get install -y dataset-fashion-mnist")
realdata = [pytest.mark.realdata, needs_fmnist]


def test_public_names():
    for name in ("ImageDataset", "load_fashion_mnist", "load_cifar10", "PracticalSubset",
                 "write_cifar10"):
        assert name in data.__all__ and hasattr(data, name)


@pytest.mark.parametrize("module", [sources, cifar_format])
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------------- ImageDataset
def test_image_dataset_basics():
    images = torch.randn(6, 3, 4, 4)
    ds = ImageDataset(images, torch.tensor([0, 1, 2, 0, 1, 2]), classes=("a", "b", "c"),
                      mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 2.0), name="toy")
    assert len(ds) == 6 and ds.num_classes == 3 and ds.image_shape == (3, 4, 4)
    x, y = ds[4]
    assert torch.equal(x, images[4]) and y == 1 and isinstance(y, int)
    sub = ds.subset([5, 0])
    assert len(sub) == 2 and sub.targets.tolist() == [2, 0] and torch.equal(sub.images[0], images[5])
    assert sub.classes == ds.classes and sub.mean == ds.mean and sub.name == "toy"
    den = ds.denormalize(images)                                   # (6, 3, 4, 4)
    assert torch.allclose(den[:, 2], images[:, 2] * 2.0 + 0.3)
    assert "toy" in repr(ds)


@pytest.mark.parametrize("images, targets, mean", [
    (torch.zeros(4, 4, 4), torch.zeros(4, dtype=torch.long), (0.0,)),        # 3-D images
    (torch.zeros(4, 1, 4, 4), torch.zeros(3, dtype=torch.long), (0.0,)),     # count mismatch
    (torch.zeros(4, 1, 4, 4), torch.zeros(4, dtype=torch.long), (0.0, 0.0)),  # channels
])
def test_image_dataset_rejects_bad_shapes(images, targets, mean):
    with pytest.raises(ConfigError):
        ImageDataset(images, targets, classes=("a",), mean=mean, std=mean, name="bad")


# --------------------------------------------------------------------------- IDX files
def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_fmnist(root: Path, pixels: np.ndarray, labels: np.ndarray, *, gz: bool, prefix="t10k"):
    root.mkdir(parents=True, exist_ok=True)
    for stem, arr in ((f"{prefix}-images-idx3-ubyte", pixels), (f"{prefix}-labels-idx1-ubyte", labels)):
        raw = _idx_bytes(arr)
        (root / (stem + ".gz" if gz else stem)).write_bytes(gzip.compress(raw) if gz else raw)


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_synthetic_idx(tmp_path, gz):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    labels = np.arange(20) % 10
    _write_fmnist(tmp_path, pixels, labels, gz=gz)
    ds = load_fashion_mnist(tmp_path, train=False)
    assert ds.images.shape == (20, 1, 28, 28) and ds.images.dtype == torch.float32
    assert ds.targets.dtype == torch.int64 and ds.targets.tolist() == labels.tolist()
    back = ds.denormalize(ds.images) * 255                         # (20, 1, 28, 28)
    assert torch.allclose(back[:, 0], torch.from_numpy(pixels).float(), atol=1e-3)
    assert ds.mean == (0.2861,) and ds.std == (0.3530,) and ds.classes[0] == "T-shirt/top"


def test_fashion_mnist_env_root(tmp_path, monkeypatch):
    _write_fmnist(tmp_path, np.zeros((3, 28, 28), np.uint8), np.array([1, 2, 3]), gz=False)
    monkeypatch.setenv("DKKT_FASHION_MNIST_ROOT", str(tmp_path))
    assert load_fashion_mnist(train=False).targets.tolist() == [1, 2, 3]


def test_fashion_mnist_missing_dir_mentions_apt(tmp_path):
    with pytest.raises(DatasetError, match="apt-get install -y dataset-fashion-mnist") as e:
        load_fashion_mnist(tmp_path / "nowhere")
    assert "nowhere" in str(e.value) and "root=" in str(e.value)


def test_fashion_mnist_missing_file(tmp_path):
    _write_fmnist(tmp_path, np.zeros((3, 28, 28), np.uint8), np.array([1, 2, 3]), gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte"):
        load_fashion_mnist(tmp_path, train=False)


@pytest.mark.parametrize("defect", ["truncated", "magic", "count", "label_range", "size"])
def test_fashion_mnist_corrupt_synthetic(tmp_path, defect):
    pixels, labels = np.zeros((4, 28, 28), np.uint8), np.array([0, 1, 2, 3])
    if defect == "count":
        labels = labels[:3]
    if defect == "label_range":
        labels = np.array([0, 1, 2, 12])
    if defect == "size":
        pixels = np.zeros((4, 27, 27), np.uint8)
    _write_fmnist(tmp_path, pixels, labels, gz=False)
    images = tmp_path / "t10k-images-idx3-ubyte"
    raw = images.read_bytes()
    if defect == "truncated":
        images.write_bytes(raw[:-100])
    if defect == "magic":
        images.write_bytes(b"\x00\x00\x08\x01" + raw[4:])
    with pytest.raises(DatasetError, match="t10k-"):
        load_fashion_mnist(tmp_path, train=False)


@pytest.fixture(scope="module")
def fmnist_train():
    return load_fashion_mnist(FMNIST, train=True)


@pytest.mark.realdata
@needs_fmnist
def test_fashion_mnist_real_train(fmnist_train):
    ds = fmnist_train
    assert ds.images.shape == (60000, 1, 28, 28) and ds.images.dtype == torch.float32
    assert ds.targets.shape == (60000,) and ds.targets.dtype == torch.int64
    assert torch.bincount(ds.targets).tolist() == [6000] * 10
    assert int(ds.targets[0]) == 9 and ds.classes[9] == "Ankle boot"  # first image: ankle boot
    assert abs(float(ds.images.mean())) < 0.01 and abs(float(ds.images.std()) - 1) < 0.01
    assert ds.name == "fashion_mnist" and ds.num_classes == 10
    pixels = ds.denormalize(ds.images[:100]) * 255
    assert torch.allclose(pixels, pixels.round(), atol=1e-3) and pixels.min() > -1e-3


@pytest.mark.realdata
@needs_fmnist
def test_fashion_mnist_real_test_gz_equals_plain(tmp_path):
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(FMNIST / f"{name}.gz") as src, open(tmp_path / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    gz, plain = load_fashion_mnist(FMNIST, train=False), load_fashion_mnist(tmp_path, train=False)
    assert gz.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(gz.targets).tolist() == [1000] * 10 and int(gz.targets[0]) == 9
    assert torch.equal(gz.images, plain.images) and torch.equal(gz.targets, plain.targets)


@pytest.mark.realdata
@needs_fmnist
@pytest.mark.parametrize("defect", ["truncated_gz", "truncated_plain", "magic"])
def test_fashion_mnist_real_corrupt(tmp_path, defect):
    shutil.copy(FMNIST / "t10k-images-idx3-ubyte.gz", tmp_path)
    labels = gzip.decompress((FMNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())
    if defect == "truncated_gz":
        raw = (FMNIST / "t10k-labels-idx1-ubyte.gz").read_bytes()
        (bad := tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(raw[:len(raw) // 2])
    elif defect == "truncated_plain":
        (bad := tmp_path / "t10k-labels-idx1-ubyte").write_bytes(labels[:5000])
    else:
        (bad := tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x03" + labels[4:])
    with pytest.raises(DatasetError) as e:
        load_fashion_mnist(tmp_path, train=False)
    assert str(bad) in str(e.value)


# --------------------------------------------------------------------------- CIFAR-10
def _raw_batches(folder: Path, names) -> tuple[np.ndarray, np.ndarray]:
    """The stored pixels and labels, read with plain pickle as the original docs describe."""
    data, labels = [], []
    for name in names:
        with open(folder / name, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        data.append(d[b"data"])
        labels.extend(d[b"labels"])
    return np.concatenate(data), np.array(labels)


@pytest.mark.parametrize("train", [True, False])
def test_cifar_round_trip(tmp_path, train):
    folder = write_cifar10(tmp_path, num_train=50, num_test=20, seed=3)
    assert folder == tmp_path / "cifar-10-batches-py"
    ds = load_cifar10(tmp_path, train=train)
    names = cifar_format.TRAIN_FILES if train else (cifar_format.TEST_FILE,)
    raw, labels = _raw_batches(folder, names)
    n = 50 if train else 20
    assert ds.images.shape == (n, 3, 32, 32) and ds.images.dtype == torch.float32
    assert ds.targets.tolist() == labels.tolist()
    assert torch.bincount(ds.targets, minlength=10).tolist() == [n // 10] * 10
    pixels = ds.denormalize(ds.images) * 255                       # (n, 3, 32, 32)
    assert torch.allclose(pixels, torch.from_numpy(raw.reshape(n, 3, 32, 32)).float(), atol=1e-3)
    assert ds.classes[0] == "airplane" and ds.name == "cifar10"
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2023, 0.1994, 0.2010)


def test_cifar_format_is_python2_pickle(tmp_path):
    folder = write_cifar10(tmp_path, num_train=10, num_test=10)
    for name in (*cifar_format.TRAIN_FILES, "test_batch", "batches.meta"):
        raw = (folder / name).read_bytes()
        assert raw.startswith(b"\x80\x02}")
        ops = {op.name for op, _, _ in pickletools.genops(raw)}
        assert "SHORT_BINSTRING" in ops and not ops & {"BINUNICODE", "SHORT_BINUNICODE", "BINBYTES"}
    with open(folder / "data_batch_1", "rb") as f:          # torchvision reads with latin1
        d = pickle.load(f, encoding="latin1")
    assert set(d) == {"batch_label", "labels", "data", "filenames"}
    assert d["data"].dtype == np.uint8 and d["data"].shape == (2, 3072)
    assert d["batch_label"] == "training batch 1 of 5"


def test_cifar_seed_and_root_forms(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "a", seed=1)
    write_cifar10(tmp_path / "b", seed=2)
    a = load_cifar10(tmp_path / "a")
    assert torch.equal(a.images, load_cifar10(tmp_path / "a" / "cifar-10-batches-py").images)
    assert not torch.equal(a.images, load_cifar10(tmp_path / "b").images)
    monkeypatch.setenv("DKKT_CIFAR10_ROOT", str(tmp_path / "a"))
    assert torch.equal(load_cifar10(train=False).targets, load_cifar10(tmp_path / "a", False).targets)
    monkeypatch.delenv("DKKT_CIFAR10_ROOT")
    with pytest.raises(DatasetError, match="DKKT_CIFAR10_ROOT"):
        load_cifar10()


def test_cifar_missing(tmp_path):
    with pytest.raises(DatasetError, match="cifar-10-batches-py") as e:
        load_cifar10(tmp_path)
    assert "download=True" in str(e.value) and str(tmp_path) in str(e.value)


@pytest.mark.parametrize("defect", ["garbage", "truncated", "no_labels", "bad_shape", "code"])
def test_cifar_corrupt(tmp_path, defect):
    folder = write_cifar10(tmp_path)
    target = folder / "data_batch_3"
    marker = tmp_path / "pwned"
    if defect == "garbage":
        target.write_bytes(b"not a pickle at all")
    elif defect == "truncated":
        target.write_bytes(target.read_bytes()[:200])
    elif defect == "no_labels":
        target.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}))
    elif defect == "bad_shape":
        target.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    else:  # a pickle that would run code must be refused, not executed
        class Evil:
            def __reduce__(self):
                return (Path.touch, (marker,))
        target.write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}))
    with pytest.raises(DatasetError, match="data_batch_3"):
        load_cifar10(tmp_path)
    assert not marker.exists()


def _serve(monkeypatch, archive: Path, md5: str):
    monkeypatch.setattr(sources, "CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr(sources, "CIFAR10_MD5", md5)


def test_cifar_download_from_local_tarball(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "src", seed=5, tarball=True)
    archive = tmp_path / "src" / cifar_format.ARCHIVE_NAME
    _serve(monkeypatch, archive, cifar_format.file_md5(archive))
    expected = load_cifar10(tmp_path / "src")
    got = load_cifar10(tmp_path / "dst", download=True)
    assert torch.equal(got.images, expected.images) and torch.equal(got.targets, expected.targets)
    assert (tmp_path / "dst" / cifar_format.ARCHIVE_NAME).is_file()
    # files present and valid: nothing is fetched again (the URL now points nowhere)
    monkeypatch.setattr(sources, "CIFAR10_URL", (tmp_path / "gone.tar.gz").as_uri())
    assert torch.equal(load_cifar10(tmp_path / "dst", download=True).images, expected.images)
    # root given as the batches folder itself
    _serve(monkeypatch, archive, cifar_format.file_md5(archive))
    got = load_cifar10(tmp_path / "dst2" / "cifar-10-batches-py", train=False, download=True)
    assert len(got) == 20 and (tmp_path / "dst2" / "cifar-10-batches-py" / "test_batch").is_file()


def test_cifar_download_checksum_mismatch(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "src", tarball=True)
    _serve(monkeypatch, tmp_path / "src" / cifar_format.ARCHIVE_NAME, "0" * 32)
    with pytest.raises(DatasetError, match="checksum mismatch") as e:
        load_cifar10(tmp_path / "dst", download=True)
    assert "0" * 32 in str(e.value)
    assert list((tmp_path / "dst").iterdir()) == []          # no partial file, nothing extracted


def test_cifar_download_unreachable(tmp_path, monkeypatch):
    _serve(monkeypatch, tmp_path / "missing.tar.gz", "0" * 32)
    with pytest.raises(DatasetError, match="could not download"):
        load_cifar10(tmp_path / "dst", download=True)
    assert list((tmp_path / "dst").iterdir()) == []


def test_cifar_download_refuses_unsafe_tarball(tmp_path, monkeypatch):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        payload = b"owned"
        info = tarfile.TarInfo("cifar-10-batches-py/../../escaped.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    _serve(monkeypatch, archive, cifar_format.file_md5(archive))
    with pytest.raises(DatasetError, match="refusing to extract"):
        load_cifar10(tmp_path / "a" / "dst", download=True)
    assert not (tmp_path / "a" / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()


@pytest.mark.parametrize("kwargs", [{"num_train": -1}, {"num_test": 2.5}, {"seed": True}])
def test_write_cifar10_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ConfigError):
        write_cifar10(tmp_path, **kwargs)
