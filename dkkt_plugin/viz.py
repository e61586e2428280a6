"""Image grids of synthetic sets, written as PNG without Pillow or matplotlib.

The PNG encoder is the minimum the format needs: signature, IHDR (8-bit grayscale or RGB, no
interlace), one zlib-compressed IDAT with filter type 0 ("None") on every row, IEND; every chunk
carries its CRC-32. Files are written atomically (temporary file + ``os.replace``).

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

import math
import os
import struct
import zlib
from pathlib import Path
from typing import Optional, Sequence, Union

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
    if images.ndim != 4 or images.shape[0] == 0 or images.shape[1] not in _COLOUR_TYPE:
        raise ConfigError(f"image_grid needs a non-empty (N, C, H, W) batch with C 1 or 3, got {tuple(images.shape)}")
    n, c, h, w = images.shape
    nrow = math.ceil(math.sqrt(n)) if nrow is None else nrow
    if nrow < 1 or scale < 1 or padding < 0:
        raise ConfigError(f"need nrow >= 1, scale >= 1, padding >= 0; "
                          f"got nrow={nrow}, scale={scale}, padding={padding}")
    if (mean is None) != (std is None):
        raise ConfigError("give both mean and std (to denormalise) or neither (min-max scaling)")
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
    h, w = h * scale, w * scale
    ncol, rows = min(nrow, n), math.ceil(n / min(nrow, n))
    grid = torch.full((c, rows * (h + padding) + padding, ncol * (w + padding) + padding), float(pad_value))
    for i in range(n):
        top, left = padding + (i // ncol) * (h + padding), padding + (i % ncol) * (w + padding)
        grid[:, top:top + h, left:left + w] = x[i]
    return (grid * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()  # (H', W', C)


def save_image_grid(path: Union[str, os.PathLike], images: torch.Tensor, nrow: Optional[int] = None, *,
                    mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                    padding: int = 2, scale: int = 2, pad_value: float = 0.0) -> Path:
    """Write ``image_grid(images, ...)`` as a PNG at ``path`` (atomically); returns the path.

    Args:
        path: destination ``.png`` file; parent folders are created.
        images: ``(N, C, H, W)``, C 1 or 3.
        nrow, mean, std, padding, scale, pad_value: as in ``image_grid`` (here ``scale`` defaults to 2).

    Returns:
        ``path`` as a ``Path``.

    Example:
        >>> import tempfile, os
        >>> save_image_grid(os.path.join(tempfile.mkdtemp(), "syn.png"), torch.rand(4, 1, 28, 28)).suffix
        '.png'
    """
    grid = image_grid(images, nrow, mean=mean, std=std, padding=padding, scale=scale, pad_value=pad_value)
    return save_png(path, grid)
