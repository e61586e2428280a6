"""Where and how a result was made: the device resolver and one provenance record.

Every file that stores a number (a run's record, an evaluation, an edge model, a benchmark
line) carries :func:`provenance`: versions, machine, threads, device, date and command. Devices
named ``auto`` are resolved in one place, :func:`resolve_device`, which also turns a device that
does not exist here into a clear :class:`~dkkt_plugin.errors.ConfigError`.

Example:
    >>> resolve_device("cpu")
    'cpu'
    >>> sorted(provenance(command="dkkt demo", device="cpu"))
    ['command', 'date', 'device', 'machine', 'versions']
"""
from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path
from typing import Any, Optional

import torch

from . import __version__
from .errors import ConfigError


def resolve_device(name: Any = "auto") -> str:
    """``auto`` -> ``cuda`` (``cuda:$LOCAL_RANK`` under torchrun) when CUDA is available, else
    ``cpu``; any other name is checked: it must parse as a torch device that exists here."""
    text = str(name if name is not None else "auto").strip()
    if text == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        rank = os.environ.get("LOCAL_RANK")
        return f"cuda:{rank}" if rank is not None else "cuda"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {text!r} is not a device name; use cpu, cuda, cuda:1, mps or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {text}: CUDA is not available on this machine (torch "
                              f"{torch.__version__}); use --device cpu, or install a CUDA build of torch")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"--device {text}: MPS is not available on this machine; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {text}: unsupported device type {device.type!r}; use cpu, cuda or mps")
    return text


def machine_info() -> dict[str, Any]:
    """Processor, cores, torch threads and GPU (if any) of this machine."""
    info = {"platform": platform.platform(), "processor": cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "host": platform.node()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def cpu_model() -> str:
    """``model name`` of /proc/cpuinfo with its family/model numbers and the bf16-relevant flags
    (a VM may name its CPU only "AMD EPYC"; family 26 is Zen 5, 25 Zen 3/4)."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        flags = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in info.get("flags", "").split()]
        return (f"{info.get('model name', '?')} (family {info.get('cpu family', '?')}, model {info.get('model', '?')}; "
                f"{' '.join(flags) or 'no avx512'})")
    except (OSError, ValueError):
        return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    return {"torch": str(torch.__version__), "dkkt_plugin": __version__, "python": platform.python_version()}


def provenance(*, command: str = "", device: Optional[Any] = None) -> dict[str, Any]:
    """One record of where a result was made (stored beside every number the package writes)."""
    return {"command": command, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "device": str(device) if device is not None else None, "versions": versions(),
            "machine": machine_info()}
