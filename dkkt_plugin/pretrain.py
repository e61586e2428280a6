"""The edge model: a classifier trained on the full training set, saved with its provenance.

A checkpoint records the architecture (by the name :func:`dkkt_plugin.models.build_model`
rebuilds it from, with its settings), the dataset and its normalisation, the training settings,
the test accuracy, the seed and the command that produced it, so ``dm_star``, ``dsv`` and
``dm_dkkt`` can rebuild the model and check it matches the data they distil.

:func:`load_edge_model` also takes an edge model trained elsewhere:

- a TorchScript file (``torch.jit.save``), which holds its own architecture (returned as a
  :class:`TorchScriptModel`, which ``torch.func`` and so the DKKT loss can run);
- a state dict (``torch.save(model.state_dict(), path)``; also one nested under ``state_dict`` or
  ``model``, or saved from ``nn.DataParallel``) together with the architecture's name
  (:class:`EdgeSpec` ``arch``; ``--edge-arch`` on the command line).

What such a file does not record (the normalisation the model was trained with, its image size
and class count) comes from :class:`EdgeSpec` (``--edge-mean``, ``--edge-std``,
``--edge-image-size``, ``--edge-num-classes``), else from the data it is used with.

Example:
    >>> import tempfile, os
    >>> from dkkt_plugin.nets import ConvNet
    >>> path = os.path.join(tempfile.mkdtemp(), "edge.pt")
    >>> save_edge_model(path, ConvNet(1, 10, 28, width=4), {"dataset": "fashion_mnist"})
    >>> model, meta = load_edge_model(path)
    >>> meta["arch"]["name"], meta["arch"]["width"], meta["dataset"]
    ('convnet', 4, 'fashion_mnist')
"""
from __future__ import annotations

import os
import re
import time
import warnings
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from . import registry, runtime
from .errors import CheckpointError, ConfigError
from .fileio import check_writable, save_torch
from .models import build_model, final_linear, resolve, size_options
from .nets import ConvNet
from .packaged import edge_model_path
from .provenance import provenance
from .settings import PretrainConfig  # noqa: F401 (defined torch-free, used here)
from .training import TrainConfig, accuracy, train_classifier

FORMAT = "dkkt-edge-model/1"
PRETRAIN_HINT = "create one with `dkkt pretrain --dataset DATASET --out PATH`"
# keys under which checkpoints of other code commonly nest a state dict
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")


@dataclass(frozen=True)
class EdgeSpec:
    """What an edge-model file may not record itself (the command line's ``--edge-*`` flags).

    Args:
        arch: the architecture of a state dict (a name :func:`dkkt_plugin.models.build_model`
            knows); a TorchScript file or a dkkt-plugin checkpoint holds its own.
        mean, std: per-channel normalisation the model was trained with; checked against the data's.
        image_size: the side of the images it takes (pixels).
        num_classes: its outputs.

    A value the file records wins; a different one here is a ConfigError. Where neither gives a
    value, the data's is assumed (and the model is probed with the data's shape).
    """

    arch: Optional[str] = None
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    image_size: Optional[int] = None
    num_classes: Optional[int] = None

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(v) for v in value))
        if (self.mean is None) != (self.std is None) or (self.mean is not None and len(self.mean) != len(self.std)):
            raise ConfigError(f"give the edge model's normalisation as a mean and a std of one value per channel "
                              f"each (--edge-mean ... --edge-std ...); got mean {self.mean}, std {self.std}")
        if self.std is not None and min(self.std) <= 0:
            raise ConfigError(f"--edge-std must be positive, got {self.std}")
        for name in ("image_size", "num_classes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"--edge-{name.replace('_', '-')} must be a positive integer, got {value!r}")

    @property
    def given(self) -> bool:
        """Whether any value is set."""
        return any(v is not None for v in asdict(self).values())


def arch_record(model: nn.Module) -> dict[str, Any]:
    """How to rebuild ``model``: ``{"name", "channels", "num_classes", "image_size", **settings}``
    (a :class:`~dkkt_plugin.nets.ConvNet`: ``"convnet"`` and its config; a model from
    :func:`~dkkt_plugin.models.build_model`: what built it).

    Raises:
        ConfigError: for a model built otherwise (save it as TorchScript instead).
    """
    if isinstance(model, ConvNet):
        return {"name": "convnet", **model.config}
    spec = getattr(model, "dkkt_arch", None)
    if isinstance(spec, dict) and "name" in spec:
        return dict(spec)
    raise ConfigError(f"save_edge_model cannot tell how to rebuild a {type(model).__name__}: build it with "
                      "dkkt_plugin.models.build_model(NAME, ...), or save it as TorchScript "
                      "(torch.jit.script(model).save(path)) and use that file as the edge model")


def save_edge_model(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write ``model`` (its :func:`arch_record` and weights) and ``meta`` atomically
    (temporary file, then rename)."""
    payload = {"format": FORMAT, "arch": arch_record(model),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **meta}
    save_torch(payload, path)


def load_edge_model(path: str | os.PathLike, device: Any = None, *, edge: Optional[EdgeSpec] = None,
                    image_shape: Optional[Sequence[int]] = None,
                    num_classes: Optional[int] = None) -> tuple[nn.Module, dict[str, Any]]:
    """The edge model in ``path`` (in eval mode, on ``device``) and what is known about it.

    ``path``: a checkpoint written by :func:`save_edge_model`, the packaged one a name stands for
    (``fmnist``: :data:`dkkt_plugin.packaged.EDGE_MODELS`), a TorchScript file, or a state dict with
    ``edge.arch``. ``image_shape`` ``(C, H, W)`` and ``num_classes`` are the data's: a state dict's
    architecture is built for them where ``edge`` does not say otherwise (C: the length of
    ``edge.mean``).

    Returns:
        ``(model, meta)``: ``meta`` holds ``source`` (``checkpoint``, ``torchscript`` or
        ``state_dict``), ``arch`` (``name``, ``channels``, ``num_classes``, ``image_size`` where
        known) and ``mean`` / ``std`` where known; a checkpoint's provenance besides.

    Raises:
        CheckpointError: the file is missing, unreadable, or of another kind.
        ConfigError: a state dict without ``edge.arch``, or one that does not fit it (the message
            names the missing, unexpected or mismatched tensors), or ``edge`` contradicting what
            the file records.
    """
    edge = edge or EdgeSpec()
    path = Path(edge_model_path(path))
    if not path.is_file():
        raise CheckpointError(f"edge model {path} does not exist; {PRETRAIN_HINT}")
    if _is_torchscript(path):
        return _load_torchscript(path, device, edge)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if "unsupported global" in str(exc).lower():  # a pickle of Python objects, not of tensors
            raise CheckpointError(f"edge model {path} holds pickled Python objects (a whole pickled model?), which are "
                                  "not loaded (unpickling runs arbitrary code): save model.state_dict() and pass it "
                                  "with --edge-arch, or save TorchScript (torch.jit.save)") from exc
        raise CheckpointError(f"edge model {path} is corrupt or not a torch file ({error_line(exc)}); it was left "
                              f"as it is; give a dkkt-plugin checkpoint ({PRETRAIN_HINT}), a TorchScript file or "
                              "a state dict (torch.save(model.state_dict(), path)) with --edge-arch") from exc
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return _load_checkpoint(path, payload, device, edge)
    state = _state_dict_in(payload)
    if state is None:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not a dkkt-plugin edge model (format {found!r}, expected {FORMAT!r}) nor a "
                              f"state dict; {PRETRAIN_HINT}, or save model.state_dict() or TorchScript")
    if edge.arch is None:
        raise ConfigError(f"{path} is not a dkkt-plugin edge model checkpoint but a state dict of "
                          f"{len(state)} tensors: name its architecture with --edge-arch NAME "
                          "(e.g. resnet18; `dkkt plugins --group models` lists the zoo)")
    return _load_state_dict(path, state, device, edge, image_shape, num_classes)


def error_line(exc: BaseException) -> str:
    """The gist of an exception as one short line (TorchScript errors: their last ``...Error:`` line)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    errors = [ln for ln in lines if re.match(r"^[A-Za-z_.]*(Error|Exception): ", ln)]
    line = errors[-1].split(": ", 1)[1] if len(lines) > 1 and errors else lines[0]
    return line if len(line) <= 300 else line[:297] + "..."


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive holds ``constants.pkl`` and ``code/``; torch.save files do not."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


class TorchScriptModel(nn.Module):
    """A TorchScript model behind a Python module, so that ``torch.func`` (``functional_call``,
    ``vmap``: the DKKT loss, per-sample gradients) can run it with other tensors, which its
    stateless API refuses for a scripted module itself.

    The scripted model's submodules, parameters and buffers are registered here under their own
    names (the same tensors: nothing is copied), and ``forward`` calls the scripted model; top-level
    tensors swapped in here are handed to it for the call. ``config`` and ``embed`` are the
    scripted model's where it has them.
    """

    def __init__(self, script: torch.jit.ScriptModule) -> None:
        super().__init__()
        object.__setattr__(self, "script", script)  # not a submodule: the stateless API would refuse it
        for name, child in script.named_children():
            self._modules[name] = child
        self._parameters.update(dict(script.named_parameters(recurse=False)))
        self._buffers.update(dict(script.named_buffers(recurse=False)))
        config = getattr(script, "config", None)
        if isinstance(config, dict):
            self.config = dict(config)
        if hasattr(script, "embed"):
            object.__setattr__(self, "embed", script.embed)

    @property
    def training(self) -> bool:  # the scripted model's own flag (its root may read it)
        return self.__dict__["script"].training if "script" in self.__dict__ else True

    @training.setter
    def training(self, mode: bool) -> None:
        if "script" in self.__dict__:
            self.__dict__["script"].training = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        own = {**self._parameters, **self._buffers}
        before = {n: getattr(self.script, n) for n in own}
        try:
            for n, t in own.items():  # the tensors functional_call swapped in, if any
                setattr(self.script, n, t)
            return self.script(x)
        finally:
            for n, t in before.items():
                setattr(self.script, n, t)


def _load_torchscript(path: Path, device: Any, edge: EdgeSpec) -> tuple[nn.Module, dict[str, Any]]:
    if edge.arch is not None:
        raise ConfigError(f"edge model {path} is a TorchScript file, which holds its own architecture: drop "
                          f"--edge-arch {edge.arch}")
    try:
        with warnings.catch_warnings():  # torch's deprecation of its own loader asks nothing of the user
            warnings.filterwarnings("ignore", r".*torch\.jit\.load.* is deprecated", DeprecationWarning)
            model = TorchScriptModel(torch.jit.load(str(path), map_location=device or "cpu"))
    except Exception as exc:
        raise CheckpointError(f"edge model {path} is a corrupt TorchScript file ({error_line(exc)})") from exc
    arch = {"name": "torchscript",
            **{k: getattr(edge, k) for k in ("image_size", "num_classes") if getattr(edge, k) is not None}}
    if edge.mean is not None:
        arch["channels"] = len(edge.mean)
    meta = {"source": "torchscript", "arch": arch, **_norm_of(edge)}
    return model.eval(), meta


def _norm_of(edge: EdgeSpec) -> dict[str, Any]:
    return {"mean": list(edge.mean), "std": list(edge.std)} if edge.mean is not None else {}


def _load_checkpoint(path: Path, payload: dict, device: Any, edge: EdgeSpec) -> tuple[nn.Module, dict[str, Any]]:
    arch = dict(payload.get("arch") or {})
    arch.setdefault("name", "convnet")  # checkpoints written before the architecture had a name
    recorded = {"arch": arch["name"], "image_size": arch.get("image_size"), "num_classes": arch.get("num_classes"),
                "mean": tuple(payload["mean"]) if payload.get("mean") is not None else None,
                "std": tuple(payload["std"]) if payload.get("std") is not None else None}
    clash = [f"{k} {getattr(edge, k)} (it records {recorded[k]})" for k in recorded
             if getattr(edge, k) is not None and recorded[k] is not None
             and _differs(getattr(edge, k), recorded[k])]
    if clash:
        flags = " ".join(f"--edge-{k.split(' ')[0].replace('_', '-')}" for k in clash)
        raise ConfigError(f"edge model {path} is a dkkt-plugin checkpoint that records what the --edge-* flags say, "
                          f"and they disagree: {'; '.join(clash)}; drop {flags}")
    name, settings = arch["name"], {k: v for k, v in arch.items() if k not in ("name", "channels", "num_classes",
                                                                              "image_size")}
    try:
        model = build_model(name, arch["channels"], arch["num_classes"], arch["image_size"], device=device,
                            who="the recorded architecture", **settings)
        model.load_state_dict(payload["state_dict"])
    except Exception as exc:
        raise CheckpointError(f"edge model {path} does not match its recorded architecture {name} "
                              f"({error_line(exc)})") from exc
    meta = {k: v for k, v in payload.items() if k not in ("state_dict", "format")}
    meta.update(source="checkpoint", arch=arch)
    if isinstance(meta.get("config"), dict):  # the pretraining settings name the architecture too
        meta["config"] = {**meta["config"], "arch": meta["config"].get("arch", name)}
    return model.eval(), meta


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, tuple) or isinstance(b, tuple):
        a, b = tuple(a), tuple(b)
        return len(a) != len(b) or any(abs(x - y) > 1e-3 for x, y in zip(a, b))
    return a != b


def _state_dict_in(payload: Any) -> Optional[dict[str, torch.Tensor]]:
    """The tensors of a state dict (possibly nested under a usual key; ``module.`` prefixes of
    ``nn.DataParallel`` removed), or None when ``payload`` is none."""
    def tensors(obj: Any) -> bool:
        return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and torch.is_tensor(v)
                                                           for k, v in obj.items())

    state = payload if tensors(payload) else None
    if state is None and isinstance(payload, dict) and "format" not in payload:
        state = next((payload[k] for k in STATE_DICT_KEYS if tensors(payload.get(k))), None)
    if state is not None and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _load_state_dict(path: Path, state: dict[str, torch.Tensor], device: Any, edge: EdgeSpec,
                     image_shape: Optional[Sequence[int]], num_classes: Optional[int]) -> tuple[nn.Module, dict]:
    channels = len(edge.mean) if edge.mean is not None else (image_shape[0] if image_shape else None)
    size = edge.image_size or (image_shape[-1] if image_shape else None)
    classes = edge.num_classes or num_classes
    unknown = [flag for flag, v in (("--edge-mean/--edge-std (one value per channel)", channels),
                                    ("--edge-image-size", size), ("--edge-num-classes", classes)) if v is None]
    if unknown:
        raise ConfigError(f"building --edge-arch {edge.arch} for the state dict {path} needs {', '.join(unknown)} "
                          "(or the data's image_shape and num_classes)")
    model = build_model(edge.arch, channels, classes, size, device=device, who="--edge-arch")
    built = f"{edge.arch} for {channels} channel(s), {size} px, {classes} classes"
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = [f"{what} {_few(keys)}" for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise ConfigError(f"the state dict {path} does not fit --edge-arch {built}: {'; '.join(parts)}; name the "
                          "architecture it was saved from")
    wrong = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if wrong:
        raise ConfigError(f"the state dict {path} does not fit --edge-arch {built}: "
                          f"{_shape_diagnosis(model, state, wrong, channels, classes, size)}")
    model.load_state_dict(state)
    meta = {"source": "state_dict", "arch": dict(model.dkkt_arch), **_norm_of(edge)}
    return model.eval(), meta


def _few(keys: Sequence[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _shape_diagnosis(model: nn.Module, state: dict, wrong: list[str], channels: int, classes: int,
                     size: int) -> str:
    """What differs, in the data's terms where the tensor says it: the final layer's outputs (class
    count), the first convolution's input channels, else the shapes (image size, width, ...)."""
    head = final_linear(model, classes)[0]
    first = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    shapes = _few([f"{k} {tuple(state[k].shape)} in the file, {tuple(model.state_dict()[k].shape)} in the model"
                   for k in wrong], 3)
    if f"{head}.weight" in wrong and state[f"{head}.weight"].shape[0] != classes:
        return (f"class count: its classifier {head} has {state[f'{head}.weight'].shape[0]} outputs, the model "
                f"{classes} ({shapes}); pass --edge-num-classes if the model has other classes than the data")
    if first is not None and f"{first}.weight" in wrong and state[f"{first}.weight"].ndim == 4 \
            and state[f"{first}.weight"].shape[1] != channels:
        return (f"channels: its first convolution {first} takes {state[f'{first}.weight'].shape[1]} channel(s), "
                f"the model {channels} ({shapes})")
    return f"{shapes}; another image size (--edge-image-size, the model: {size} px) or other settings?"


@torch.no_grad()
def _features(model: nn.Module, images: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    model.eval()
    return torch.cat([model.embed(images[s:s + batch]) for s in range(0, len(images), batch)])


def refit_classifier(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, weight_decay: float,
                     max_iter: int = 500) -> float:
    """Minimise ``mean CE + (wd/2)·‖W, b‖²`` over the final linear layer exactly (it is convex).

    ``model`` needs ``embed(x)``, the features its final linear layer
    (:func:`dkkt_plugin.models.final_linear`) reads, as the zoo's networks and ConvNet have. The
    features are computed once with the rest of the network frozen; full-batch L-BFGS then finds
    the regularised optimum, where the classifier satisfies the KKT stationarity
    ``θ_c = -(1/(wd N)) Σ_i ∇θ_c ℓ_i`` up to the solver tolerance. Returns the final loss.
    """
    if not callable(getattr(model, "embed", None)):
        raise ConfigError(f"refit_classifier needs a model with embed(x) (the features of its final linear layer); "
                          f"{type(model).__name__} has none: use an architecture of dkkt_plugin.models")
    _, lin = final_linear(model)
    feats = _features(model, images)  # (N, D)
    if feats.shape[1] != lin.in_features:
        raise ConfigError(f"refit_classifier: {type(model).__name__}.embed gives {feats.shape[1]} features but its "
                          f"final linear layer reads {lin.in_features}")
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=max_iter, tolerance_grad=1e-9,
                            tolerance_change=1e-12, history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(feats), labels)
        loss = loss + 0.5 * weight_decay * (lin.weight.pow(2).sum() + lin.bias.pow(2).sum())
        loss.backward()
        return loss

    with torch.enable_grad():
        return float(opt.step(closure).detach())


def pretrain(cfg: PretrainConfig, out: str | os.PathLike, *, device: Any = "cpu",
             command: str = "") -> dict[str, Any]:
    """Train ``cfg.arch`` (the ConvNet by default) on the full training set of ``cfg.dataset`` and
    save it to ``out``; the checkpoint records the architecture.

    Returns the metadata written beside the weights (including ``test_accuracy``).
    """
    resolve(cfg.arch)  # an unknown architecture fails before the data is read
    sizes = size_options(cfg.arch, cfg.width, cfg.depth, defaults={"width": 128, "depth": 3})
    load = registry.load("datasets", cfg.dataset)
    train = load(cfg.data_root, train=True)
    test = load(cfg.data_root, train=False)
    gen = torch.Generator().manual_seed(cfg.seed)
    c, h, _ = train.image_shape
    model = build_model(cfg.arch, c, train.num_classes, h, generator=gen, device=device, **sizes)
    check_writable(out)  # after the data and the model (bad settings leave no folder), before the training
    tcfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum,
                       weight_decay=cfg.weight_decay, lr_schedule="cosine")
    start = time.time()
    x, y = train.images.to(device), train.targets.to(device)
    with runtime.auto_as_fp32() as speed:  # the edge model trains in fp32 unless --precision bf16 asks otherwise
        train_classifier(model, x, y, tcfg, generator=gen, desc=f"pretrain {cfg.dataset}")
    if cfg.refit_classifier:
        refit_classifier(model, x, y, cfg.weight_decay)
    seconds = time.time() - start
    meta = {
        "dataset": cfg.dataset, "mean": list(train.mean), "std": list(train.std),
        "num_train": len(train), "config": asdict(cfg), "train_config": asdict(tcfg),
        "test_accuracy": accuracy(model, test.images.to(device), test.targets.to(device)),
        "train_accuracy": accuracy(model, x, y), "train_seconds": round(seconds, 1),
        "seed": cfg.seed, "runtime": {"precision": speed.precision, "backend": speed.backend},
        **provenance(command=command, device=device),
    }
    save_edge_model(out, model, meta)
    return meta
