"""Image grids of synthetic sets and loss curves of runs, written as PNG.

Plain grids need neither Pillow nor matplotlib: the PNG encoder is the minimum the format
needs: signature, IHDR (8-bit grayscale or RGB, no interlace), one zlib-compressed IDAT with
filter type 0 ("None") on every row, IEND; every chunk carries its CRC-32. Files are written
atomically (temporary file + ``os.replace``).

Class names on a grid (:func:`labelled_image_grid`, :func:`save_image_grid` with ``labels``) and
loss curves (:func:`save_loss_plot`) are drawn with matplotlib where it is installed (``pip install
matplotlib``); without it :func:`save_image_grid` writes the plain grid and warns once, and
:func:`save_loss_plot` warns and writes nothing.

Example:
    >>> import tempfile, os
    >>> grid = image_grid(torch.rand(10, 3, 8, 8), nrow=5, padding=2)
    >>> tuple(grid.shape), grid.dtype  # 2 rows of 5: (2 * (8 + 2) + 2, 5 * (8 + 2) + 2, 3)
    ((22, 52, 3), torch.uint8)
    >>> path = save_png(os.path.join(tempfile.mkdtemp(), "grid.png"), grid)
    >>> path.read_bytes()[:8] == PNG_SIGNATURE
    True
"""
from __future__ import annotations

import io
import math
import os
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from .errors import ConfigError
from .fileio import write_atomic

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPE = {1: 0, 3: 2}  # channels -> PNG colour type (0 grayscale, 2 RGB)


def _chunk(kind: bytes, data: bytes) -> bytes:
    """length (4 bytes, big-endian) + type + data + CRC-32 of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(array: Union[torch.Tensor, np.ndarray]) -> bytes:
    """PNG bytes of an 8-bit image.

    Args:
        array: uint8 ``(H, W)`` or ``(H, W, 1)`` (grayscale) or ``(H, W, 3)`` (RGB).

    Returns:
        The complete PNG file's bytes.

    Raises:
        ConfigError: for another dtype, shape, or an empty image.

    Example:
        >>> encode_png(np.zeros((2, 3), np.uint8))[12:16]
        b'IHDR'
    """
    arr = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    if arr.ndim == 2:
        arr = arr[:, :, None]  # (H, W, 1)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in _COLOUR_TYPE or 0 in arr.shape[:2]:
        raise ConfigError(f"PNG needs a non-empty uint8 (H, W), (H, W, 1) or (H, W, 3) array, "
                          f"got {arr.dtype} {arr.shape}")
    height, width, channels = arr.shape
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOUR_TYPE[channels], 0, 0, 0)  # depth 8, no interlace
    rows = np.ascontiguousarray(arr).reshape(height, width * channels)  # (H, W*C), pixels interleaved
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)  # filter byte 0 before each row
    return (PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 9))
            + _chunk(b"IEND", b""))


def save_png(path: Union[str, os.PathLike], array: Union[torch.Tensor, np.ndarray]) -> Path:
    """Write ``array`` (see ``encode_png``) to ``path`` atomically, creating parent folders.

    Args:
        path: destination file.
        array: uint8 ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)``.

    Returns:
        ``path`` as a ``Path``.

    Example:
        >>> import tempfile, os
        >>> save_png(os.path.join(tempfile.mkdtemp(), "a", "b.png"), np.zeros((4, 4, 3), np.uint8)).name
        'b.png'
    """
    return write_atomic(path, encode_png(array))


def _per_channel(values: Union[float, Sequence[float]], channels: int, what: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32).flatten()
    if t.numel() == 1:
        t = t.expand(channels)
    if t.numel() != channels:
        raise ConfigError(f"{what} needs 1 or {channels} values (one per channel), got {t.numel()}")
    return t.view(1, channels, 1, 1)


def _check_images(images: torch.Tensor, who: str) -> None:
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[0] == 0 or images.shape[1] not in _COLOUR_TYPE:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ConfigError(f"{who} needs a non-empty (N, C, H, W) batch with C 1 or 3, got {shape}")


def _unit(images: torch.Tensor, mean: Optional[Sequence[float]], std: Optional[Sequence[float]],
          scale: int) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, C, scale*H, scale*W)`` CPU float32 in [0, 1]: denormalised and
    clipped with ``mean``/``std``, else min-max scaled over the whole batch (see image_grid)."""
    if (mean is None) != (std is None):
        raise ConfigError("give both mean and std (to denormalise) or neither (min-max scaling)")
    c = images.shape[1]
    x = images.detach().to("cpu", torch.float32)  # (N, C, H, W), a copy when it was not CPU float32
    if not torch.isfinite(x).all():
        raise ConfigError(f"images hold {int((~torch.isfinite(x)).sum())} non-finite values (NaN or inf)")
    if mean is not None:
        x = (x * _per_channel(std, c, "std") + _per_channel(mean, c, "mean")).clamp(0, 1)
    else:
        lo, hi = x.min(), x.max()
        x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    if scale > 1:
        x = x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)  # (N, C, sH, sW)
    return x


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255 + 0.5).clamp(0, 255).to(torch.uint8)


def image_grid(images: torch.Tensor, nrow: Optional[int] = None, *, mean: Optional[Sequence[float]] = None,
               std: Optional[Sequence[float]] = None, padding: int = 2, scale: int = 1,
               pad_value: float = 0.0) -> torch.Tensor:
    """Tile images into one uint8 picture, row by row, as torchvision's ``make_grid``.

    Values: with ``mean`` and ``std`` (per channel, or one value for all), images are denormalised
    (``x * std + mean``) and clipped to [0, 1], as torchvision's ``save_image``; without them the
    whole grid is min-max scaled to [0, 1] together (a constant grid becomes 0), so the images stay
    comparable with each other. Then ``round(255 * v)``.

    Args:
        images: ``(N, C, H, W)`` float, C 1 or 3.
        nrow: images per row; default ``ceil(sqrt(N))`` (square-ish). For a synthetic set stored
            class by class, ``nrow=ipc`` puts one class on each row.
        mean, std: the normalisation to undo, per channel; both or neither.
        padding: pixels between images and around the border (not scaled).
        scale: integer nearest-neighbour upscaling of every image (28 px images are tiny).
        pad_value: value in [0, 1] of the padding pixels.

    Returns:
        ``(rows * (scale*H + padding) + padding, cols * (scale*W + padding) + padding, C)`` uint8 on
        the CPU, where ``cols = min(nrow, N)``, ``rows = ceil(N / cols)``; cells after the last image
        are padding.

    Raises:
        ConfigError: on a bad shape, channel count, nrow, scale, padding, a lone mean or std, or
            non-finite values.

    Example:
        >>> image_grid(torch.zeros(3, 1, 4, 4), nrow=3, mean=[0.5], std=[0.5], padding=0)[0, 0]
        tensor([128], dtype=torch.uint8)
    """
    _check_images(images, "image_grid")
    n, c, h, w = images.shape
    nrow = math.ceil(math.sqrt(n)) if nrow is None else nrow
    if nrow < 1 or scale < 1 or padding < 0:
        raise ConfigError(f"need nrow >= 1, scale >= 1, padding >= 0; "
                          f"got nrow={nrow}, scale={scale}, padding={padding}")
    x = _unit(images, mean, std, scale)  # (N, C, sH, sW) in [0, 1]
    h, w = h * scale, w * scale
    ncol, rows = min(nrow, n), math.ceil(n / min(nrow, n))
    grid = torch.full((c, rows * (h + padding) + padding, ncol * (w + padding) + padding), float(pad_value))
    for i in range(n):
        top, left = padding + (i // ncol) * (h + padding), padding + (i % ncol) * (w + padding)
        grid[:, top:top + h, left:left + w] = x[i]
    return _to_uint8(grid).permute(1, 2, 0).contiguous()  # (H', W', C)


LEGIBLE_PX = 96  # at ipc 1 images are upscaled to at least this side (28 px Fashion-MNIST: 4x, 112 px)
_CHAR_WIDTH = 0.62  # DejaVu Sans' mean advance per character, in units of the font's pixel size


def _matplotlib() -> Optional[Any]:
    """``(Figure, FigureCanvasAgg)`` from matplotlib (no pyplot: no global state), or None."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure, FigureCanvasAgg


def _no_matplotlib(what: str) -> None:
    warnings.warn(f"matplotlib is not installed: {what} (pip install matplotlib)", RuntimeWarning, stacklevel=3)


def _check_labels(labels: Any, n: int, class_names: Optional[Sequence[str]]) -> torch.Tensor:
    y = torch.as_tensor(labels).detach().cpu()
    if y.shape != (n,) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ConfigError(f"labels must be integer class indices, one per image ({n},), got "
                          f"{y.dtype} {tuple(y.shape)}")
    y = y.long()
    if n and int(y.min()) < 0:
        raise ConfigError(f"labels must be >= 0, got {int(y.min())}")
    if class_names is not None and n and int(y.max()) >= len(class_names):
        raise ConfigError(f"label {int(y.max())} has no name: class_names holds {len(class_names)}; "
                          "give one name per class, index = label")
    return y


def _by_class(y: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """``[(class, its positions in order)]`` for the classes present, ascending."""
    return [(int(c), (y == c).nonzero().flatten()) for c in torch.unique(y)]


def _single_columns(count: int) -> int:
    """Columns of the ipc 1 layout: about twice as wide as tall (10 classes: 2 rows of 5)."""
    return min(count, math.ceil(math.sqrt(2 * count)))


def labelled_image_grid(images: torch.Tensor, labels: Any, class_names: Optional[Sequence[str]] = None, *,
                        mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                        padding: int = 2, scale: int = 2) -> np.ndarray:
    """A grid of ``images`` with each class's name written beside it (needs matplotlib).

    Several images per class: one row per class, its name on the left, images in their order.
    One image per class: about twice as many columns as rows (10 classes: 2 rows of 5), each name
    above its image, and the images upscaled to at least :data:`LEGIBLE_PX` pixels a side.
    Values are mapped as in :func:`image_grid`; the background is white, the names black.

    Args:
        images: ``(N, C, H, W)`` float, C 1 or 3.
        labels: ``(N,)`` integer class indices.
        class_names: name of each class, index = label; default: the label numbers.
        mean, std: the normalisation to undo, per channel; both or neither.
        padding: white pixels between images and around the border (not scaled).
        scale: integer nearest-neighbour upscaling of every image (raised at one image per class
            to reach :data:`LEGIBLE_PX`).

    Returns:
        uint8 ``(H', W', C)`` on the CPU.

    Raises:
        ConfigError: bad images or labels (as image_grid), or a label without a name.
        ModuleNotFoundError: matplotlib is not installed.

    Example:
        >>> grid = labelled_image_grid(torch.rand(10, 1, 28, 28), torch.arange(10),
        ...                            [f"class {i}" for i in range(10)])   # doctest: +SKIP
        >>> grid.shape   # 2 rows of 5 cells, each name above its 112 px image  # doctest: +SKIP
        (258, 592, 1)
    """
    tools = _matplotlib()
    if tools is None:
        raise ModuleNotFoundError("labelled_image_grid needs matplotlib (pip install matplotlib)")
    Figure, FigureCanvasAgg = tools
    from matplotlib.transforms import IdentityTransform

    _check_images(images, "labelled_image_grid")
    if scale < 1 or padding < 0:
        raise ConfigError(f"need scale >= 1, padding >= 0; got scale={scale}, padding={padding}")
    n, c, h0, w0 = images.shape
    y = _check_labels(labels, n, class_names)
    groups = _by_class(y)
    names = {k: str(class_names[k]) if class_names is not None else str(k) for k, _ in groups}
    per_class = max(len(idx) for _, idx in groups)
    if per_class == 1:
        scale = max(scale, math.ceil(LEGIBLE_PX / max(h0, w0)))
    tiles = _to_uint8(_unit(images, mean, std, scale))  # (N, C, h, w)
    h, w = tiles.shape[2:]
    font_px = int(min(18, max(11, 0.14 * w)))
    text_w = math.ceil(_CHAR_WIDTH * font_px * max(len(t) for t in names.values())) + 6
    places: list[tuple[int, int, int]] = []  # (image index, top, left)
    texts: list[tuple[str, float, float, str, str]] = []  # (name, x, y from the top, ha, va)
    if per_class == 1:
        ncol = _single_columns(len(groups))
        band = math.ceil(1.5 * font_px)
        cell_w, cell_h = max(w, text_w), band + h
        for r, (k, idx) in enumerate(groups):
            top = padding + (r // ncol) * (cell_h + padding) + band
            left = padding + (r % ncol) * (cell_w + padding) + (cell_w - w) // 2
            places.append((int(idx[0]), top, left))
            texts.append((names[k], left + w / 2, top - 3, "center", "bottom"))
        height = padding + math.ceil(len(groups) / ncol) * (cell_h + padding)
        width = padding + ncol * (cell_w + padding)
    else:
        x0 = text_w + padding
        for r, (k, idx) in enumerate(groups):
            top = padding + r * (h + padding)
            places += [(int(i), top, x0 + padding + j * (w + padding)) for j, i in enumerate(idx)]
            texts.append((names[k], x0 - 4, top + h / 2, "right", "center"))
        height = padding + len(groups) * (h + padding)
        width = x0 + padding + per_class * (w + padding)
    canvas = np.full((height, width, 3), 255, np.uint8)
    for i, top, left in places:
        canvas[top:top + h, left:left + w] = tiles[i].permute(1, 2, 0).numpy()  # C 1 broadcasts to RGB
    dpi = 100
    fig = Figure(figsize=((width + 0.5) / dpi, (height + 0.5) / dpi), dpi=dpi)  # + 0.5: whole pixels
    agg = FigureCanvasAgg(fig)
    fig.figimage(canvas, xo=0, yo=0, origin="upper")  # pixel for pixel, no resampling
    for text, x, top, ha, va in texts:
        fig.text(x, height - top, text, transform=IdentityTransform(), fontsize=font_px * 72 / dpi,
                 ha=ha, va=va, color="black")
    agg.draw()
    rgb = np.asarray(agg.buffer_rgba())[:height, :width, :3]
    return np.ascontiguousarray(rgb[:, :, :1] if c == 1 else rgb)  # grey stays grey: text is black


def save_image_grid(path: Union[str, os.PathLike], images: torch.Tensor, nrow: Optional[int] = None, *,
                    labels: Any = None, class_names: Optional[Sequence[str]] = None,
                    mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                    padding: int = 2, scale: int = 2, pad_value: float = 0.0) -> Path:
    """Write a grid of ``images`` as a PNG at ``path`` (atomically); returns the path.

    With ``labels`` the grid is labelled (:func:`labelled_image_grid`: one row per class, or at
    one image per class a readable grid with each name above its image). Where matplotlib is not
    installed it warns once and writes the plain grid in the same order: one class per row, or at
    one image per class the same number of columns. Without ``labels``: ``image_grid(images, nrow,
    ...)``.

    Args:
        path: destination ``.png`` file; parent folders are created.
        images: ``(N, C, H, W)``, C 1 or 3.
        nrow: images per row of a grid without labels (with labels the classes set the layout).
        labels: ``(N,)`` integer class indices, e.g. a synthetic set's labels.
        class_names: name of each class (index = label), e.g. ``ImageDataset.classes``; default:
            the label numbers.
        mean, std, padding, scale, pad_value: as in ``image_grid`` (here ``scale`` defaults to 2;
            ``pad_value`` applies to plain grids, labelled ones are white).

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ConfigError: bad images or labels, a label without a name, ``class_names`` without
            ``labels``, or ``nrow`` with ``labels``.

    Example:
        >>> import tempfile, os
        >>> save_image_grid(os.path.join(tempfile.mkdtemp(), "syn.png"), torch.rand(4, 1, 28, 28)).suffix
        '.png'
    """
    if labels is None:
        if class_names is not None:
            raise ConfigError("class_names need labels (one class index per image) to name the images")
        grid = image_grid(images, nrow, mean=mean, std=std, padding=padding, scale=scale, pad_value=pad_value)
        return save_png(path, grid)
    if nrow is not None:
        raise ConfigError("give labels (the classes set the layout) or nrow, not both")
    _check_images(images, "save_image_grid")
    y = _check_labels(labels, images.shape[0], class_names)
    if _matplotlib() is not None:
        return save_png(path, labelled_image_grid(images, y, class_names, mean=mean, std=std,
                                                  padding=padding, scale=scale))
    _no_matplotlib(f"{Path(path).name} is a plain grid without class names")
    groups = _by_class(y)
    if max(len(idx) for _, idx in groups) == 1:
        order, ncol = [int(idx[0]) for _, idx in groups], _single_columns(len(groups))
        rows = [order[i:i + ncol] for i in range(0, len(order), ncol)]
    else:  # one class per row; a class with fewer images leaves the end of its row blank
        rows = [idx.tolist() for _, idx in groups]
    tiles = _to_uint8(_unit(images, mean, std, scale))  # (N, C, h, w)
    return save_png(path, _assemble(tiles, rows, padding, pad_value))


def _assemble(tiles: torch.Tensor, rows: list[list[int]], padding: int, pad_value: float) -> torch.Tensor:
    """uint8 tiles ``(N, C, h, w)`` placed row by row (``rows``: tile indices), as image_grid
    lays them out -> ``(H', W', C)``."""
    c, h, w = tiles.shape[1:]
    ncol = max(len(r) for r in rows)
    grid = torch.full((c, len(rows) * (h + padding) + padding, ncol * (w + padding) + padding),
                      int(float(pad_value) * 255 + 0.5), dtype=torch.uint8)
    for r, row in enumerate(rows):
        for j, i in enumerate(row):
            top, left = padding + r * (h + padding), padding + j * (w + padding)
            grid[:, top:top + h, left:left + w] = tiles[i]
    return grid.permute(1, 2, 0).contiguous()


# the DKKT terms a method logs beside its loss, each drawn in a panel of its own
LOSS_TERMS = (("primal", "primal term"), ("stationarity", "stationarity term (before α)"), ("dm", "DM term (before β)"))


def _finite_series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    its, values = [], []
    for entry in history:
        value = entry.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            its.append(float(entry.get("iteration", len(its))))
            values.append(float(value))
    return its, values


def save_loss_plot(record: Mapping[str, Any], path: Union[str, os.PathLike]) -> Optional[Path]:
    """Draw a run's loss curve (``record["history"]``) into a PNG at ``path`` (atomically).

    One panel for ``loss``, then one each for the DKKT terms the run logged (``primal``,
    ``stationarity`` with its ``floor`` dashed, and DM+DKKT's ``dm`` term before its weight β),
    against the iteration; a panel uses a log scale when its values are positive and span more
    than a factor 20. Iterations where the run was resumed with changed settings
    (``record["resumes"]``) are marked. Needs matplotlib.

    Args:
        record: a run's record (``record.json`` of ``dkkt distill``, or ``RunResult.record``):
            ``history`` is a list of ``{"iteration": i, "loss": ..., ...}``; ``method`` and
            ``config`` (ipc, pipc), when present, title the figure.
        path: destination ``.png`` file; parent folders are created.

    Returns:
        ``path`` as a ``Path``; None (and no file) when the history holds no finite loss, or when
        matplotlib is not installed (then a warning says so).

    Example:
        >>> import json, tempfile, os
        >>> record = {"method": "dm", "history": [{"iteration": i, "loss": 1 / (i + 1)} for i in range(5)]}
        >>> save_loss_plot(record, os.path.join(tempfile.mkdtemp(), "loss.png")).name  # doctest: +SKIP
        'loss.png'
    """
    history = record.get("history") or []
    panels = [(key, label) for key, label in (("loss", "loss"), *LOSS_TERMS) if _finite_series(history, key)[1]]
    if not panels or panels[0][0] != "loss":
        return None
    tools = _matplotlib()
    if tools is None:
        _no_matplotlib(f"no {Path(path).name} was drawn")
        return None
    Figure, FigureCanvasAgg = tools
    fig = Figure(figsize=(7.0, 1.2 + 2.0 * len(panels)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    resumed = [r.get("iteration") for r in record.get("resumes") or [] if isinstance(r.get("iteration"), int)]
    for ax, (key, label) in zip(axes, panels):
        its, values = _finite_series(history, key)
        ax.plot(its, values, color="C0", linewidth=1.2, label=label)
        if key == "stationarity":
            f_its, floors = _finite_series(history, "floor")
            if floors:
                ax.plot(f_its, floors, color="0.4", linestyle="--", linewidth=1.0, label="floor (no model knowledge)")
                values = values + floors
        if min(values) > 0 and max(values) > 20 * min(values):
            ax.set_yscale("log")
        for it in resumed:
            ax.axvline(it, color="0.6", linestyle=":", linewidth=1.0)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if key == "stationarity" and len(ax.get_lines()) > 1:
            ax.legend(loc="best", fontsize="small")
    axes[-1].set_xlabel("iteration" + (" (dotted: resumed)" if resumed else ""))
    cfg = record.get("config") or {}
    title = " ".join(str(p) for p in (record.get("method", ""),
                                       f"ipc {cfg['ipc']}" if "ipc" in cfg else "",
                                       f"pipc {cfg['pipc']}" if "pipc" in cfg else "") if p)
    if title:
        fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return write_atomic(path, buffer.getvalue())
