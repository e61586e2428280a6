"""Real image datasets, loaded whole into memory and normalised: Fashion-MNIST and CIFAR-10.

Both loaders return an :class:`ImageDataset`: normalised float32 images ``(N, C, H, W)``, int64
labels, class names and the mean / std used (as in DatasetCondensation: docs/method.md,
'Baselines'). Files are decoded with ``numpy.frombuffer`` in one piece, never image by image.

- Fashion-MNIST: the standard IDX files, plain or gzipped, e.g. the Debian package
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``, the default root;
  ``DKKT_FASHION_MNIST_ROOT`` overrides it).
- CIFAR-10: torchvision's / the original ``cifar-10-batches-py`` folder (root may be that folder
  or its parent; ``DKKT_CIFAR10_ROOT`` is the default root); ``download=True`` fetches
  :data:`CIFAR10_URL`, checks :data:`CIFAR10_MD5` and extracts it safely.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
import urllib.request
import zlib
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DatasetError
from .cifar_format import (ARCHIVE_NAME, BATCHES_DIR, CIFAR10_CLASSES, META_FILE, TEST_FILE,
                           TRAIN_FILES, file_md5, read_batch, read_label_names)

FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2861,), (0.3530,)
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"

_FMNIST_FIX = ("install it with `apt-get install -y dataset-fashion-mnist`, or point --data-root "
               "(root=... in Python, or DKKT_FASHION_MNIST_ROOT) to a folder with the IDX files")


def _cifar_fix(root: Path, downloading: bool = False) -> str:
    if downloading:
        return (f"check the network and retry, or place torchvision's `{BATCHES_DIR}` folder "
                f"under {root} yourself")
    return (f"place torchvision's `{BATCHES_DIR}` folder under {root}, or point --data-root (root=... "
            "in Python, or DKKT_CIFAR10_ROOT) to its folder, or pass download=True where a network exists")


class ImageDataset(torch.utils.data.Dataset):
    """In-memory, normalised image dataset. Map-style: ``ds[i] -> (image (C,H,W) float32, int)``.

    Args:
        images: normalised images, float32 ``(N, C, H, W)``.
        targets: labels, int64 ``(N,)`` in ``0..len(classes)-1``.
        classes: class names, index = label.
        mean: per-channel mean the images were normalised with (length C).
        std: per-channel std the images were normalised with (length C).
        name: short dataset name, e.g. ``"fashion_mnist"`` or ``"cifar10"``.
        root: the folder the files were read from (the loaders set it; None: made in memory).

    Shape:
        - ``images``: ``(N, C, H, W)``; ``targets``: ``(N,)``; ``ds[i]``: ``((C, H, W), int)``.

    Example:
        >>> import torch
        >>> ds = ImageDataset(torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]),
        ...                   classes=("a", "b"), mean=(0.5,), std=(0.25,), name="toy")
        >>> x, y = ds[1]; x.shape, y
        (torch.Size([1, 2, 2]), 1)
        >>> ds.denormalize(x)[0, 0, 0].item()
        0.5
    """

    def __init__(self, images: Tensor, targets: Tensor, *, classes: Sequence[str],
                 mean: Sequence[float], std: Sequence[float], name: str, root: str | None = None):
        if images.ndim != 4 or not images.is_floating_point():
            raise ConfigError(f"ImageDataset: images must be float (N, C, H, W), got "
                              f"{images.dtype} {tuple(images.shape)}")
        if targets.shape != (images.shape[0],):
            raise ConfigError(f"ImageDataset: {images.shape[0]} images but targets of shape "
                              f"{tuple(targets.shape)}; pass one label per image")
        if not len(mean) == len(std) == images.shape[1]:
            raise ConfigError(f"ImageDataset: images have {images.shape[1]} channel(s) but mean "
                              f"has {len(mean)} and std {len(std)} values; give one per channel")
        self.images = images                            # (N, C, H, W) float32
        self.targets = targets.to(torch.int64)          # (N,)
        self.classes = tuple(classes)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.name = name
        self.root = None if root is None else str(root)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i], int(self.targets[i])

    def __repr__(self) -> str:
        return (f"ImageDataset(name={self.name!r}, n={len(self)}, "
                f"image_shape={self.image_shape}, num_classes={self.num_classes})")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return tuple(self.images.shape[1:])

    def denormalize(self, x: Tensor) -> Tensor:
        """Undo the normalisation: ``x * std + mean`` per channel; ``x`` is ``(..., C, H, W)``."""
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return x * std + mean

    def subset(self, indices) -> "ImageDataset":
        """A new ImageDataset holding the images at ``indices`` (any 1-D index, in that order)."""
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        return ImageDataset(self.images[idx], self.targets[idx], classes=self.classes,
                            mean=self.mean, std=self.std, name=self.name, root=self.root)


def _normalised(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 ``(N, C, H, W)`` -> float32 ``(pixels / 255 - mean) / std``, computed in place."""
    x = torch.from_numpy(pixels.astype(np.float32))    # (N, C, H, W), one writable copy
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return x.div_(255.0).sub_(m).div_(s)


# --------------------------------------------------------------------------- Fashion-MNIST
def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes with ``ndim`` dimensions (gzipped if ``*.gz``)."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"cannot read IDX file {path} ({type(e).__name__}: {e}); it is "
                           f"truncated or corrupt: {_FMNIST_FIX}") from e
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise DatasetError(f"{path} is not an IDX file of {ndim}-D unsigned bytes: magic "
                           f"{raw[:4].hex() or '(empty file)'}, expected 0000080{ndim}; "
                           f"{_FMNIST_FIX}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DatasetError(f"{path} is truncated or padded: its header promises {dims} "
                           f"({expected} bytes) but it holds {len(raw)} bytes; {_FMNIST_FIX}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):  # uncompressed first: faster
        if candidate.is_file():
            return candidate
    raise DatasetError(f"Fashion-MNIST file {root / stem}[.gz] not found; {_FMNIST_FIX}")


def load_fashion_mnist(root: str | os.PathLike | None = None, train: bool = True) -> ImageDataset:
    """Load Fashion-MNIST from its IDX files, normalised with mean 0.2861 / std 0.3530.

    Args:
        root: folder with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``; default
            ``$DKKT_FASHION_MNIST_ROOT`` or ``/usr/share/datasets/fashion-mnist``.
        train: the 60 000 training images if True, else the 10 000 test images.

    Returns:
        ImageDataset ``"fashion_mnist"`` with images ``(N, 1, 28, 28)``.

    Raises:
        DatasetError: the folder or a file is missing, or a file is corrupt / truncated.
    """
    root = Path(root if root is not None else os.environ.get("DKKT_FASHION_MNIST_ROOT")
                or FASHION_MNIST_ROOT)
    if not root.is_dir():
        raise DatasetError(f"Fashion-MNIST folder {root} does not exist; {_FMNIST_FIX}")
    prefix = "train" if train else "t10k"
    images_path = _find_idx(root, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx(root, f"{prefix}-labels-idx1-ubyte")
    pixels = _read_idx(images_path, 3)                 # (N, 28, 28) uint8
    labels = _read_idx(labels_path, 1)                 # (N,) uint8
    if pixels.shape[1:] != (28, 28):
        raise DatasetError(f"{images_path} holds {pixels.shape[1:]} images, expected 28x28; "
                           f"{_FMNIST_FIX}")
    if len(labels) != len(pixels):
        raise DatasetError(f"{images_path} has {len(pixels)} images but {labels_path} has "
                           f"{len(labels)} labels; {_FMNIST_FIX}")
    if len(labels) and labels.max() > 9:
        raise DatasetError(f"{labels_path} has label {labels.max()}, expected 0..9; {_FMNIST_FIX}")
    images = _normalised(pixels[:, None], FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    return ImageDataset(images, torch.from_numpy(labels.astype(np.int64)),
                        classes=FASHION_MNIST_CLASSES, mean=FASHION_MNIST_MEAN,
                        std=FASHION_MNIST_STD, name="fashion_mnist", root=str(root))


# --------------------------------------------------------------------------- CIFAR-10
def _batches_dir(root: Path, files: Sequence[str]) -> Path:
    """``root/cifar-10-batches-py`` or ``root`` itself, whichever holds all of ``files``."""
    for candidate in (root / BATCHES_DIR, root):
        if all((candidate / f).is_file() for f in files):
            return candidate
    raise DatasetError(f"CIFAR-10 not found under {root}: no {BATCHES_DIR} folder with "
                       f"{', '.join(files)}; {_cifar_fix(root)}")


def _read_cifar(root: Path, train: bool) -> ImageDataset:
    files = TRAIN_FILES if train else (TEST_FILE,)
    folder = _batches_dir(root, files)
    parts = [read_batch(folder / f) for f in files]
    data = np.concatenate([d for d, _ in parts])       # (N, 3072) uint8
    labels = np.concatenate([y for _, y in parts])     # (N,) int64
    meta = folder / META_FILE
    classes = read_label_names(meta) if meta.is_file() else CIFAR10_CLASSES
    images = _normalised(data.reshape(-1, 3, 32, 32), CIFAR10_MEAN, CIFAR10_STD)
    return ImageDataset(images, torch.from_numpy(labels), classes=classes,
                        mean=CIFAR10_MEAN, std=CIFAR10_STD, name="cifar10", root=str(root))


def _fetch(url: str, archive: Path, md5: str) -> None:
    """Download ``url`` to ``archive`` through ``archive.part``; check its md5 on the way."""
    part = archive.with_name(archive.name + ".part")
    h = hashlib.md5()
    try:
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as f:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    h.update(chunk)
                    f.write(chunk)
        except (OSError, ValueError) as e:  # URLError is an OSError; ValueError: bad URL
            raise DatasetError(f"could not download CIFAR-10 from {url} ({e}); "
                               f"{_cifar_fix(archive.parent, True)}") from e
        if h.hexdigest() != md5:
            raise DatasetError(f"checksum mismatch for {url}: md5 {h.hexdigest()}, expected "
                               f"{md5}; the partial file was removed; "
                               + _cifar_fix(archive.parent, True))
        os.replace(part, archive)
    finally:
        part.unlink(missing_ok=True)


def _extract(archive: Path, dest: Path) -> None:
    """Extract the CIFAR archive into ``dest``, refusing links, devices and escaping paths."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                parts = PurePosixPath(m.name).parts
                if (PurePosixPath(m.name).is_absolute() or ".." in parts or not parts
                        or parts[0] != BATCHES_DIR or not (m.isfile() or m.isdir())):
                    raise DatasetError(f"refusing to extract {archive}: member {m.name!r} is "
                                       f"not a plain file inside {BATCHES_DIR}/; delete the "
                                       f"archive and {_cifar_fix(dest)}")
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(dest, members=members, **safe)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"cannot extract {archive} ({e}); delete it and "
                           + _cifar_fix(dest)) from e


def download_cifar10(root: str | os.PathLike) -> Path:
    """Fetch :data:`CIFAR10_URL` into ``root``, check :data:`CIFAR10_MD5`, extract it.

    An archive already in ``root`` with the right md5 is reused. Returns the batches folder.
    """
    root = Path(root)
    parent = root.parent if root.name == BATCHES_DIR else root
    parent.mkdir(parents=True, exist_ok=True)
    archive = parent / ARCHIVE_NAME
    if not (archive.is_file() and file_md5(archive) == CIFAR10_MD5):
        _fetch(CIFAR10_URL, archive, CIFAR10_MD5)
    _extract(archive, parent)
    return parent / BATCHES_DIR


def load_cifar10(root: str | os.PathLike | None = None, train: bool = True, *,
                 download: bool = False) -> ImageDataset:
    """Load CIFAR-10 from the python batches, normalised with DatasetCondensation's mean / std.

    Args:
        root: the ``cifar-10-batches-py`` folder or its parent; default ``$DKKT_CIFAR10_ROOT``.
        train: the 50 000 training images (5 batches) if True, else the 10 000 test images.
        download: when the files are missing or invalid, download and extract the archive
            into ``root`` (checked against :data:`CIFAR10_MD5`); valid files are never
            downloaded again.

    Returns:
        ImageDataset ``"cifar10"`` with images ``(N, 3, 32, 32)``.

    Raises:
        DatasetError: files missing (and ``download`` False), corrupt, or the download failed.
    """
    if root is None:
        root = os.environ.get("DKKT_CIFAR10_ROOT")
        if not root:
            raise DatasetError("CIFAR-10: no folder given and DKKT_CIFAR10_ROOT is not set; pass "
                               "--data-root DIR (root=... in Python), the folder holding "
                               "cifar-10-batches-py, or set DKKT_CIFAR10_ROOT")
    root = Path(root)
    try:
        return _read_cifar(root, train)
    except DatasetError:
        if not download:
            raise
    download_cifar10(root)
    return _read_cifar(root, train)
