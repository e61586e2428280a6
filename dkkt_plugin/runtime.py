"""The speed switch: one precision and one backend for the whole process.

Two settings choose how fast dkkt-plugin computes. No loss, method or config takes a speed
argument: a loss reads the settings when it is built (:class:`~dkkt_plugin.losses.DMLoss`,
:class:`~dkkt_plugin.losses.DKKTLoss`), classifier training when it starts
(:func:`~dkkt_plugin.training.train_classifier`), and a run's ``record.json`` holds them with
what each pass ran (``runtime``: :meth:`dkkt_plugin.methods.Method.runtime_record`).

``precision`` (``--precision``, ``$DKKT_PRECISION``): the passes that have a bf16 path (DM's
real-image embedding, the DKKT term's feature pass through a ConvNet edge model with
classifier parameters selected, classifier training) run

- ``auto`` (default): in bf16 where the device computes bf16 natively (:func:`native_bf16`:
  CUDA with bf16, CPUs with AVX-512 BF16 or AMX), else in fp32. A method that declares
  ``needs_fp32 = True`` (``dsv``: a bf16 feature pass moved its accuracy beyond float rounding)
  and pretraining read ``auto`` as ``fp32`` (:func:`auto_as_fp32`);
- ``bf16``: in bf16 (under autocast; weights, optimiser state, losses and class means stay
  fp32) on any device;
- ``fp32``: in fp32.

Every other pass (the synthetic images' own forward and backward, gradient matching) is fp32.

``backend`` (``--backend``, ``$DKKT_BACKEND``):

- ``cpu`` (default): on the CPU, a :class:`~dkkt_plugin.nets.ConvNet`'s blocks run through the
  package's fused C kernels where they apply (:mod:`dkkt_plugin.cpu`; the same results up to
  float rounding; built with the system C compiler on first use, torch's ops with one warning if
  that fails); torch's ops elsewhere (CUDA, other networks);
- ``torch``: torch's ops only;
- ``compile``: DM's real-image embedding and classifier training through ``torch.compile`` (a
  one-off compile per process; torch's ops with one warning if it fails), torch's ops elsewhere.

The settings come from, first to last: a :func:`use` block, :func:`configure`, the environment
variable, the default. This module imports torch only when a function needs it.

Example:
    >>> with use(precision="fp32", backend="torch"):
    ...     settings()
    Settings(precision='fp32', backend='torch')
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional

from .errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp32")
BACKENDS = ("cpu", "torch", "compile")
PRECISION_ENV = "DKKT_PRECISION"
BACKEND_ENV = "DKKT_BACKEND"
DEFAULT_PRECISION = "auto"
DEFAULT_BACKEND = "cpu"


@dataclass(frozen=True)
class Settings:
    """The two speed settings in force."""

    precision: str = DEFAULT_PRECISION  # auto, bf16 or fp32
    backend: str = DEFAULT_BACKEND  # cpu, torch or compile


_CHOICES = {"precision": (PRECISIONS, PRECISION_ENV, "--precision"),
            "backend": (BACKENDS, BACKEND_ENV, "--backend")}
_configured: dict[str, Optional[str]] = {"precision": None, "backend": None}  # configure()
_scoped: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("dkkt_runtime", default={})  # use()


def _check(name: str, value: Any, where: str) -> str:
    allowed, env, flag = _CHOICES[name]
    text = value.strip().lower() if isinstance(value, str) else value
    if text not in allowed:
        raise ConfigError(f"{where}{value!r} is not a {name}; choose one of {', '.join(allowed)} "
                          f"(e.g. {flag} {allowed[-1]} or {env}={allowed[-1]})")
    return text


def _given(precision: Optional[str], backend: Optional[str]) -> dict[str, str]:
    """The settings given (not None), checked."""
    return {name: _check(name, value, f"{name} ") for name, value in (("precision", precision), ("backend", backend))
            if value is not None}


def settings(environ: Mapping[str, str] = os.environ) -> Settings:
    """The settings in force: a :func:`use` block's, else :func:`configure`'s, else the
    environment's (``$DKKT_PRECISION``, ``$DKKT_BACKEND``), else the defaults.

    Raises:
        ConfigError: an environment variable holds no valid value (the message names it).
    """
    scoped = _scoped.get()
    values = {}
    for name, (_, env, _) in _CHOICES.items():
        value = scoped.get(name) or _configured[name]
        if value is None and environ.get(env, "").strip():
            value = _check(name, environ[env], f"${env}=")
        values[name] = value or Settings.__dataclass_fields__[name].default
    return Settings(**values)


def configure(precision: Optional[str] = None, backend: Optional[str] = None) -> Settings:
    """Set the precision and/or the backend for the whole process (``None`` leaves one as it
    is); returns the settings in force afterwards.

    Raises:
        ConfigError: a value that is not one of :data:`PRECISIONS` / :data:`BACKENDS`.
    """
    checked = _given(precision, backend)
    _configured.update(checked)
    return settings()


def reset() -> None:
    """Forget :func:`configure`'s settings (the environment and the defaults apply again)."""
    _configured.update(precision=None, backend=None)


@contextlib.contextmanager
def use(precision: Optional[str] = None, backend: Optional[str] = None) -> Iterator[Settings]:
    """Within the block (this thread and context only), the given settings are in force
    (``None`` keeps the one in force outside); yields them.

    Raises:
        ConfigError: a value that is not one of :data:`PRECISIONS` / :data:`BACKENDS`.
    """
    checked = _given(precision, backend)
    token = _scoped.set({**_scoped.get(), **checked})
    try:
        yield settings()
    finally:
        _scoped.reset(token)


@contextlib.contextmanager
def auto_as_fp32(enabled: bool = True) -> Iterator[Settings]:
    """Within the block, precision ``auto`` reads as ``fp32`` (an explicit ``bf16`` stands): for
    work that needs fp32 unless asked otherwise, e.g. a method with ``needs_fp32 = True``, whose
    losses are built inside it. ``enabled=False`` changes nothing; yields the settings in force.

    Example:
        >>> with use(precision="auto"), auto_as_fp32():
        ...     settings().precision
        'fp32'
    """
    with use(precision="fp32" if enabled and settings().precision == "auto" else None) as now:
        yield now


def native_bf16(device: Any) -> bool:
    """True where bf16 matrix products run natively: CUDA with bf16 support, or a CPU with
    AVX-512 BF16 / AMX (as oneDNN reports it)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def runs_bf16(x: Any, precision: Optional[str] = None) -> bool:
    """Whether a pass with a bf16 path runs in bf16 over the float32 tensor ``x`` under
    ``precision`` (default: the one in force): ``bf16`` always, ``auto`` where
    :func:`native_bf16` holds for ``x``'s device, ``fp32`` never; tensors of other dtypes (a
    float64 model's inputs) never."""
    import torch

    precision = _check("precision", precision, "precision ") if precision is not None else settings().precision
    if precision == "fp32" or x.dtype != torch.float32:
        return False
    return precision == "bf16" or native_bf16(x.device)


def describe_pass(bf16: bool, backend: str, not_supported: Optional[list[str]] = None) -> dict[str, Any]:
    """One pass's entry in a record: ``{"precision": "bf16"|"fp32", "backend": what ran,
    "not_supported": why the backend asked for did not apply}``."""
    return {"precision": "bf16" if bf16 else "fp32", "backend": backend, "not_supported": list(not_supported or [])}


# -- settings of earlier versions -----------------------------------------------------------------
# Config keys (dotted) that chose a code path before the two settings above replaced them, and
# what replaced them. Checkpoints written with them still resume (:func:`retired_settings`).
RETIRED = {
    "real_precision": "--precision",
    "compile_real": "--backend compile",
    "fused_real": "--backend torch (false) / cpu (true)",
    "fused_syn": "--backend torch (false) / cpu (true)",
    "dkkt.precision": "--precision",
}
RETIRED_FLAGS = {  # command-line flags of earlier versions -> the flag that replaced them
    "--real-precision": "--precision", "--dkkt.precision": "--precision", "--eval-precision": "--precision",
    "--compile-real": "--backend compile", "--eval-compile": "--backend compile",
    "--fused-real": "--backend torch (or cpu)", "--fused-syn": "--backend torch (or cpu)",
    "--eval-fused": "--backend torch (or cpu)",
}


def retired_settings(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``config`` (a nested dict such as ``dataclasses.asdict`` gives) without the keys of
    :data:`RETIRED`, and those keys' values by dotted path.

    Example:
        >>> retired_settings({"ipc": 1, "fused_syn": False, "dkkt": {"alpha": 1.0, "precision": "auto"}})
        ({'ipc': 1, 'dkkt': {'alpha': 1.0}}, {'fused_syn': False, 'dkkt.precision': 'auto'})
    """
    found: dict[str, Any] = {}

    def strip(node: Mapping[str, Any], prefix: str) -> dict[str, Any]:
        kept = {}
        for key, value in node.items():
            path = prefix + str(key)
            if path in RETIRED:
                found[path] = value
            elif isinstance(value, Mapping):
                kept[key] = strip(value, path + ".")
            else:
                kept[key] = value
        return kept

    return strip(config, ""), found


def retired_note(found: Mapping[str, Any]) -> Optional[str]:
    """One line naming the retired settings in ``found`` that differ from their former default
    (``auto`` / ``False`` for compile_real / ``True`` for the fused ones) and the speed setting
    that now does the same; None when every one was at its default."""
    defaults = {"real_precision": "auto", "dkkt.precision": "auto", "compile_real": False, "fused_real": True,
                "fused_syn": True}
    changed = {k: v for k, v in found.items() if k in defaults and v != defaults[k]}
    if not changed:
        return None
    hints = []
    for key, value in changed.items():
        if key.endswith("precision"):
            hints.append(f"{key}={value!r}: --precision {value} (or {PRECISION_ENV}={value})")
        elif key == "compile_real":
            hints.append(f"{key}={value!r}: --backend compile (or {BACKEND_ENV}=compile)")
        else:
            hints.append(f"{key}={value!r}: --backend torch (or {BACKEND_ENV}=torch)")
    return ("the checkpoint was written with speed settings that the process-wide switch now sets; to continue "
            "as it ran, set " + "; ".join(hints))
