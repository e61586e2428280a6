"""The CIFAR-10 "python version" file format: read it safely, write small files in it.

The original archive (``cifar-10-python.tar.gz``, also torchvision's layout) holds a folder
``cifar-10-batches-py`` with five training batches ``data_batch_1`` … ``data_batch_5``, one
``test_batch`` and ``batches.meta``. Each is a Python 2 pickle (protocol 2) of a dict whose keys
are Python 2 ``str`` objects, so Python 3 sees them as ``bytes`` under ``encoding="bytes"`` and
as ``str`` under torchvision's ``encoding="latin1"``:

- a batch: ``b"batch_label"`` (str), ``b"labels"`` (list of int in 0..9), ``b"data"`` (uint8
  ndarray ``(n, 3072)``, each row the 1024 red, then green, then blue values of a 32×32 image
  in row-major order), ``b"filenames"`` (list of str);
- the meta file: ``b"num_cases_per_batch"``, ``b"label_names"`` (10 str), ``b"num_vis"`` (3072).

:func:`write_cifar10` writes small random files in exactly that format (the same pickle opcodes a
Python 2 ``cPickle.dump(d, f, 2)`` emits), so tests run offline against the real readers, ours
and torchvision's. :func:`read_batch` reads one file through an unpickler that only admits the
numpy globals a batch needs, never arbitrary code.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DatasetError

BATCHES_DIR = "cifar-10-batches-py"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
IMAGE_BYTES = 3 * 32 * 32  # one row of b"data"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")

_CORRUPT_FIX = (f"replace it with the file from the original `{ARCHIVE_NAME}` (delete the "
                f"`{BATCHES_DIR}` folder and pass download=True where a network exists)")


# --------------------------------------------------------------------------- reading
class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a CIFAR batch refers to."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR file")
        return super().find_class(module, name)


def _load_dict(path: Path) -> dict[str, object]:
    """Unpickle ``path`` and return its dict with ``str`` keys (bytes keys decoded)."""
    try:
        with open(path, "rb") as f:
            obj = _BatchUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise DatasetError(f"cannot read CIFAR-10 file {path}: {e}") from e
    except Exception as e:  # any unpickling failure means a corrupt or foreign file
        raise DatasetError(f"CIFAR-10 file {path} is corrupt or not a CIFAR pickle "
                           f"({type(e).__name__}: {e}); {_CORRUPT_FIX}") from e
    if not isinstance(obj, dict):
        raise DatasetError(f"CIFAR-10 file {path} holds a {type(obj).__name__}, not a dict; "
                           f"{_CORRUPT_FIX}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def read_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 batch file and check its structure.

    Args:
        path: a ``data_batch_*`` or ``test_batch`` file.

    Returns:
        ``(data, labels)``: uint8 ``(n, 3072)`` pixel rows and int64 ``(n,)`` labels in 0..9.

    Raises:
        DatasetError: the file is unreadable, not a CIFAR pickle, or has wrong keys / shapes.
    """
    path = Path(path)
    d = _load_dict(path)
    missing = [k for k in ("data", "labels") if k not in d]
    if missing:
        raise DatasetError(f"CIFAR-10 file {path} lacks the key(s) {missing} (has {sorted(d)}); "
                           f"{_CORRUPT_FIX}")
    data = d["data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == IMAGE_BYTES):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(f"CIFAR-10 file {path}: 'data' must be uint8 (n, {IMAGE_BYTES}), "
                           f"got {got}; {_CORRUPT_FIX}")
    try:
        labels = np.asarray(d["labels"], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"CIFAR-10 file {path}: 'labels' are not integers ({e}); "
                           f"{_CORRUPT_FIX}") from e
    if len(labels) != len(data):
        raise DatasetError(f"CIFAR-10 file {path}: {len(data)} images but {len(labels)} labels; "
                           f"{_CORRUPT_FIX}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"CIFAR-10 file {path}: labels span {labels.min()}..{labels.max()}, "
                           f"expected 0..9; {_CORRUPT_FIX}")
    return data, labels


def read_label_names(path: str | os.PathLike) -> tuple[str, ...]:
    """The 10 class names of a ``batches.meta`` file (raises DatasetError when malformed)."""
    path = Path(path)
    names = _load_dict(path).get("label_names")
    if not isinstance(names, (list, tuple)) or len(names) != 10:
        raise DatasetError(f"CIFAR-10 meta file {path} lacks a list of 10 'label_names'; "
                           f"{_CORRUPT_FIX}")
    return tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names)


def file_md5(path: str | os.PathLike) -> str:
    """Hex md5 of a file, read in 1 MiB chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- writing
# Protocol-2 opcodes, emitted by hand so that strings are Python 2 `str` (SHORT_BINSTRING /
# BINSTRING), exactly as in the original files; Python 3's pickle can only emit bytes/unicode.
def _p_str(b: bytes) -> bytes:
    return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<I", len(b))) + b


def _p_int(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if 0 <= v < 65536:
        return b"M" + struct.pack("<H", v)
    return b"J" + struct.pack("<i", v)


def _p_obj(obj) -> bytes:
    if isinstance(obj, bytes):
        return _p_str(obj)
    if isinstance(obj, (int, np.integer)):
        return _p_int(int(obj))
    if isinstance(obj, list):
        return b"]" + (b"(" + b"".join(_p_obj(x) for x in obj) + b"e" if obj else b"")
    if isinstance(obj, dict):
        return b"}(" + b"".join(_p_obj(k) + _p_obj(v) for k, v in obj.items()) + b"u"
    if isinstance(obj, np.ndarray) and obj.dtype == np.uint8 and obj.ndim == 2:
        # numpy.core.multiarray._reconstruct(ndarray, (0,), 'b') then __setstate__
        return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _p_int(0) + b"\x85"
                + _p_str(b"b") + b"\x87R(" + _p_int(1) + _p_int(obj.shape[0]) + _p_int(obj.shape[1])
                + b"\x86cnumpy\ndtype\n" + _p_str(b"u1") + _p_int(0) + _p_int(1) + b"\x87R("
                + _p_int(3) + _p_str(b"|") + b"NNN" + b"J\xff\xff\xff\xff" * 2 + _p_int(0) + b"tb"
                + b"\x89" + _p_str(np.ascontiguousarray(obj).tobytes()) + b"tb")
    raise TypeError(f"cannot write {type(obj).__name__} in the CIFAR format")


def _dump_py2(obj: dict, path: Path) -> None:
    path.write_bytes(b"\x80\x02" + _p_obj(obj) + b".")


def write_cifar10(root: str | os.PathLike, *, num_train: int = 50, num_test: int = 20,
                  seed: int = 0, tarball: bool = False) -> Path:
    """Write a small random CIFAR-10 in the original python format under ``root``.

    Writes ``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``. Labels
    are balanced (``i % 10`` before shuffling), pixels uniform random uint8; the training
    images are split over the five batches as evenly as possible. Both our
    :func:`~dkkt_plugin.data.load_cifar10` and ``torchvision.datasets.CIFAR10`` read the result
    (torchvision also checks the md5 of each file against the real data's, so it needs a
    subclass with this fixture's md5s; see ``tests/data/test_torchvision.py``).

    Args:
        root: folder to write into (created if needed).
        num_train: number of training images (≥ 0).
        num_test: number of test images (≥ 0).
        seed: seed of the numpy generator that draws pixels and label order.
        tarball: also write ``root/cifar-10-python.tar.gz`` holding the folder, as the real
            download does; get its checksum with :func:`file_md5`.

    Returns:
        The path of the ``cifar-10-batches-py`` folder.

    Example:
        >>> import tempfile
        >>> from dkkt_plugin.data import write_cifar10, load_cifar10
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = write_cifar10(tmp, num_train=30, num_test=10)
        ...     load_cifar10(tmp).images.shape
        torch.Size([30, 3, 32, 32])
    """
    for name, value in (("num_train", num_train), ("num_test", num_test), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ConfigError(f"write_cifar10: {name} must be an int >= 0, got {value!r}")
    rng = np.random.default_rng(int(seed))
    out = Path(root) / BATCHES_DIR
    out.mkdir(parents=True, exist_ok=True)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.arange(n) % 10)             # (n,) balanced
        data = rng.integers(0, 256, (n, IMAGE_BYTES), dtype=np.uint8)  # (n, 3072)
        return data, labels

    def batch(label: bytes, data: np.ndarray, labels: np.ndarray, start: int) -> dict:
        names = [b"fixture_%06d.png" % (start + i) for i in range(len(labels))]
        return {b"batch_label": label, b"labels": [int(y) for y in labels],
                b"data": data, b"filenames": names}

    data, labels = draw(num_train)
    bounds = np.linspace(0, num_train, len(TRAIN_FILES) + 1).round().astype(int)
    for i, name in enumerate(TRAIN_FILES):
        lo, hi = bounds[i], bounds[i + 1]
        _dump_py2(batch(b"training batch %d of 5" % (i + 1), data[lo:hi], labels[lo:hi], lo),
                  out / name)
    data, labels = draw(num_test)
    _dump_py2(batch(b"testing batch 1 of 1", data, labels, 0), out / TEST_FILE)
    _dump_py2({b"num_cases_per_batch": int(bounds[1] - bounds[0]),
               b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": IMAGE_BYTES},
              out / META_FILE)
    if tarball:
        with tarfile.open(Path(root) / ARCHIVE_NAME, "w:gz") as tar:
            tar.add(out, arcname=BATCHES_DIR)
    return out
