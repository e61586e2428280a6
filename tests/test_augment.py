"""Tests of dkkt_plugin.augment: DSA ops against hand-written reference formulas (the
DatasetCondensation `DiffAugment` code), Siamese sharing, grouping, randomness, gradients."""
from __future__ import annotations

import dataclasses
import doctest
import math

import pytest
import torch
import torch.nn.functional as F

from dkkt_plugin import augment
from dkkt_plugin.augment import DSA, DSAConfig, DSADraw
from dkkt_plugin.errors import ConfigError

FAMILIES = ["color", "crop", "cutout", "flip", "scale", "rotate"]
FULL = "_".join(FAMILIES)


def fixed_draw(dsa: DSA, num_groups: int = 1, **fields) -> DSADraw:
    """A draw whose listed fields are replaced (broadcast to G groups)."""
    draw = dsa.sample(num_groups)
    for name, value in fields.items():
        old = getattr(draw, name)
        setattr(draw, name, torch.as_tensor(value, dtype=old.dtype).expand_as(old).clone())
    return draw


def family_draw(family: str, num_groups: int = 1, **fields) -> tuple[DSA, DSADraw]:
    dsa = DSA(family, seed=3)
    return dsa, fixed_draw(dsa, num_groups, family=FAMILIES.index(family), **fields)


# ---- hand-written references (reference code, one image at a time, explicit offsets) ----
def ref_crop(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """out[i, j] = x[i + dy, j + dx], zero outside (the reference's pad-by-1 + clamped gather)."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    for i in range(h):
        for j in range(w):
            if 0 <= i + dy < h and 0 <= j + dx < w:
                out[..., i, j] = x[..., i + dy, j + dx]
    return out


def ref_cutout(x: torch.Tensor, off_y: int, off_x: int, side: int) -> torch.Tensor:
    """The reference `rand_cutout`: clamped index grid around the offset, mask multiply."""
    h, w = x.shape[-2:]
    gy = torch.clamp(torch.arange(side) + off_y - side // 2, 0, h - 1)
    gx = torch.clamp(torch.arange(side) + off_x - side // 2, 0, w - 1)
    mask = torch.ones(h, w, dtype=x.dtype)
    mask[gy[:, None], gx[None, :]] = 0
    return x * mask


def ref_affine(x: torch.Tensor, theta: list[list[float]], align_corners: bool = False) -> torch.Tensor:
    """The reference's `F.affine_grid` + `F.grid_sample` (it passes no align_corners: False)."""
    theta_t = torch.tensor([theta], dtype=x.dtype).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta_t, list(x.shape), align_corners=align_corners)
    return F.grid_sample(x, grid, align_corners=align_corners)


def test_public_names():
    assert set(augment.__all__) == {"DSA", "DSAConfig", "DSADraw"}
    assert doctest.testmod(augment).failed == 0


@pytest.mark.parametrize("op", ["brightness", "saturation", "contrast"])
def test_colour_op_matches_formula_and_does_not_clamp(op):
    x = torch.randn(4, 3, 6, 5, dtype=torch.float64) * 2  # normalised: values well outside [0, 1]
    identity = {"brightness": 0.0, "saturation": 1.0, "contrast": 1.0}
    new = {"brightness": 0.45, "saturation": 1.7, "contrast": 1.4}[op]
    dsa, draw = family_draw("color", **{**identity, op: new})
    value = getattr(draw, op).double()  # the draw is float32, as in the reference
    m_c, m = x.mean(1, keepdim=True), x.mean((1, 2, 3), keepdim=True)
    expected = {"brightness": x + value, "saturation": (x - m_c) * value + m_c,
                "contrast": (x - m) * value + m}[op]
    out = dsa(x, draw)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert out.max() > 1.5 and out.min() < -0.5


def test_colour_family_order_and_sampled_ranges():
    x = torch.rand(2, 3, 5, 5, dtype=torch.float64)
    dsa = DSA("color", seed=0)
    draw = dsa.sample(1)
    b, s, c = draw.brightness.double(), draw.saturation.double(), draw.contrast.double()
    y = x + b
    y = (y - y.mean(1, keepdim=True)) * s + y.mean(1, keepdim=True)
    y = (y - y.mean((1, 2, 3), keepdim=True)) * c + y.mean((1, 2, 3), keepdim=True)
    torch.testing.assert_close(dsa(x, draw), y, rtol=0, atol=1e-12)
    big = dsa.sample(4000)
    assert -0.5 <= big.brightness.min() < -0.45 and 0.45 < big.brightness.max() < 0.5
    assert 0 <= big.saturation.min() < 0.05 and 1.95 < big.saturation.max() < 2
    assert 0.5 <= big.contrast.min() < 0.55 and 1.45 < big.contrast.max() < 1.5
    assert 1 / 1.2 <= big.scale.min() < 0.85 and 1.18 < big.scale.max() < 1.2
    assert -15 <= big.angle.min() < -14.5 and 14.5 < big.angle.max() <= 15
    assert 0.45 < big.flip.float().mean() < 0.55


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3), (20, 1)])
def test_crop_is_integer_shift_with_zero_fill(size, channels):
    s = int(size * 0.125 + 0.5)  # 28 -> 4 (3.5 rounds up), 32 -> 4, 20 -> 3 (not round()'s 2)
    x = torch.randn(1, channels, size, size, dtype=torch.float64)
    seen = set()
    for uy, ux in [(0.0, 0.9999), (0.5, 0.3), (0.9999, 0.0), (0.61, 0.77)]:
        dsa, draw = family_draw("crop", crop=[uy, ux])
        dy, dx = math.floor(uy * (2 * s + 1)) - s, math.floor(ux * (2 * s + 1)) - s
        seen.update([dy, dx])
        assert torch.equal(dsa(x, draw), ref_crop(x, dy, dx))
    assert {-s, s} <= seen


@pytest.mark.parametrize("size", [28, 32, 9])
def test_cutout_zeroes_the_reference_square(size):
    side = int(size * 0.5 + 0.5)
    n = size + 1 - side % 2  # reference: offset ~ randint(0, size + (1 - side % 2))
    x = torch.randn(1, 2, size, size, dtype=torch.float64) + 5  # no zero pixels before cutout
    for uy, ux in [(0.0, 0.0), (0.9999, 0.5), (0.3, 0.9999), (0.5, 0.5)]:
        dsa, draw = family_draw("cutout", cutout=[uy, ux])
        out = dsa(x, draw)
        assert torch.equal(out, ref_cutout(x, math.floor(uy * n), math.floor(ux * n), side))
        zeros = (out[0, 0] == 0).sum().item()
        assert 0 < zeros <= side * side and (zeros == side * side) == (uy == ux == 0.5)  # clipped at borders


def test_flip_per_group():
    x = torch.randn(4, 3, 5, 7)
    dsa = DSA("flip", seed=0)
    draw = fixed_draw(dsa, 2, family=3)
    draw.flip = torch.tensor([True, False])
    out = dsa(x, draw, torch.tensor([0, 1, 0, 1]))
    assert torch.equal(out[[0, 2]], torch.flip(x[[0, 2]], dims=[3])) and torch.equal(out[[1, 3]], x[[1, 3]])


@pytest.mark.parametrize("hw", [(28, 28), (32, 32), (12, 20), (28, 40), (40, 28)])
def test_scale_and_rotate_match_affine_grid(hw):
    """As the reference's affine_grid / grid_sample (align_corners=False) on any image shape;
    on square images the normalisation convention does not matter (align_corners=True too)."""
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    dsa, draw = family_draw("scale", scale=[1.13, 0.87])
    sx, sy = draw.scale[0].tolist()  # the draw is float32, as in the reference
    torch.testing.assert_close(dsa(x, draw), ref_affine(x, [[sx, 0, 0], [0, sy, 0]]), rtol=0, atol=1e-10)
    dsa, draw = family_draw("rotate", angle=11.0)
    r = math.radians(draw.angle.item())
    theta = [[math.cos(r), math.sin(-r), 0], [math.sin(r), math.cos(r), 0]]
    torch.testing.assert_close(dsa(x, draw), ref_affine(x, theta), rtol=0, atol=1e-10)
    if hw[0] == hw[1]:
        torch.testing.assert_close(dsa(x, draw), ref_affine(x, theta, align_corners=True), rtol=0, atol=1e-10)


def test_rotation_on_square_images_is_kornias_own():
    """Square images take Kornia's rotation matrix as it is (no conjugation): the same output bit
    for bit, in float32."""
    import kornia.augmentation as K

    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    dsa, draw = family_draw("rotate", angle=-13.0)
    params = {"translations": x.new_zeros(4, 2), "shear_x": x.new_zeros(4), "shear_y": x.new_zeros(4),
              "center": x.new_tensor([15.5, 15.5]).expand(4, 2), "scale": x.new_ones(4, 2),
              "angle": -draw.angle[0].expand(4).to(x.dtype)}
    plain = K.RandomAffine(degrees=0.0, align_corners=True, p=1.0)(x, params=params)
    assert torch.equal(dsa(x, draw), plain)


@pytest.mark.parametrize("mode", ["one", "all"])
def test_siamese_draw_is_shared_by_batches_of_any_size(mode):
    dsa = DSA(FULL, mode=mode, seed=5)
    img = torch.randn(1, 3, 16, 16)
    for _ in range(6):
        draw = dsa.sample(1)
        a, b = dsa(img.expand(5, -1, -1, -1), draw), dsa(img.expand(3, -1, -1, -1), draw)
        assert torch.equal(a, a[:1].expand_as(a)) and torch.equal(b, a[:3])


@pytest.mark.parametrize("mode", ["one", "all"])
def test_grouped_application_equals_per_group(mode):
    dsa = DSA(FULL, mode=mode, seed=11)
    real, syn = torch.randn(9, 3, 16, 16), torch.randn(4, 3, 16, 16)
    real_y, syn_y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0]), torch.tensor([3, 2, 1, 0])
    for _ in range(3):
        draw = dsa.sample(4)
        out = dsa(torch.cat([real, syn]), draw, torch.cat([real_y, syn_y]))
        for c in range(4):
            own = draw.select([c])
            torch.testing.assert_close(out[:9][real_y == c], dsa(real[real_y == c], own), rtol=0, atol=1e-6)
            torch.testing.assert_close(out[9:][syn_y == c], dsa(syn[syn_y == c], own), rtol=0, atol=1e-6)


def test_mode_one_uses_only_strategy_families():
    dsa = DSA("crop_flip", seed=0)
    family = dsa.sample(500).family
    assert set(family.tolist()) == {1, 3}
    assert set(dsa.sample(50, shared_family=True).family.tolist()) in ({1}, {3})


def test_determinism_and_explicit_generators():
    x = torch.randn(3, 3, 16, 16)
    out = [DSA(FULL, seed=s)(x) for s in (7, 7, 8)]
    assert torch.equal(out[0], out[1])
    draws = [DSA(FULL, seed=s).sample(20) for s in (7, 8)]
    assert not torch.equal(draws[0].angle, draws[1].angle)
    dsa = DSA(FULL)  # default: its own generator seeded with 0
    d0 = dsa.sample(4, generator=torch.Generator().manual_seed(0))
    d1 = DSA(FULL, generator=torch.Generator().manual_seed(0)).sample(4)
    assert torch.equal(d0.scale, d1.scale) and torch.equal(DSA(FULL).sample(4).scale, d0.scale)


def test_global_rng_untouched():
    x = torch.randn(6, 3, 16, 16)
    state = torch.get_rng_state()
    for mode in ("one", "all"):
        dsa = DSA(FULL, mode=mode, seed=1)
        dsa(x)
        dsa(x, dsa.sample(3), torch.tensor([0, 1, 2, 0, 1, 2]))
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("family", FAMILIES + [FULL])
def test_gradcheck(family):
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    mode = "all" if family == FULL else "one"
    dsa = DSA(family, mode=mode, seed=2)
    draw = fixed_draw(dsa, 2, flip=True, crop=[0.2, 0.9], cutout=[0.3, 0.6])
    groups = torch.tensor([0, 1])
    assert torch.autograd.gradcheck(lambda t: dsa(t, draw, groups), (x,), fast_mode=True)


def test_dtypes_channels_and_identity():
    dsa = DSA(FULL, mode="all", seed=0)
    for shape in [(2, 1, 28, 28), (2, 3, 32, 32)]:
        for dtype in (torch.float32, torch.float64):
            x = torch.randn(*shape, dtype=dtype)
            out = dsa(x)
            assert out.shape == x.shape and out.dtype == dtype
    x = torch.randn(2, 3, 8, 8)
    assert DSA("")(x) is x and DSA("none")(x) is x
    draw = dsa.sample(2).to("cpu")
    assert draw.num_groups == 2 and draw.select(torch.tensor([1])).angle.shape == (1,)


def test_config_is_frozen_and_validated():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DSAConfig().scale = 2.0
    with pytest.raises(ConfigError, match="scale"):
        DSAConfig(scale=0.5)


def test_errors_name_problem_and_fix():
    with pytest.raises(ConfigError, match="noise.*color, crop, cutout, flip, scale, rotate"):
        DSA("color_noise")
    with pytest.raises(ConfigError, match="repeated"):
        DSA("crop_crop")
    with pytest.raises(ConfigError, match="mode"):
        DSA(mode="many")
    dsa = DSA(seed=0)
    with pytest.raises(ConfigError, match=r"\(B, C, H, W\).*unsqueeze"):
        dsa(torch.randn(3, 8, 8))
    with pytest.raises(ConfigError, match="groups"):
        dsa(torch.randn(2, 3, 8, 8), dsa.sample(2), torch.tensor([0, 2]))
