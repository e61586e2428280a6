"""PNG encoder (decoded back by an independent tiny decoder), image grids, labelled grids and loss plots."""
import os
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch

from dkkt_plugin.errors import ConfigError
from dkkt_plugin import viz
from dkkt_plugin.viz import encode_png, image_grid, labelled_image_grid, save_image_grid, save_loss_plot, save_png


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


# -- labelled grids ------------------------------------------------------------------------------
def _constant_images(values, size=28):
    """One constant (1, size, size) image per value, values in [0, 1] (shown as round(255 v))."""
    return torch.stack([torch.full((1, size, size), float(v)) for v in values])


def _blocks(grid: np.ndarray, value: int, side: int) -> list[tuple[int, int]]:
    """Top-left corners of the side x side squares of ``grid[..., 0]`` that hold only ``value``,
    that no other such square holds (the images; anti-aliased text never fills a square)."""
    mask = (grid[:, :, 0] == value).astype(np.int64)
    integral = np.pad(mask, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    full = (integral[side:, side:] - integral[:-side, side:] - integral[side:, :-side]
            + integral[:-side, :-side]) == side * side  # (H - side + 1, W - side + 1)
    corners = []
    for y, x in zip(*np.nonzero(full)):
        if not any(abs(y - cy) < side and abs(x - cx) < side for cy, cx in corners):
            corners.append((int(y), int(x)))
    return corners


def test_ipc1_grid_is_two_rows_of_five_named_legible_images():
    pytest.importorskip("matplotlib")
    values = [(15 + 24 * i) / 255 for i in range(10)]  # distinct grey levels, none white
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
             "Ankle boot"]
    grid = labelled_image_grid(_constant_images(values), torch.arange(10), names, mean=[0.0], std=[1.0])
    side = 96  # at least LEGIBLE_PX: 28 px images upscaled
    corners = [_blocks(grid, int(255 * v + 0.5), side) for v in values]
    assert all(len(c) == 1 for c in corners), corners
    tops, lefts = [c[0][0] for c in corners], [c[0][1] for c in corners]
    assert len(set(tops)) == 2 and len(set(lefts)) == 5  # 2 rows of 5
    assert tops[:5] == [min(tops)] * 5 and lefts[:5] == sorted(lefts[:5]) and lefts[5:] == lefts[:5]
    white = grid[:, :, 0] == 255
    for top, left in zip(tops, lefts):  # a name (dark pixels) right above each image
        band = grid[max(top - 20, 0):top - 1, left:left + side, 0]
        assert (band < 100).sum() > 20, (top, left)
    assert white.mean() > 0.1  # a white background around the images
    unnamed = labelled_image_grid(_constant_images(values), torch.arange(10), [""] * 10, mean=[0.0], std=[1.0])
    for top, left in zip(tops, lefts):
        assert (unnamed[max(top - 20, 0):top - 1, left:left + side, 0] == 255).all()


def test_several_images_per_class_give_one_named_row_per_class():
    pytest.importorskip("matplotlib")
    labels = torch.tensor([2, 0, 1, 0, 2, 1, 1, 0, 2])  # 3 per class, shuffled
    values = [(20 + 25 * i) / 255 for i in range(9)]
    grid = labelled_image_grid(_constant_images(values, 8), labels, ["zero", "one", "two"], mean=[0.0],
                               std=[1.0], scale=2, padding=2)
    corner = {i: _blocks(grid, int(255 * v + 0.5), 16)[0] for i, v in enumerate(values)}
    for c in range(3):
        members = (labels == c).nonzero().flatten().tolist()
        rows = {corner[i][0] for i in members}
        assert rows == {2 + c * (16 + 2)}  # class c on row c
        assert [corner[i][1] for i in members] == sorted(corner[i][1] for i in members)  # in set order
        name_area = grid[2 + c * 18:2 + c * 18 + 16, :min(corner[i][1] for i in members), 0]
        assert (name_area < 100).sum() > 10  # the class name left of its row
    assert grid.shape[2] == 1  # grey images stay one channel


def test_save_image_grid_with_labels_writes_the_labelled_grid(tmp_path):
    pytest.importorskip("matplotlib")
    images, labels = torch.rand(6, 3, 8, 8), torch.tensor([0, 0, 1, 1, 2, 2])
    path = save_image_grid(tmp_path / "syn.png", images, labels=labels, class_names=["a", "b", "c"])
    decoded, colour = decode_png(path.read_bytes())
    assert colour == 2
    np.testing.assert_array_equal(decoded, labelled_image_grid(images, labels, ["a", "b", "c"]))


def test_without_matplotlib_the_plain_grid_in_class_order_and_one_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(viz, "_matplotlib", lambda: None)
    labels = torch.tensor([1, 0, 1, 0])  # 2 per class
    images = _constant_images([0.2, 0.4, 0.6, 0.8], 4)
    with pytest.warns(RuntimeWarning, match="matplotlib is not installed") as caught:
        path = save_image_grid(tmp_path / "syn.png", images, labels=labels, mean=[0.0], std=[1.0])
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    decoded, _ = decode_png(path.read_bytes())
    expected = image_grid(images[torch.tensor([1, 3, 0, 2])], nrow=2, mean=[0.0], std=[1.0], scale=2)
    np.testing.assert_array_equal(decoded, expected.numpy())  # one class per row
    with pytest.warns(RuntimeWarning):
        path = save_image_grid(tmp_path / "one.png", _constant_images([0.1 * i for i in range(10)], 4),
                               labels=torch.arange(10).flip(0), mean=[0.0], std=[1.0])
    decoded, _ = decode_png(path.read_bytes())
    assert decoded.shape[:2] == (2 * (8 + 2) + 2, 5 * (8 + 2) + 2)  # ipc 1: 2 rows of 5, not a strip
    with pytest.raises(ModuleNotFoundError, match="pip install matplotlib"):
        labelled_image_grid(images, labels)


def test_labelled_grid_errors(tmp_path):
    images = torch.rand(4, 1, 4, 4)
    with pytest.raises(ConfigError, match="one per image"):
        save_image_grid(tmp_path / "x.png", images, labels=torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="integer"):
        save_image_grid(tmp_path / "x.png", images, labels=torch.rand(4))
    with pytest.raises(ConfigError, match="label 3 has no name"):
        save_image_grid(tmp_path / "x.png", images, labels=torch.tensor([0, 1, 2, 3]), class_names=["a", "b"])
    with pytest.raises(ConfigError, match="need labels"):
        save_image_grid(tmp_path / "x.png", images, class_names=["a"])
    with pytest.raises(ConfigError, match="not both"):
        save_image_grid(tmp_path / "x.png", images, 2, labels=torch.tensor([0, 0, 1, 1]))
    assert not (tmp_path / "x.png").exists()


# -- loss plots ----------------------------------------------------------------------------------
def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _history(n=20, dkkt=False, scale=1.0):
    out = []
    for i in range(n):
        entry = {"iteration": i, "loss": scale * (5.0 / (i + 1) + 0.1)}
        if dkkt:
            entry.update(primal=1.0 / (i + 1), stationarity=0.9 - 0.01 * i, floor=1.0, dm=50.0 / (i + 1),
                         stat_ratio=float("nan"))
        out.append(entry)
    return out


def test_loss_plot_draws_the_loss_and_a_panel_per_dkkt_term(tmp_path):
    pytest.importorskip("matplotlib")
    dm = save_loss_plot({"method": "dm", "config": {"ipc": 1, "pipc": 10}, "history": _history()},
                        tmp_path / "dm" / "loss.png")
    assert dm == tmp_path / "dm" / "loss.png" and os.listdir(tmp_path / "dm") == ["loss.png"]
    both = save_loss_plot({"method": "dm_dkkt", "history": _history(dkkt=True), "resumes": [{"iteration": 10}]},
                          tmp_path / "both.png")
    (w1, h1), (w2, h2) = _png_size(dm), _png_size(both)
    assert w1 == w2 and h2 > 2 * h1  # 4 panels (loss, primal, stationarity, DM) against 1
    other = save_loss_plot({"method": "dm", "config": {"ipc": 1, "pipc": 10}, "history": _history(scale=3.0)},
                           tmp_path / "other.png")
    assert other.read_bytes() != dm.read_bytes()  # the curve comes from the history


def test_loss_plot_without_a_history_or_matplotlib_writes_nothing(tmp_path, monkeypatch):
    assert save_loss_plot({"history": []}, tmp_path / "a.png") is None
    assert save_loss_plot({}, tmp_path / "a.png") is None
    assert save_loss_plot({"history": [{"iteration": 0, "loss": float("nan")}]}, tmp_path / "a.png") is None
    monkeypatch.setattr(viz, "_matplotlib", lambda: None)
    with pytest.warns(RuntimeWarning, match="matplotlib is not installed"):
        assert save_loss_plot({"history": _history()}, tmp_path / "a.png") is None
    assert not (tmp_path / "a.png").exists()
