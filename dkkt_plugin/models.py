"""The standard evaluation architectures of dataset distillation, and how a name becomes a model.

The zoo holds the networks DatasetCondensation (DC, DSA, DM) trains in its cross-architecture
tables, written after its ``networks.py`` and ``utils.get_network``, with the same layers, the
same parameter names (a state dict saved from DC's network loads into the zoo's) and DC's
adaptation to 28 px one-channel images (extra padding in the first layer where DC has it):

========================  ==================================================================
``convnet``               :class:`dkkt_plugin.nets.ConvNet`: width 128, depth 3, instance norm,
                          average pooling (DC's ``ConvNet``)
``convnet_bn``            ConvNet with batch norm (``ConvNetBN``)
``convnet_nn``            ConvNet without normalisation (``ConvNetNN``)
``convnet_d1`` .. ``_d4``  ConvNet of depth 1 to 4 (``ConvNetD1`` .. ``ConvNetD4``)
``mlp``                   three linear layers, 128 hidden units (``MLP``)
``lenet``                 LeNet-5 (``LeNet``)
``alexnet``               AlexNet without normalisation (``AlexNet``); ``alexnet_bn``: batch norm
``vgg11``                 VGG-11 with instance norm (``VGG11``); ``vgg11_bn``: batch norm
``resnet18``              ResNet-18 with instance norm (``ResNet18``); ``resnet18_bn``: batch norm
========================  ==================================================================

Every zoo factory has the signature ``f(channels, num_classes, image_size, *, generator=None,
device=None, **kw) -> nn.Module`` and draws the initial weights from ``generator`` (PyTorch's
default initialisation: conv and linear weights and biases ~ U(±1/sqrt(fan_in)), norm scales 1
and shifts 0), never from torch's global RNG: the same seed gives the same weights. Each
network (:class:`ZooNet`) has ``embed(x)`` (the features the final linear layer reads),
``reset_parameters(generator)``, ``per_sample`` and ``config``.

Any image size the layers can take works (the flattened feature size is computed for it); DC's
own sizes are 28 px with one channel and 32 px with three.

Names are resolved by :func:`build_model`:

- a zoo name, or any name a distribution registers in the entry-point group
  ``dkkt_plugin.models`` (a factory with the signature above);
- ``module.path:callable``: a factory importable from the Python path;
- ``torchvision:NAME`` / ``timm:NAME``: an architecture of those libraries, where installed
  (``torchvision.models.get_model(NAME, weights=None, num_classes=K)``; ``timm.create_model(NAME,
  pretrained=False, num_classes=K, in_chans=C)``), initialised under a seed drawn from the
  generator with torch's global RNG state restored afterwards.

Example:
    >>> net = build_model("resnet18", 1, 10, 28, generator=torch.Generator().manual_seed(0))
    >>> net(torch.zeros(2, 1, 28, 28)).shape, net.embed(torch.zeros(2, 1, 28, 28)).shape
    (torch.Size([2, 10]), torch.Size([2, 512]))
    >>> build_model("mlp", 3, 10, 32).config
    {'channels': 3, 'num_classes': 10, 'image_size': 32, 'width': 128}
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Optional

import torch
from torch import nn

from .errors import ConfigError, UnknownComponentError
from .nets import ConvNet, init_weights  # noqa: F401 (dkkt_plugin.models.init_weights)

DEFAULT_ARCH = "convnet"
# the zoo, in the order of DC's cross-architecture tables (the entry points in setup.cfg)
ZOO = ("convnet", "convnet_bn", "convnet_nn", "convnet_d1", "convnet_d2", "convnet_d3", "convnet_d4",
       "mlp", "lenet", "alexnet", "alexnet_bn", "vgg11", "vgg11_bn", "resnet18", "resnet18_bn")
# zoo ConvNets and the size settings (width, depth) each still takes
CONVNET_SIZES: dict[str, tuple[str, ...]] = {
    "convnet": ("width", "depth"), "convnet_bn": ("width", "depth"), "convnet_nn": ("width", "depth"),
    **{f"convnet_d{d}": ("width",) for d in range(1, 5)},
}
EXTERNAL = {"torchvision": "pip install torchvision (or pip install 'dkkt-plugin[vision]')",
            "timm": "pip install timm"}
Factory = Callable[..., nn.Module]


# -- the zoo's networks ---------------------------------------------------------------------------
class ZooNet(nn.Module):
    """Base of the zoo's networks: ``forward(x)`` is the final linear layer of ``embed(x)``;
    weights from a generator.

    Subclasses build their layers on the meta device in ``__init__`` (nothing is drawn from
    torch's global RNG) and end it with :meth:`_finish`, which sizes the final layer for
    ``image_size``, allocates on ``device`` and initialises from ``generator``.
    """

    __jit_unused_properties__ = ["per_sample"]  # torch.jit.script compiles forward and embed only

    def _finish(self, config: dict[str, Any], make_head: Callable[[int], None],
                generator: Optional[torch.Generator], device: Any) -> None:
        self.config = config
        probe = torch.empty(1, config["channels"], config["image_size"], config["image_size"], device="meta")
        try:
            with torch.no_grad():
                dim = self._features(probe).flatten(1).shape[1]
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ConfigError(f"{type(self).__name__} cannot take {config['image_size']} px images with "
                              f"{config['channels']} channel(s) ({first}); use a larger image size") from None
        make_head(dim)
        self.feature_dim = self._embed_dim(dim)
        self.to_empty(device=device or "cpu")
        self.reset_parameters(generator)

    def _embed_dim(self, flat: int) -> int:
        return flat

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def per_sample(self) -> bool:
        """True when every sample's output is independent of the rest of the batch (no batch
        norm in training mode)."""
        return not self.training or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.modules())

    @torch.no_grad()
    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> "ZooNet":
        """Re-draw every weight from ``generator`` (seeded with 0 if omitted): see :func:`init_weights`."""
        init_weights(self, generator)
        return self

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The features the final linear layer reads: (B, C, H, W) -> (B, feature_dim)."""
        return self._features(x).flatten(1)


def _norm(kind: str, channels: int) -> nn.Module:
    """DC's per-channel norms: instance norm is GroupNorm(C, C) (per sample), else BatchNorm2d."""
    if kind == "instancenorm":
        return nn.GroupNorm(channels, channels, affine=True, device="meta")
    return nn.BatchNorm2d(channels, device="meta")


def _check_common(name: str, channels: int, num_classes: int, image_size: int) -> None:
    if channels < 1 or num_classes < 2 or image_size < 1:
        raise ConfigError(f"{name} needs channels >= 1, num_classes >= 2, image_size >= 1; got channels={channels}, "
                          f"num_classes={num_classes}, image_size={image_size}")


class MLP(ZooNet):
    """DC's MLP: flatten, ``fc_1`` (→ width), ReLU, ``fc_2`` (→ width), ReLU, ``fc_3`` (→ classes).

    Shape:
        - Input ``(B, channels, image_size, image_size)``; output ``(B, num_classes)``;
          ``embed``: ``(B, width)``.
    """

    def __init__(self, channels: int = 3, num_classes: int = 10, image_size: int = 32, *, width: int = 128,
                 generator: Optional[torch.Generator] = None, device: Any = None) -> None:
        super().__init__()
        _check_common("MLP", channels, num_classes, image_size)
        self.fc_1 = nn.Linear(channels * image_size * image_size, width, device="meta")
        self.fc_2 = nn.Linear(width, width, device="meta")
        self.relu = nn.ReLU()
        self._finish(dict(channels=channels, num_classes=num_classes, image_size=image_size, width=width),
                     lambda d: setattr(self, "fc_3", nn.Linear(width, num_classes, device="meta")),
                     generator, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_3(self.embed(x))  # (B, num_classes)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def _embed_dim(self, flat: int) -> int:
        return self.config["width"]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.fc_2(self.relu(self.fc_1(x.flatten(1)))))  # (B, width)


class LeNet(ZooNet):
    """DC's LeNet: two 5x5 conv + ReLU + max-pool blocks (padding 2 for one channel), then
    ``fc_1`` (→ 120), ``fc_2`` (→ 84), ``fc_3`` (→ classes) with ReLUs. ``embed``: ``(B, 84)``."""

    def __init__(self, channels: int = 3, num_classes: int = 10, image_size: int = 32, *,
                 generator: Optional[torch.Generator] = None, device: Any = None) -> None:
        super().__init__()
        _check_common("LeNet", channels, num_classes, image_size)
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, kernel_size=5, padding=2 if channels == 1 else 0, device="meta"),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5, device="meta"),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.relu = nn.ReLU()

        def head(dim: int) -> None:
            self.fc_1 = nn.Linear(dim, 120, device="meta")
            self.fc_2 = nn.Linear(120, 84, device="meta")
            self.fc_3 = nn.Linear(84, num_classes, device="meta")

        self._finish(dict(channels=channels, num_classes=num_classes, image_size=image_size), head, generator, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_3(self.embed(x))  # (B, num_classes)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def _embed_dim(self, flat: int) -> int:
        return 84

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).flatten(1)
        return self.relu(self.fc_2(self.relu(self.fc_1(h))))  # (B, 84)


class AlexNet(ZooNet):
    """DC's AlexNet (five convolutions, three max-pools; padding 4 in the first for one
    channel), with ``norm="batchnorm"`` after every convolution (DC's ``AlexNetBN``) or none;
    the classifier ``fc``."""

    def __init__(self, channels: int = 3, num_classes: int = 10, image_size: int = 32, *, norm: str = "none",
                 generator: Optional[torch.Generator] = None, device: Any = None) -> None:
        super().__init__()
        _check_common("AlexNet", channels, num_classes, image_size)
        if norm not in ("none", "batchnorm"):
            raise ConfigError(f"AlexNet norm {norm!r}; choose none or batchnorm")
        layers: list[nn.Module] = []
        spec = [(channels, 128, 5, 4 if channels == 1 else 2, True), (128, 192, 5, 2, True),
                (192, 256, 3, 1, False), (256, 192, 3, 1, False), (192, 192, 3, 1, True)]
        for c_in, c_out, k, pad, pool in spec:
            layers.append(nn.Conv2d(c_in, c_out, kernel_size=k, stride=1, padding=pad, device="meta"))
            if norm == "batchnorm":
                layers.append(_norm("batchnorm", c_out))
            layers.append(nn.ReLU(inplace=True))
            if pool:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.features = nn.Sequential(*layers)
        self._finish(dict(channels=channels, num_classes=num_classes, image_size=image_size, norm=norm),
                     lambda d: setattr(self, "fc", nn.Linear(d, num_classes, device="meta")), generator, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))  # (B, num_classes)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


VGG11_LAYERS = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(ZooNet):
    """DC's VGG-11: 3x3 conv + norm + ReLU layers and five max-pools (padding 3 in the first
    convolution for one channel), instance norm (GroupNorm(C, C)) or batch norm (``VGG11BN``);
    the classifier ``classifier``."""

    def __init__(self, channels: int = 3, num_classes: int = 10, image_size: int = 32, *,
                 norm: str = "instancenorm", generator: Optional[torch.Generator] = None, device: Any = None) -> None:
        super().__init__()
        _check_common("VGG11", channels, num_classes, image_size)
        if norm not in ("instancenorm", "batchnorm"):
            raise ConfigError(f"VGG11 norm {norm!r}; choose instancenorm or batchnorm")
        layers: list[nn.Module] = []
        c_in = channels
        for i, v in enumerate(VGG11_LAYERS):
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            pad = 3 if channels == 1 and i == 0 else 1
            layers += [nn.Conv2d(c_in, v, kernel_size=3, padding=pad, device="meta"), _norm(norm, v),
                       nn.ReLU(inplace=True)]
            c_in = v
        layers.append(nn.AvgPool2d(kernel_size=1, stride=1))
        self.features = nn.Sequential(*layers)
        self._finish(dict(channels=channels, num_classes=num_classes, image_size=image_size, norm=norm),
                     lambda d: setattr(self, "classifier", nn.Linear(d, num_classes, device="meta")),
                     generator, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))  # (B, num_classes)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class BasicBlock(nn.Module):
    """ResNet's basic block: conv3x3 (stride) + norm + ReLU, conv3x3 + norm, plus the shortcut
    (a 1x1 conv with stride and norm where the shape changes), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False, device="meta")
        self.bn1 = _norm(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, kernel_size=3, stride=1, padding=1, bias=False, device="meta")
        self.bn2 = _norm(norm, c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False, device="meta"), _norm(norm, c_out))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return self.relu(out)


class ResNet18(ZooNet):
    """DC's ResNet-18: a 3x3 stem (stride 1), four stages of two basic blocks (64, 128, 256, 512
    channels; stride 2 from the second), 4x4 average pooling and ``classifier``; instance norm
    (GroupNorm(C, C)) or batch norm (``ResNet18BN``). 28 px and 32 px inputs both end at 1x1."""

    def __init__(self, channels: int = 3, num_classes: int = 10, image_size: int = 32, *,
                 norm: str = "instancenorm", generator: Optional[torch.Generator] = None, device: Any = None) -> None:
        super().__init__()
        _check_common("ResNet18", channels, num_classes, image_size)
        if norm not in ("instancenorm", "batchnorm"):
            raise ConfigError(f"ResNet18 norm {norm!r}; choose instancenorm or batchnorm")
        self.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False, device="meta")
        self.bn1 = _norm(norm, 64)
        self.relu = nn.ReLU()
        c_in = 64
        for i, c_out in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(c_in, c_out, stride, norm),
                                                         BasicBlock(c_out, c_out, 1, norm)))
            c_in = c_out
        self.pool = nn.AvgPool2d(4)
        self._finish(dict(channels=channels, num_classes=num_classes, image_size=image_size, norm=norm),
                     lambda d: setattr(self, "classifier", nn.Linear(d, num_classes, device="meta")),
                     generator, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))  # (B, num_classes)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.pool(out)


# -- factories (entry points of the group dkkt_plugin.models) -------------------------------------
def convnet(channels: int, num_classes: int, image_size: int, *, generator: Optional[torch.Generator] = None,
            device: Any = None, **kw: Any) -> ConvNet:
    """:class:`dkkt_plugin.nets.ConvNet` (width 128, depth 3, instance norm, average pooling;
    ``kw``: ``width``, ``depth``, ``norm``, ``pooling``)."""
    return ConvNet(channels, num_classes, image_size, generator=generator, device=device, **kw)


def convnet_bn(channels: int, num_classes: int, image_size: int, **kw: Any) -> ConvNet:
    """ConvNet with batch norm (DC's ``ConvNetBN``)."""
    return convnet(channels, num_classes, image_size, norm="batchnorm", **kw)


def convnet_nn(channels: int, num_classes: int, image_size: int, **kw: Any) -> ConvNet:
    """ConvNet without normalisation (DC's ``ConvNetNN``)."""
    return convnet(channels, num_classes, image_size, norm="none", **kw)


def convnet_d1(channels: int, num_classes: int, image_size: int, **kw: Any) -> ConvNet:
    """ConvNet of depth 1 (DC's ``ConvNetD1``)."""
    return convnet(channels, num_classes, image_size, depth=1, **kw)


def convnet_d2(channels: int, num_classes: int, image_size: int, **kw: Any) -> ConvNet:
    """ConvNet of depth 2 (DC's ``ConvNetD2``)."""
    return convnet(channels, num_classes, image_size, depth=2, **kw)


def convnet_d3(channels: int, num_classes: int, image_size: int, **kw: Any) -> ConvNet:
    """ConvNet of depth 3 (DC's ``ConvNetD3``, the same network as ``convnet``)."""
    return convnet(channels, num_classes, image_size, depth=3, **kw)


def convnet_d4(channels: int, num_classes: int, image_size: int, **kw: Any) -> ConvNet:
    """ConvNet of depth 4 (DC's ``ConvNetD4``)."""
    return convnet(channels, num_classes, image_size, depth=4, **kw)


def mlp(channels: int, num_classes: int, image_size: int, **kw: Any) -> MLP:
    """DC's MLP (:class:`MLP`; ``kw``: ``width``)."""
    return MLP(channels, num_classes, image_size, **kw)


def lenet(channels: int, num_classes: int, image_size: int, **kw: Any) -> LeNet:
    """DC's LeNet (:class:`LeNet`)."""
    return LeNet(channels, num_classes, image_size, **kw)


def alexnet(channels: int, num_classes: int, image_size: int, **kw: Any) -> AlexNet:
    """DC's AlexNet, no normalisation (:class:`AlexNet`)."""
    return AlexNet(channels, num_classes, image_size, **kw)


def alexnet_bn(channels: int, num_classes: int, image_size: int, **kw: Any) -> AlexNet:
    """DC's AlexNetBN (:class:`AlexNet` with batch norm)."""
    return AlexNet(channels, num_classes, image_size, norm="batchnorm", **kw)


def vgg11(channels: int, num_classes: int, image_size: int, **kw: Any) -> VGG11:
    """DC's VGG11, instance norm (:class:`VGG11`)."""
    return VGG11(channels, num_classes, image_size, **kw)


def vgg11_bn(channels: int, num_classes: int, image_size: int, **kw: Any) -> VGG11:
    """DC's VGG11BN (:class:`VGG11` with batch norm)."""
    return VGG11(channels, num_classes, image_size, norm="batchnorm", **kw)


def resnet18(channels: int, num_classes: int, image_size: int, **kw: Any) -> ResNet18:
    """DC's ResNet18, instance norm (:class:`ResNet18`)."""
    return ResNet18(channels, num_classes, image_size, **kw)


def resnet18_bn(channels: int, num_classes: int, image_size: int, **kw: Any) -> ResNet18:
    """DC's ResNet18BN (:class:`ResNet18` with batch norm)."""
    return ResNet18(channels, num_classes, image_size, norm="batchnorm", **kw)


# -- names -> models -----------------------------------------------------------------------------
def names() -> list[str]:
    """Every name of the group ``dkkt_plugin.models`` (the zoo and third parties' models)."""
    from . import registry

    return registry.names("models")


def resolve(arch: str, who: str = "--arch") -> Factory:
    """The factory an architecture name stands for (see the module notes).

    Raises:
        ConfigError: an unknown name (listing the known ones), a ``module:callable`` that cannot
            be imported, or ``torchvision:`` / ``timm:`` when that library is not installed.
    """
    if not isinstance(arch, str) or not arch.strip():
        raise ConfigError(f"{who} must name an architecture, got {arch!r}; e.g. {who} resnet18")
    arch = arch.strip()
    if ":" not in arch:
        from . import registry

        try:
            return registry.load("models", arch)
        except UnknownComponentError:
            raise ConfigError(f"{who} {arch}: unknown architecture; choose one of {', '.join(names())}, or give "
                              "module.path:factory, torchvision:NAME or timm:NAME") from None
    source, _, name = arch.partition(":")
    if source in EXTERNAL:
        return _external(source, name, who)
    try:
        module = importlib.import_module(source)
    except ImportError as exc:
        raise ConfigError(f"{who} {arch}: cannot import module {source!r} ({exc}); put it on the Python path "
                          "or install the package that provides it") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ConfigError(f"{who} {arch}: module {source!r} has no callable {name!r}; give module.path:factory "
                          "with factory(channels, num_classes, image_size, *, generator=None) -> nn.Module")
    return factory


def _external(source: str, name: str, who: str) -> Factory:
    try:
        lib = importlib.import_module(source)
    except ImportError:
        raise ConfigError(f"{who} {source}:{name} needs {source}, which is not installed: "
                          f"{EXTERNAL[source]}") from None
    if source == "torchvision":
        available = set(lib.models.list_models()) if hasattr(lib.models, "list_models") else None
        if available is not None and name not in available:
            raise ConfigError(f"{who} torchvision:{name}: torchvision has no model {name!r} "
                              f"(e.g. {', '.join(sorted(available)[:5])}, ...)")

        def make(channels: int, num_classes: int, image_size: int) -> nn.Module:
            return lib.models.get_model(name, weights=None, num_classes=num_classes)
    else:
        if hasattr(lib, "is_model") and not lib.is_model(name):
            raise ConfigError(f"{who} timm:{name}: timm has no model {name!r} (timm.list_models() lists them)")

        def make(channels: int, num_classes: int, image_size: int) -> nn.Module:
            return lib.create_model(name, pretrained=False, num_classes=num_classes, in_chans=channels)
    make.__name__ = f"{source}:{name}"
    make.external = True  # type: ignore[attr-defined]  # draws from the global RNG: seeded and restored
    return make


def _accepts(factory: Factory, keyword: str) -> bool:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is p.VAR_KEYWORD or (p.name == keyword and p.kind is not p.POSITIONAL_ONLY) for p in params)


def build_model(arch: str, channels: int, num_classes: int, image_size: int, *,
                generator: Optional[torch.Generator] = None, device: Any = None, who: str = "--arch",
                **kw: Any) -> nn.Module:
    """The network ``arch`` (a name :func:`resolve` knows) for ``channels`` x ``image_size`` px
    images and ``num_classes`` classes, its weights drawn from ``generator``, on ``device``.

    The model's ``dkkt_arch`` records how to build it again: ``{"name": arch, "channels",
    "num_classes", "image_size", **kw}`` (:func:`dkkt_plugin.pretrain.save_edge_model` stores
    it). A factory that takes no ``generator`` (``torchvision:``, ``timm:``, a ``module:callable``
    without one) runs under a seed drawn from ``generator``, with torch's global RNG restored
    afterwards.

    Raises:
        ConfigError: an unknown name, or settings the architecture does not take.
    """
    factory = resolve(arch, who)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    args = (int(channels), int(num_classes), int(image_size))
    try:
        if _accepts(factory, "generator") and not getattr(factory, "external", False):
            extra = {"device": device} if _accepts(factory, "device") else {}
            model = factory(*args, generator=gen, **extra, **kw)
        else:
            seed = int(torch.randint(0, 2 ** 62, (1,), generator=gen))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = factory(*args, **kw)
    except TypeError as exc:
        taken = ", ".join(sorted(kw)) or "no extra settings"
        raise ConfigError(f"{who} {arch} does not take {taken} ({exc})") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{who} {arch} returned {type(model).__name__}, not a torch.nn.Module")
    if device is not None:
        model = model.to(device)
    model.dkkt_arch = {"name": arch, "channels": args[0], "num_classes": args[1], "image_size": args[2], **kw}
    return model


def size_options(arch: str, width: Optional[int] = None, depth: Optional[int] = None, *,
                 defaults: Optional[dict[str, int]] = None, who: str = "--width/--depth") -> dict[str, int]:
    """The ConvNet size settings ``arch`` takes among ``width`` and ``depth`` (None: not set):
    ``convnet``, ``convnet_bn``, ``convnet_nn`` take both, ``convnet_d1`` .. ``_d4`` the width;
    other architectures neither (they have their own fixed sizes). With ``defaults``, a value that
    ``arch`` does not take and that differs from its default is a ConfigError.

    Example:
        >>> size_options("convnet_d1", width=32, depth=3), size_options("resnet18", width=32, depth=3)
        ({'width': 32}, {})
    """
    given = {"width": width, "depth": depth}
    takes = CONVNET_SIZES.get(arch, ())
    if defaults is not None:
        ignored = [k for k, v in given.items() if k not in takes and v is not None and v != defaults.get(k)]
        if ignored:
            raise ConfigError(f"{', '.join(f'{k} {given[k]}' for k in ignored)}: {who} size the ConvNet architectures; "
                              f"{arch} has its own size; drop the setting or choose a convnet architecture")
    return {k: given[k] for k in takes if given[k] is not None}


def final_linear(model: nn.Module, num_classes: Optional[int] = None) -> tuple[str, nn.Linear]:
    """``(name, layer)`` of the classifier of any architecture (TorchScript models too): the last
    ``nn.Linear`` in module order whose ``out_features`` is ``num_classes`` (when given, else read from the model's
    ``config["num_classes"]`` or ``num_classes`` attribute; when unknown, the last ``nn.Linear``).

    Raises:
        ConfigError: the model has no such layer.

    Example:
        >>> final_linear(build_model("resnet18", 1, 10, 28))[0]
        'classifier'
    """
    if num_classes is None:
        config = getattr(model, "config", None)
        num_classes = config.get("num_classes") if isinstance(config, dict) else getattr(model, "num_classes", None)
        num_classes = num_classes if isinstance(num_classes, int) else None
    linears = [(n, m) for n, m in model.named_modules() if _is_linear(m)]
    fitting = [(n, m) for n, m in linears if num_classes is None or m.weight.shape[0] == num_classes]
    if not fitting:
        outs = ", ".join(f"{n} ({m.weight.shape[0]})" for n, m in linears) or "none"
        want = f" with {num_classes} outputs" if num_classes is not None else ""
        raise ConfigError(f"{type(model).__name__} has no final nn.Linear{want} (its linear layers: {outs}); name "
                          "the classifier's parameters instead, e.g. params='fc.'")
    return fitting[-1]


def _is_linear(m: nn.Module) -> bool:
    """An ``nn.Linear``, also inside a TorchScript model (where it is a ScriptModule named Linear)."""
    if isinstance(m, nn.Linear):
        return True
    return (isinstance(m, torch.jit.ScriptModule) and getattr(m, "original_name", None) == "Linear"
            and getattr(m, "weight", None) is not None)
