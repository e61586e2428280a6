"""The practical setting: the server sees only ``pipc`` real images per class.

:class:`PracticalSubset` wraps any map-style dataset whose items are ``(x, y)`` pairs and keeps
``pipc`` images of each class (or all of them). Labels are read without touching the images
whenever the dataset exposes them: ``.targets`` (tensor, numpy array or list: torchvision
datasets, :class:`~dkkt_plugin.data.ImageDataset`), ``tensors[1]`` of a ``TensorDataset``, or the
parent's labels of a ``Subset``; otherwise every item is read once (correct but slow).
``.targets`` is trusted as is: a torchvision ``target_transform`` is not applied to it.

Selection (reproducible, and stable across datasets that differ in other classes):

- class ``c``'s images are its positions in ascending dataset order; a ``torch.Generator``
  seeded from ``(seed, c)`` (through ``numpy.random.SeedSequence``) draws a permutation of them
  and the first ``pipc`` are kept. So class ``c``'s draw depends only on ``seed``, ``c`` and
  class ``c``'s own images, and for one seed the ``pipc=10`` subset is contained in the
  ``pipc=50`` subset. Torch's global RNG is never used.
- ``pipc="all"`` keeps every image in dataset order (the seed is irrelevant).
- ``indices`` are sorted by class, then by draw order within the class.

Labels must be class indices, one per item: one-hot (or soft) label rows are refused with an
error that says to pass ``labels.argmax(1)`` (a row of probabilities has no single class, and
guessing one silently would hide that).
"""
from __future__ import annotations

import numbers
import warnings

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

from ..config import parse_pipc
from ..errors import ConfigError, DatasetError


def _one_hot_error(source: str, shape: tuple, per_item: bool = False) -> DatasetError:
    if per_item:
        return DatasetError(f"the label of {source} has shape {shape}: a one-hot (or soft) label; "
                            "PracticalSubset needs one class index per item: return label.argmax() "
                            "from the dataset (e.g. a target_transform)")
    return DatasetError(f"labels from {source} have shape {shape}: one-hot (or soft) labels; "
                        "PracticalSubset needs one class index per item: pass labels.argmax(1) "
                        "(e.g. TensorDataset(images, labels.argmax(1)))")


def _as_labels(values, source: str) -> Tensor:
    """Labels from a list / numpy array / tensor -> int64 ``(N,)``; integral values only."""
    try:
        y = torch.as_tensor(np.asarray(values) if isinstance(values, list) else values)
    except (TypeError, ValueError, RuntimeError) as e:
        raise DatasetError(f"labels from {source} are not numbers ({e}); give the dataset "
                           "integer class labels") from e
    if y.ndim > 1 and any(d > 1 for d in y.shape[1:]):  # (N, K): one row per item, not an index
        raise _one_hot_error(source, tuple(y.shape))
    y = y.reshape(-1)
    if y.is_complex() or (y.is_floating_point() and not torch.equal(y, y.round())):
        raise DatasetError(f"labels from {source} are not integers ({y.dtype}); give the "
                           "dataset integer class labels")
    return y.to(torch.int64)


def _labels_from_items(dataset) -> Tensor:
    labels = []
    for i in range(len(dataset)):
        item = dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise DatasetError(f"{type(dataset).__name__}[{i}] is a {type(item).__name__}, not an "
                               "(x, y) pair: PracticalSubset needs labelled items or a "
                               "`.targets` attribute")
        y = item[1]
        if (y.numel() if isinstance(y, Tensor) else y.size if isinstance(y, np.ndarray) else 1) > 1:
            raise _one_hot_error(f"{type(dataset).__name__}[{i}]", tuple(y.shape), per_item=True)
        if isinstance(y, Tensor) and y.numel() == 1:
            y = y.item()
        if isinstance(y, bool) or not isinstance(y, (numbers.Integral, np.integer)):
            raise DatasetError(f"{type(dataset).__name__}[{i}] has label {y!r}, not an int: "
                               "PracticalSubset needs integer class labels")
        labels.append(int(y))
    return torch.tensor(labels, dtype=torch.int64)


def dataset_labels(dataset) -> Tensor:
    """Labels of a map-style dataset as int64 ``(N,)``, read without loading images if possible.

    Args:
        dataset: torchvision dataset, ``TensorDataset``, ``Subset``, ImageDataset, or any
            dataset whose items are ``(x, y)``.

    Raises:
        DatasetError: the dataset has no labels, or they are not integers.
    """
    n = len(dataset)
    if isinstance(dataset, TensorDataset):
        if len(dataset.tensors) < 2:
            raise DatasetError("TensorDataset has a single tensor and no labels; build it as "
                               "TensorDataset(images, labels)")
        y = _as_labels(dataset.tensors[1], "TensorDataset.tensors[1]")
    elif isinstance(dataset, Subset) and _has_fast_labels(dataset.dataset):
        parent = dataset_labels(dataset.dataset)
        y = parent[torch.as_tensor(dataset.indices, dtype=torch.int64)]
    elif getattr(dataset, "targets", None) is not None:
        y = _as_labels(dataset.targets, f"{type(dataset).__name__}.targets")
    else:
        return _labels_from_items(dataset)
    if len(y) != n:
        raise DatasetError(f"{type(dataset).__name__} has {n} items but {len(y)} labels; "
                           "make its labels one per item")
    return y


def _has_fast_labels(dataset) -> bool:
    if isinstance(dataset, Subset):
        return _has_fast_labels(dataset.dataset)
    return isinstance(dataset, TensorDataset) or getattr(dataset, "targets", None) is not None


def _class_generator(seed: int, c: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, c]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class PracticalSubset(Dataset):
    """The practical setting: keep only ``pipc`` images per class of a map-style dataset.

    Args:
        dataset: a map-style dataset of ``(x, y)`` items (see the module docstring for how
            labels are found).
        pipc: images kept per class, a positive int, or ``"all"`` (case-insensitive).
        seed: non-negative int; class ``c`` is drawn by a generator seeded from ``(seed, c)``.
        num_classes: classes expected to be ``0..num_classes-1``; each must have images unless
            ``pipc="all"``. Default: the classes that occur.

    Shape:
        - items: whatever ``dataset[i]`` gives, e.g. ``(image (C, H, W), int)``.
        - :meth:`tensors`: ``(M, C, H, W)`` images and ``(M,)`` labels, ``M = len(self)``.

    Attributes:
        indices: int64 ``(M,)`` positions in ``dataset``, sorted by class then draw order.
        targets: int64 ``(M,)`` labels of the kept items.
        class_counts: ``{class: number kept}`` for every class.
        access_percent: ``100 * M / len(dataset)``, the percentage of the data the server sees
            (``access_ratio`` is a deprecated name of the same percentage).

    Raises:
        ConfigError: bad ``pipc`` / ``seed`` / ``num_classes``.
        DatasetError: no labels, a class with fewer than ``pipc`` images, a missing class.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> x, y = torch.randn(30, 1, 4, 4), torch.arange(30) % 3   # 10 images per class
        >>> sub = PracticalSubset(TensorDataset(x, y), pipc=2, seed=0)
        >>> len(sub), sub.class_counts, sub.access_percent
        (6, {0: 2, 1: 2, 2: 2}, 20.0)
        >>> sub.targets.tolist()
        [0, 0, 1, 1, 2, 2]
        >>> images, labels = sub.tensors(); images.shape
        torch.Size([6, 1, 4, 4])
    """

    def __init__(self, dataset, pipc: int | str = "all", *, seed: int = 0,
                 num_classes: int | None = None):
        self.pipc = parse_pipc(pipc)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ConfigError(f"seed must be an int >= 0, got {seed!r}")
        if num_classes is not None and (isinstance(num_classes, bool) or
                                        not isinstance(num_classes, numbers.Integral)
                                        or num_classes <= 0):
            raise ConfigError(f"num_classes must be a positive int or None, got {num_classes!r}")
        self.dataset, self.seed = dataset, int(seed)
        labels = dataset_labels(dataset)                       # (N,)
        if len(labels) == 0:
            raise DatasetError(f"{type(dataset).__name__} is empty; PracticalSubset needs images")
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or (num_classes is not None and hi >= num_classes):
            raise DatasetError(f"{type(dataset).__name__} has labels {lo}..{hi}, but class "
                               f"indices must lie in 0..{num_classes - 1 if num_classes else 'N'}; "
                               "relabel the dataset or pass the right num_classes")
        present = torch.unique(labels).tolist()
        classes = range(num_classes) if num_classes is not None else present

        chosen, counts = [], {}
        for c in classes:
            positions = torch.nonzero(labels == c).flatten()   # (n_c,) ascending
            n_c = len(positions)
            if self.pipc != "all":
                if n_c == 0:
                    raise DatasetError(
                        f"class {c} has no images in {type(dataset).__name__} (num_classes="
                        f"{num_classes}); use pipc='all', or a dataset that has every class")
                if n_c < self.pipc:
                    raise DatasetError(
                        f"class {c} has only {n_c} image(s) in {type(dataset).__name__}, fewer "
                        f"than pipc={self.pipc}; use pipc <= {n_c} or pipc='all'")
                perm = torch.randperm(n_c, generator=_class_generator(self.seed, c))
                positions = positions[perm[:self.pipc]]
            chosen.append(positions)
            counts[int(c)] = len(positions)
        self.indices = torch.cat(chosen)                         # (M,)
        self.targets = labels[self.indices]                      # (M,)
        self.class_counts = counts
        self.access_percent = 100.0 * len(self.indices) / len(labels)

    @property
    def access_ratio(self) -> float:
        """Deprecated name of :attr:`access_percent` (it is a percentage, not a ratio)."""
        warnings.warn("PracticalSubset.access_ratio is a percentage and is renamed access_percent; "
                      "read access_percent instead", DeprecationWarning, stacklevel=2)
        return self.access_percent

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[int(self.indices[i])]

    def __repr__(self) -> str:
        return (f"PracticalSubset(pipc={self.pipc!r}, seed={self.seed}, n={len(self)}, "
                f"access_percent={self.access_percent:.3g}%, dataset={type(self.dataset).__name__})")

    def _stack(self, rows: Tensor) -> Tensor:
        """Images of the kept items at ``rows`` (positions in this subset) as ``(k, C, H, W)``."""
        idx = self.indices[rows]
        images = getattr(self.dataset, "images", None)
        if isinstance(images, Tensor) and len(images) == len(self.dataset):   # ImageDataset
            return images[idx]
        if isinstance(self.dataset, TensorDataset):
            return self.dataset.tensors[0][idx]
        xs = []
        for i in idx.tolist():
            x = self.dataset[i][0]
            if not isinstance(x, (Tensor, np.ndarray)):
                raise DatasetError(f"{type(self.dataset).__name__}[{i}] gives a "
                                   f"{type(x).__name__}, not a tensor; give the dataset a "
                                   "transform that returns tensors (e.g. transforms.ToTensor())")
            xs.append(torch.as_tensor(x))
        if not xs:
            return torch.empty(0)
        return torch.stack(xs)

    def tensors(self) -> tuple[Tensor, Tensor]:
        """All kept items stacked: images ``(M, C, H, W)`` and labels int64 ``(M,)``."""
        return self._stack(torch.arange(len(self))), self.targets.clone()

    def class_images(self, c: int) -> Tensor:
        """The kept images of class ``c``, ``(class_counts[c], C, H, W)``, in draw order."""
        if c not in self.class_counts:
            raise ConfigError(f"class {c!r} is not among this subset's classes "
                              f"{sorted(self.class_counts)}")
        return self._stack(torch.nonzero(self.targets == c).flatten())


def validation_indices(train, per_class: int = 200, seed: int = 999, avoid_seeds: int = 5,
                       avoid_pipc: int = 50) -> Tensor:
    """Held-out training images for choosing settings without the test set.

    Per class, ``per_class`` images from a ``seed``-seeded permutation of the class, skipping
    every image of the practical subsets of seeds ``0 … avoid_seeds - 1`` at ``avoid_pipc`` (which
    contain those at smaller pipc): a distillation of those seeds never sees a validation image.

    Args:
        train: the training set (an :class:`~dkkt_plugin.data.ImageDataset` or anything
            :class:`PracticalSubset` reads labels from) with ``num_classes`` classes.

    Returns:
        int64 indices into ``train``, ``(num_classes * per_class,)``, grouped by class.

    Example:
        >>> from dkkt_plugin.data import ImageDataset
        >>> y = torch.arange(10).repeat_interleave(300)
        >>> train = ImageDataset(torch.zeros(3000, 1, 2, 2), y, classes=tuple("abcdefghij"), mean=(0.0,),
        ...                      std=(1.0,), name="toy")
        >>> val = validation_indices(train, per_class=20)
        >>> torch.bincount(y[val]).tolist() == [20] * 10
        True
    """
    taken: set[int] = set()
    for s in range(avoid_seeds):
        taken |= set(PracticalSubset(train, avoid_pipc, seed=s).indices.tolist())
    gen = torch.Generator().manual_seed(seed)
    labels = dataset_labels(train)
    chosen = []
    for c in range(getattr(train, "num_classes", int(labels.max()) + 1)):
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)].tolist()
        chosen += [i for i in idx if i not in taken][:per_class]
    return torch.tensor(chosen)
