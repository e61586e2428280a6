"""PNG encoder (decoded back by an independent tiny decoder) and image grids."""
import os
import struct
import zlib

import numpy as np
import pytest
import torch

from dkkt_plugin.errors import ConfigError
from dkkt_plugin.viz import encode_png, image_grid, save_image_grid, save_png


def decode_png(data: bytes):
    """Minimal independent decoder for what the encoder promises: 8-bit gray/RGB, filter 0 rows."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "bad signature"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, f"bad CRC in {kind}"
        chunks.append((kind, body))
        pos += 12 + length
    assert pos == len(data)
    kinds = [k for k, _ in chunks]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    width, height, depth, colour, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, comp, filt, interlace) == (8, 0, 0, 0)
    channels = {0: 1, 2: 3}[colour]
    raw = zlib.decompress(b"".join(b for k, b in chunks if k == b"IDAT"))
    stride = width * channels
    assert len(raw) == height * (stride + 1)
    out = np.zeros((height, stride), np.uint8)
    for r in range(height):
        ftype, line = raw[r * (stride + 1)], np.frombuffer(raw[r * (stride + 1) + 1:(r + 1) * (stride + 1)], np.uint8)
        assert ftype == 0, "encoder promises filter type 0"
        out[r] = line
    return out.reshape(height, width, channels), colour


@pytest.mark.parametrize("channels", [1, 3])
def test_png_round_trip_exact(tmp_path, channels):
    rng = np.random.default_rng(channels)
    arr = rng.integers(0, 256, size=(7, 11, channels), dtype=np.uint8)
    arr[0, 0], arr[-1, -1] = 0, 255
    path = save_png(tmp_path / "sub" / "x.png", torch.from_numpy(arr))
    assert path.exists() and path.parent.name == "sub"
    decoded, colour = decode_png(path.read_bytes())
    assert colour == (0 if channels == 1 else 2)
    assert decoded.shape == (7, 11, channels)
    np.testing.assert_array_equal(decoded, arr)


def test_png_gray_2d_and_no_temp_left(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    save_png(tmp_path / "g.png", arr)
    save_png(tmp_path / "g.png", arr[::-1].copy())  # overwrite in place
    decoded, colour = decode_png((tmp_path / "g.png").read_bytes())
    assert colour == 0
    np.testing.assert_array_equal(decoded[:, :, 0], arr[::-1])
    assert os.listdir(tmp_path) == ["g.png"]


@pytest.mark.parametrize("bad", [np.zeros((3, 4), np.float32), np.zeros((3, 4, 2), np.uint8),
                                 np.zeros((0, 4), np.uint8), np.zeros((2, 3, 4, 1), np.uint8)])
def test_png_rejects_bad_arrays(bad):
    with pytest.raises(ConfigError):
        encode_png(bad)


def test_pillow_reads_it_identically(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for channels, mode in [(1, "L"), (3, "RGB")]:
        arr = rng.integers(0, 256, size=(5, 9, channels), dtype=np.uint8)
        path = save_png(tmp_path / f"{mode}.png", arr)
        with Image.open(path) as im:
            assert im.mode == mode and im.size == (9, 5)
            np.testing.assert_array_equal(np.asarray(im).reshape(5, 9, channels), arr)


def test_grid_layout_and_padding():
    n, h, w = 10, 3, 4
    images = torch.stack([torch.full((1, h, w), float(i)) for i in range(n)])  # image i is constant i
    grid = image_grid(images, nrow=5, padding=2, pad_value=1.0)
    assert grid.shape == (2 * (h + 2) + 2, 5 * (w + 2) + 2, 1) and grid.dtype == torch.uint8
    # min-max over the grid: value i -> round(255 * i / 9)
    for i in range(n):
        top, left = 2 + (i // 5) * (h + 2), 2 + (i % 5) * (w + 2)
        cell = grid[top:top + h, left:left + w, 0]
        assert (cell == int(255 * i / 9 + 0.5)).all(), i
    mask = torch.ones(grid.shape[:2], dtype=torch.bool)
    for i in range(n):
        top, left = 2 + (i // 5) * (h + 2), 2 + (i % 5) * (w + 2)
        mask[top:top + h, left:left + w] = False
    assert (grid[mask] == 255).all()  # padding pixels hold pad_value
    assert mask.sum() == grid.shape[0] * grid.shape[1] - n * h * w


def test_grid_default_nrow_partial_last_row_and_scale():
    grid = image_grid(torch.rand(5, 3, 2, 2), padding=1, scale=3)  # nrow ceil(sqrt(5)) = 3 -> 2 rows
    assert grid.shape == (2 * (6 + 1) + 1, 3 * (6 + 1) + 1, 3)
    assert (grid[8:14, 15:21] == 0).all()  # sixth cell empty: padding (pad_value 0)
    one = image_grid(torch.tensor([[[[0.0, 1.0]]]]), padding=0, scale=2)  # nearest upscaling
    assert one[:, :, 0].tolist() == [[0, 0, 255, 255], [0, 0, 255, 255]]


def test_grid_denormalises_and_clips():
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 2.0)
    x = torch.tensor([-1.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    grid = image_grid(x, mean=mean, std=std, padding=0)[0]  # (4, 3)
    expect = (np.clip(np.array([-1.0, 0.0, 1.0, 3.0])[:, None] * np.array(std) + np.array(mean), 0, 1)
              * 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(grid.numpy(), expect)
    assert grid[:, 0].tolist() == [0, 128, 255, 255]  # clipped, not min-max scaled
    assert image_grid(torch.full((2, 1, 2, 2), 0.3), padding=0).max() == 0  # constant grid -> 0


def test_grid_errors():
    with pytest.raises(ConfigError):
        image_grid(torch.rand(2, 2, 4, 4))  # 2 channels
    with pytest.raises(ConfigError):
        image_grid(torch.rand(4, 4, 4))  # no batch dim
    with pytest.raises(ConfigError):
        image_grid(torch.rand(2, 3, 4, 4), mean=[0.5, 0.5], std=[0.5, 0.5])  # 2 values for 3 channels
    with pytest.raises(ConfigError):
        image_grid(torch.rand(2, 1, 4, 4), mean=[0.5])  # mean without std
    with pytest.raises(ConfigError):
        image_grid(torch.tensor([float("nan")]).view(1, 1, 1, 1))


def test_save_image_grid_round_trip(tmp_path):
    images = torch.rand(6, 1, 4, 4, requires_grad=True)
    before = images.detach().clone()
    path = save_image_grid(tmp_path / "out" / "syn.png", images, nrow=3, mean=[0.2861], std=[0.3530])
    decoded, _ = decode_png(path.read_bytes())
    expected = image_grid(images, nrow=3, mean=[0.2861], std=[0.3530], scale=2).numpy()
    assert decoded.shape == (2 * (8 + 2) + 2, 3 * (8 + 2) + 2, 1)
    np.testing.assert_array_equal(decoded, expected)
    assert torch.equal(images.detach(), before)
