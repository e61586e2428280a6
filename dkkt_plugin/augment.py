"""Differentiable Siamese augmentation (DSA, Zhao & Bilen 2021) on Kornia's augmentation framework.

Reproduces DatasetCondensation's `DiffAugment` (mode 'S' by default): one parameter draw per
*group* of images, shared by every image of the group (the real and the synthetic batch of a
class). Every op is differentiable in the images and none clamps. The draw is explicit
(`DSA.sample`, through a `torch.Generator`) and replayed with Kornia's `params=`, so torch's
global RNG is never read or reseeded.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict, Optional

import kornia.augmentation as K
import torch

from dkkt_plugin.errors import ConfigError
from dkkt_plugin.settings import DSA_STRATEGY

__all__ = ["DSA", "DSAConfig", "DSADraw"]

FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")


@dataclass(frozen=True)
class DSAConfig:
    """Ranges and probabilities of the DSA ops (defaults: the reference `ParamDiffAug`).

    Example:
        >>> DSAConfig(rotate_deg=30.0).scale
        1.2
    """

    scale: float = 1.2  # sx, sy ~ U(1/scale, scale), independently
    rotate_deg: float = 15.0  # angle ~ U(-rotate_deg, rotate_deg) degrees, about the centre
    flip_p: float = 0.5  # horizontal flip probability
    brightness: float = 1.0  # x + (u - 0.5) * brightness
    saturation: float = 2.0  # (x - mean_c) * (u * saturation) + mean_c
    contrast: float = 0.5  # (x - mean) * (u + contrast) + mean
    crop_ratio: float = 0.125  # integer shift up to int(size * crop_ratio + 0.5), zero fill
    cutout_ratio: float = 0.5  # zeroed square of side int(size * cutout_ratio + 0.5)

    def __post_init__(self) -> None:
        if self.scale < 1.0 or not 0.0 <= self.flip_p <= 1.0 or min(self.crop_ratio, self.cutout_ratio) < 0:
            raise ConfigError(f"bad DSAConfig {self}: need scale >= 1, 0 <= flip_p <= 1, ratios >= 0")


@dataclass
class DSADraw:
    """One parameter draw for `num_groups` groups (every tensor has leading dim G).

    `crop` and `cutout` hold uniforms in [0, 1) that become integer offsets once the image size
    is known (`_crop_shift`, `_cutout_start`), so one draw serves images of any size.

    Shape:
        - family, brightness, saturation, contrast, angle, flip: (G,); scale, crop, cutout: (G, 2).

    Example:
        >>> draw = DSA(seed=0).sample(10)
        >>> draw.select([3]).num_groups, draw.scale.shape
        (1, torch.Size([10, 2]))
    """

    family: torch.Tensor  # (G,) long index into FAMILIES (mode 'one'); unused in mode 'all'
    brightness: torch.Tensor  # (G,) additive shift (u - 0.5) * brightness
    saturation: torch.Tensor  # (G,) factor u * saturation
    contrast: torch.Tensor  # (G,) factor u + contrast
    scale: torch.Tensor  # (G, 2) sx, sy of the reference theta [[sx, 0, 0], [0, sy, 0]]
    angle: torch.Tensor  # (G,) degrees; reference theta [[cos, -sin, 0], [sin, cos, 0]]
    flip: torch.Tensor  # (G,) bool
    crop: torch.Tensor  # (G, 2) uniforms for the (row, col) shift
    cutout: torch.Tensor  # (G, 2) uniforms for the (row, col) centre of the square

    @property
    def num_groups(self) -> int:
        return self.family.shape[0]

    def to(self, device: Any) -> "DSADraw":
        return DSADraw(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def select(self, index: Any) -> "DSADraw":
        """The draw of the groups `index` (an int list or long tensor), e.g. one class's slice."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.family.device).reshape(-1)
        return DSADraw(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def _crop_shift(u: torch.Tensor, size: int, ratio: float) -> torch.Tensor:
    """Uniforms (B,) -> integer shifts (B,) uniform on [-s, s], s = int(size * ratio + 0.5)."""
    s = int(size * ratio + 0.5)
    return (u.double() * (2 * s + 1)).floor().long().clamp(max=2 * s) - s


def _cutout_start(u: torch.Tensor, size: int, side: int) -> torch.Tensor:
    """Uniforms (B,) -> first row/col of the square; centre ~ randint(0, size + 1 - side % 2)."""
    n = size + 1 - side % 2
    return (u.double() * n).floor().long().clamp(max=n - 1) - side // 2


# ---- Kornia augmentations: parameters always come in through `params=`, never drawn here ----
class _Brightness(K.IntensityAugmentationBase2D):
    """x + shift, unclamped. Params: shift (B,)."""

    def __init__(self) -> None:
        super().__init__(p=1.0)

    def apply_transform(self, input, params, flags, transform=None):  # (B, C, H, W)
        return input + params["shift"].view(-1, 1, 1, 1)


class _Saturation(K.IntensityAugmentationBase2D):
    """(x - mean over C) * factor + mean over C, unclamped. Params: factor (B,)."""

    def __init__(self) -> None:
        super().__init__(p=1.0)

    def apply_transform(self, input, params, flags, transform=None):
        mean = input.mean(dim=1, keepdim=True)  # (B, 1, H, W)
        return (input - mean) * params["factor"].view(-1, 1, 1, 1) + mean


class _Contrast(K.IntensityAugmentationBase2D):
    """(x - mean over C, H, W) * factor + mean, unclamped. Params: factor (B,)."""

    def __init__(self) -> None:
        super().__init__(p=1.0)

    def apply_transform(self, input, params, flags, transform=None):
        mean = input.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
        return (input - mean) * params["factor"].view(-1, 1, 1, 1) + mean


class _Cutout(K.IntensityAugmentationBase2D):
    """Zero a `height` x `width` box from (top, left), clipped by the border, as the reference
    `rand_cutout` (a multiplicative mask). Params: top, left, height, width, each (B,) long."""

    def __init__(self) -> None:
        super().__init__(p=1.0)

    def apply_transform(self, input, params, flags, transform=None):
        _, _, h, w = input.shape
        rows = torch.arange(h, device=input.device).view(1, h) - params["top"].view(-1, 1)  # (B, H)
        cols = torch.arange(w, device=input.device).view(1, w) - params["left"].view(-1, 1)  # (B, W)
        in_rows = (rows >= 0) & (rows < params["height"].view(-1, 1))  # (B, H)
        in_cols = (cols >= 0) & (cols < params["width"].view(-1, 1))  # (B, W)
        inside = in_rows.unsqueeze(2) & in_cols.unsqueeze(1)  # (B, H, W)
        return input * (~inside).unsqueeze(1).to(input.dtype)  # (B, 1, H, W) mask


class _NormalisedAffine(K.RandomAffine):
    """RandomAffine whose rotation acts in normalised [-1, 1] coordinates, as the reference's
    `F.affine_grid` theta does (``align_corners=False``, PyTorch's default there: x_norm =
    (2 x + 1) / W - 1, so one normalised unit is W / 2 pixels across and H / 2 down). Identical
    to RandomAffine on square images; on non-square ones the pixel-space matrix is conjugated by
    that per-axis normalisation about the centre."""

    def __init__(self) -> None:
        super().__init__(degrees=0.0, align_corners=True, p=1.0)

    def compute_transformation(self, input, params, flags):
        m = super().compute_transformation(input, params, flags)  # (B, 3, 3) pixel dst <- src
        h, w = input.shape[-2:]
        if h == w:
            return m
        sx, sy, cx, cy = 1.0 / w, 1.0 / h, (w - 1) / 2, (h - 1) / 2  # per-axis scale: 2/W, 2/H up to one factor
        # P scales pixel offsets from the centre to normalised units: P = T(c) diag(sx, sy) T(-c)
        p = m.new_tensor([[sx, 0.0, cx * (1 - sx)], [0.0, sy, cy * (1 - sy)], [0.0, 0.0, 1.0]])
        p_inv = m.new_tensor([[1 / sx, 0.0, cx * (1 - 1 / sx)], [0.0, 1 / sy, cy * (1 - 1 / sy)], [0, 0, 1]])
        return p_inv @ m @ p


class DSA(torch.nn.Module):
    """Differentiable Siamese augmentation with one shared parameter draw per group.

    Args:
        strategy: `_`-joined subset of `color, crop, cutout, flip, scale, rotate` (applied in this
            string's order in mode 'all'); `''` or `'none'` is the identity.
        mode: `'one'`: each group applies one family chosen uniformly from the strategy (the DSA
            default, reference mode 'S'); `'all'`: every family of the strategy in sequence ('M').
        config: op ranges and probabilities.
        generator: draws come from it; else from `torch.Generator().manual_seed(seed)`, where
            `seed` defaults to 0 (an explicit, reproducible default). Never torch's global RNG.
        seed: seed of the module's own generator when `generator` is not given.

    Shape:
        - Input: x (B, C, H, W) float, groups (B,) long in [0, G).
        - Output: (B, C, H, W), same dtype and device as x.

    Example:
        >>> dsa = DSA("color_crop_cutout_flip_scale_rotate", seed=0)
        >>> real, syn = torch.rand(5, 3, 32, 32), torch.rand(2, 3, 32, 32)
        >>> draw = dsa.sample(10)  # one draw per class
        >>> labels = torch.tensor([3, 3, 3, 7, 7, 3, 7])
        >>> dsa(torch.cat([real, syn]), draw, labels).shape
        torch.Size([7, 3, 32, 32])
    """

    def __init__(
        self,
        strategy: str = DSA_STRATEGY,
        *,
        mode: str = "one",
        config: DSAConfig = DSAConfig(),
        generator: Optional[torch.Generator] = None,
        seed: Optional[int] = None,
    ) -> None:
        super().__init__()
        tokens = [] if strategy.lower() in ("", "none") else strategy.split("_")
        bad = [t for t in tokens if t not in FAMILIES]
        if bad or len(set(tokens)) != len(tokens):
            raise ConfigError(
                f"bad DSA strategy {strategy!r} (unknown or repeated tokens {bad or tokens}): use a "
                f"'_'-joined subset of {', '.join(FAMILIES)}, e.g. '{DSA_STRATEGY}'"
            )
        if mode not in ("one", "all"):
            raise ConfigError(f"unknown DSA mode {mode!r}: use 'one' (one family per draw) or 'all'")
        if generator is not None and seed is not None:
            raise ConfigError("give DSA either `generator` or `seed`, not both")
        self.families = tuple(tokens)
        self.mode, self.config = mode, config
        self.generator = generator or torch.Generator().manual_seed(0 if seed is None else seed)
        self._brightness, self._saturation, self._contrast = _Brightness(), _Saturation(), _Contrast()
        self._crop = K.RandomTranslate(resample="nearest", align_corners=True, p=1.0)  # integer shifts: exact
        self._cutout = _Cutout()
        self._flip = K.RandomHorizontalFlip(p=config.flip_p)  # p < 1: `batch_prob` selects the flipped
        self._affine = _NormalisedAffine()

    def sample(
        self,
        num_groups: int = 1,
        *,
        device: Any = None,
        generator: Optional[torch.Generator] = None,
        shared_family: bool = False,
    ) -> DSADraw:
        """Draw the parameters of every op for `num_groups` groups.

        Args:
            num_groups: G, the number of independent draws (e.g. classes).
            device: where the draw's tensors go (default: the generator's device).
            generator: overrides the module's generator for this draw.
            shared_family: one family for all groups (the reference's unseeded per-image mode:
                `sample(B, shared_family=True)` with `groups=arange(B)`).
        """
        gen = generator or self.generator
        cfg, n = self.config, max(len(self.families), 1)
        u = torch.rand(num_groups, 12, generator=gen, device=gen.device)  # (G, 12), one call
        if shared_family:
            u[:, 0] = u[0, 0]
        lookup = torch.tensor([FAMILIES.index(f) for f in self.families] or [0], device=u.device)
        lo = 1.0 / cfg.scale
        draw = DSADraw(
            family=lookup[(u[:, 0] * n).long().clamp(max=n - 1)],
            brightness=(u[:, 1] - 0.5) * cfg.brightness,
            saturation=u[:, 2] * cfg.saturation,
            contrast=u[:, 3] + cfg.contrast,
            scale=u[:, 4:6] * (cfg.scale - lo) + lo,
            angle=(u[:, 6] - 0.5) * 2 * cfg.rotate_deg,
            flip=u[:, 7] < cfg.flip_p,
            crop=u[:, 8:10],
            cutout=u[:, 10:12],
        )
        return draw if device is None else draw.to(device)

    def forward(
        self, x: torch.Tensor, draw: Optional[DSADraw] = None, groups: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Augment x (B, C, H, W); image b uses group groups[b] of `draw` (default: all group 0
        of a fresh one-group draw). Families are applied batched: Kornia calls per forward are
        bounded by the number of families, not of groups."""
        if x.ndim != 4 or not x.is_floating_point():
            raise ConfigError(f"DSA expects a float (B, C, H, W) batch, got {x.dtype} {tuple(x.shape)}: "
                              "add a batch dimension with x.unsqueeze(0) or convert with x.float()")
        if not self.families or x.shape[0] == 0:
            return x
        draw = (self.sample(1) if draw is None else draw).to(x.device)
        groups = torch.zeros(x.shape[0], dtype=torch.long, device=x.device) if groups is None else groups
        groups = torch.as_tensor(groups, device=x.device)
        if groups.shape != x.shape[:1] or groups.dtype != torch.long or (
            groups.numel() and (groups.min() < 0 or groups.max() >= draw.num_groups)
        ):
            raise ConfigError(f"groups must be a ({x.shape[0]},) long tensor in [0, {draw.num_groups}) "
                              f"(one draw per group), got {groups.dtype} {tuple(groups.shape)}")
        if self.mode == "all":
            for family in self.families:
                x = self._apply_family(family, x, draw, groups)
            return x
        chosen = draw.family[groups]  # (B,) family of each image, as the draw says
        out = x
        for k, family in enumerate(FAMILIES):  # at most one Kornia call (three for colour) per family
            idx = (chosen == k).nonzero().squeeze(1)  # (B_k,)
            if idx.numel() == x.shape[0]:
                return self._apply_family(family, x, draw, groups)
            if idx.numel():
                out = out.index_copy(0, idx, self._apply_family(family, x[idx], draw, groups[idx]))
        return out

    def _apply_family(self, family: str, x: torch.Tensor, draw: DSADraw, groups: torch.Tensor) -> torch.Tensor:
        """Apply one family to x (B, C, H, W), image b with the params of group groups[b]."""
        b, (h, w), cfg = x.shape[0], x.shape[-2:], self.config

        def per_image(t: torch.Tensor) -> torch.Tensor:  # (G, ...) -> (B, ...) in x's dtype
            return t[groups].to(x.dtype) if t.is_floating_point() else t[groups]

        if family == "color":  # brightness, saturation, contrast, in the reference's order
            x = self._brightness(x, params={"shift": per_image(draw.brightness)})
            x = self._saturation(x, params={"factor": per_image(draw.saturation)})
            return self._contrast(x, params={"factor": per_image(draw.contrast)})
        if family == "crop":  # out[i, j] = x[i + dy, j + dx], zero outside (reference `rand_crop`)
            crop = draw.crop[groups]  # (B, 2)
            dy, dx = _crop_shift(crop[:, 0], h, cfg.crop_ratio), _crop_shift(crop[:, 1], w, cfg.crop_ratio)
            # nearest resampling at integer shifts copies pixels exactly; outside is zero padding
            return self._crop(x, params={"translate_x": -dx.to(x.dtype), "translate_y": -dy.to(x.dtype)})
        if family == "cutout":
            # side int(size * ratio + 0.5) per axis: a square on square images, as in the reference
            side_h, side_w = int(h * cfg.cutout_ratio + 0.5), int(w * cfg.cutout_ratio + 0.5)
            cut = draw.cutout[groups]  # (B, 2)
            sides = torch.tensor([side_h, side_w], device=x.device).expand(b, 2)  # (B, 2)
            return self._cutout(x, params={
                "top": _cutout_start(cut[:, 0], h, side_h), "left": _cutout_start(cut[:, 1], w, side_w),
                "height": sides[:, 0], "width": sides[:, 1],
            })
        if family == "flip":
            return self._flip(x, params={"batch_prob": per_image(draw.flip)})
        zeros = x.new_zeros(b)
        params: Dict[str, torch.Tensor] = {
            "translations": x.new_zeros(b, 2), "shear_x": zeros, "shear_y": zeros,
            "center": x.new_tensor([(w - 1) / 2, (h - 1) / 2]).expand(b, 2),
            # Kornia maps src -> dst and turns clockwise; the reference theta maps dst -> src.
            "scale": 1.0 / per_image(draw.scale) if family == "scale" else x.new_ones(b, 2),
            "angle": -per_image(draw.angle) if family == "rotate" else zeros,
        }
        return self._affine(x, params=params)
