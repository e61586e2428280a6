"""Where and how a result was made: the device resolver and one provenance record.

Every file that stores a number (a run's record, an evaluation, an edge model, a benchmark
line) carries :func:`provenance`: versions, machine, threads, device, date and command. Devices
named ``auto`` are resolved in one place, :func:`resolve_device`, which also turns a device that
does not exist here into a clear :class:`~dkkt_plugin.errors.ConfigError`. The intra-op thread
count of a command is chosen in one place too, :func:`choose_threads` (``--threads``, then
``DKKT_THREADS``, then ``OMP_NUM_THREADS``, else min(cores, physical cores)); :func:`use_threads`
sets it, and :func:`resolved_threads` says what is in force for a run's record.

Example:
    >>> resolve_device("cpu")
    'cpu'
    >>> sorted(provenance(command="dkkt demo", device="cpu"))
    ['command', 'date', 'device', 'machine', 'versions']
"""
from __future__ import annotations

import contextlib
import datetime
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

from . import __version__
from .errors import ConfigError


def resolve_device(name: Any = "auto") -> str:
    """``auto`` -> ``cuda`` (``cuda:$LOCAL_RANK`` under torchrun) when CUDA is available, else
    ``cpu``; any other name is checked: it must parse as a torch device that exists here."""
    import torch

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
    import torch

    info = {"platform": platform.platform(), "processor": cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "host": platform.node()}
    if _THREADS is not None:  # chosen by use_threads: say how
        info["threads_source"] = _THREADS.source
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
    import torch

    return {"torch": str(torch.__version__), "dkkt_plugin": __version__, "python": platform.python_version()}


def provenance(*, command: str = "", device: Optional[Any] = None) -> dict[str, Any]:
    """One record of where a result was made (stored beside every number the package writes)."""
    return {"command": command, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "device": str(device) if device is not None else None, "versions": versions(),
            "machine": machine_info()}


# -- threads -------------------------------------------------------------------------------------
THREADS_ENV = "DKKT_THREADS"


@dataclass(frozen=True)
class ThreadChoice:
    """The intra-op thread count a command runs with, and where it came from."""

    threads: int  # torch.set_num_threads(threads)
    source: str  # "--threads", "DKKT_THREADS", "OMP_NUM_THREADS" or "default" (min(cores, physical cores))
    cores: int  # the cores this process may run on
    physical_cores: int  # physical cores of the machine (psutil; the core count without it)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS says, else all)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def physical_cores() -> int:
    """Physical cores of the machine (hyper-threads not counted) when psutil is installed, else
    the number of logical cores."""
    try:
        import psutil
    except ImportError:
        return os.cpu_count() or 1
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def _positive(value: Any, where: str) -> int:
    """``value`` as a positive int; a ConfigError naming ``where`` (``--threads`` or a variable)."""
    try:
        number = int(str(value).strip())
    except ValueError:
        number = 0
    if number < 1:
        if where.startswith("--"):
            raise ConfigError(f"{where} must be a positive number of threads, got {value!r} (e.g. {where} 2)")
        raise ConfigError(f"{where}={value!r} is not a positive number of threads; set e.g. {where}=2, or unset it")
    return number


def choose_threads(requested: Optional[int] = None, environ: Mapping[str, str] = os.environ) -> ThreadChoice:
    """The thread count to run with: ``requested`` (``--threads``), else ``$DKKT_THREADS``, else
    ``$OMP_NUM_THREADS``, else min(cores, physical cores). Reads no torch state.

    Example:
        >>> choose_threads(3, environ={}).threads, choose_threads(None, environ={"DKKT_THREADS": "2"}).source
        (3, 'DKKT_THREADS')
        >>> choose_threads(None, environ={}).threads == min(available_cores(), physical_cores())
        True
    """
    cores, physical = available_cores(), physical_cores()
    if requested is not None:
        return ThreadChoice(_positive(requested, "--threads"), "--threads", cores, physical)
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        text = environ.get(name, "").strip()
        if text:
            return ThreadChoice(_positive(text, name), name, cores, physical)
    return ThreadChoice(max(1, min(cores, physical)), "default", cores, physical)


def busy_note(choice: ThreadChoice, load: Optional[float] = None) -> Optional[str]:
    """One line when other work keeps the machine busy (1-minute load average above the cores
    minus the one this process needs), saying what this run will use; None otherwise.

    Example:
        >>> busy_note(ThreadChoice(2, "default", 2, 2), load=1.7)
        'dkkt: the machine is busy (load average 1.70 on 2 cores): this run uses 2 threads (default); --threads 1 or DKKT_THREADS=1 may be faster while the other work runs'
        >>> busy_note(ThreadChoice(2, "default", 2, 2), load=0.3) is None
        True
    """
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average on this OS
            return None
    if load <= choice.cores - 1:
        return None
    plural = "s" if choice.threads != 1 else ""
    line = (f"dkkt: the machine is busy (load average {load:.2f} on {choice.cores} cores): this run uses "
            f"{choice.threads} thread{plural} ({choice.source})")
    if choice.threads > 1:
        line += f"; --threads 1 or {THREADS_ENV}=1 may be faster while the other work runs"
    return line


_THREADS: Optional[ThreadChoice] = None  # set by use_threads while a command runs


@contextlib.contextmanager
def use_threads(requested: Optional[int] = None, *, echo: Optional[Callable[[str], Any]] = print
                ) -> Iterator[ThreadChoice]:
    """Run the body with torch's intra-op threads set by :func:`choose_threads` (and, when the
    machine is busy, :func:`busy_note` passed to ``echo``); the previous count is restored after.

    Example:
        >>> import torch
        >>> with use_threads(1, echo=None) as choice:
        ...     torch.get_num_threads(), resolved_threads(), choice.source
        (1, 1, '--threads')
    """
    global _THREADS
    import torch

    choice = choose_threads(requested)
    note = busy_note(choice)
    if note and echo is not None:
        echo(note)
    before, before_choice = torch.get_num_threads(), _THREADS
    torch.set_num_threads(choice.threads)
    _THREADS = choice
    try:
        yield choice
    finally:
        torch.set_num_threads(before)
        _THREADS = before_choice


def resolved_threads() -> int:
    """The intra-op thread count in force: the one :func:`use_threads` set for the running
    command, else torch's own (``torch.get_num_threads()``)."""
    if _THREADS is not None:
        return _THREADS.threads
    import torch

    return torch.get_num_threads()
