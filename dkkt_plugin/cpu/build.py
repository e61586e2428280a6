"""Building and loading the fused kernels (``convnet_fused.c``, beside this file).

The C source is compiled on first use with the system C compiler (``$CC``, else ``cc``) into
``$DKKT_CACHE_DIR`` (default ``~/.cache/dkkt_plugin``), keyed by the source, compiler, flags and
the CPU's instruction-set flags (``-march=native`` code built on one node of a cluster must not
run on an older one sharing the home directory), and loaded with :mod:`ctypes`. When that
fails, :func:`library_error` says why (once per process, as a warning) and the CPU backend steps
aside for torch's ops.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Optional

from ..errors import DkktError

SOURCE = Path(__file__).with_name("convnet_fused.c")
# tried in order: the first that compiles is used (clang on macOS has no -fopenmp: one thread)
FLAG_SETS = (
    ("-O3", "-march=native", "-fopenmp"),
    ("-O3", "-march=native"),
    ("-O3",),
)


class FusedKernelError(DkktError):
    """The fused kernels could not be built, loaded or run."""


_lock = threading.Lock()
_library: Optional[ctypes.CDLL] = None
_error: Optional[str] = None  # why the kernels are unavailable in this process (None: not known to fail)


def cache_dir() -> Path:
    """Where built kernels are kept: ``$DKKT_CACHE_DIR``, else ``~/.cache/dkkt_plugin``."""
    return Path(os.environ.get("DKKT_CACHE_DIR") or Path.home() / ".cache" / "dkkt_plugin")


def load_library() -> ctypes.CDLL:
    """The compiled kernels, built on first use (once per process, cached on disk).

    Raises:
        FusedKernelError: when no flag set compiles (the message has the compiler's output), the
            cache folder cannot be written, or the built file cannot be loaded.
    """
    global _library
    with _lock:
        if _library is None:
            try:
                path = _build()
            except OSError as err:
                raise FusedKernelError(f"cannot build the fused kernels in {cache_dir()} ({err}); "
                                       "set DKKT_CACHE_DIR to a writable folder") from err
            try:
                _library = _bind(ctypes.CDLL(str(path)))
            except OSError as err:
                raise FusedKernelError(f"cannot load {path} ({err}); delete it to rebuild") from err
        return _library


def library_error() -> Optional[str]:
    """None when the kernels load; else the first line of why not. The first failure in a
    process warns once (RuntimeWarning, naming the error) and is remembered: later calls return
    it without trying again."""
    global _error
    if _error is None and _library is None:
        try:
            load_library()
        except FusedKernelError as err:
            _error = f"the fused kernels are unavailable ({str(err).splitlines()[0]})"
            warnings.warn(f"{_error}; the CPU backend runs torch's ops instead", RuntimeWarning, stacklevel=3)
    return _error


def forget_error() -> None:
    """Forget a remembered build failure, so the next :func:`library_error` tries again."""
    global _error
    _error = None


def check_status(status: int) -> None:
    """FusedKernelError for a kernel's non-zero status (its scratch buffers could not be allocated)."""
    if status != 0:
        raise FusedKernelError("fused ConvNet kernel could not allocate its scratch buffers (out of memory)")


def _cpu_identity() -> bytes:
    """The CPU's instruction-set flags (Linux), else its architecture and name."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):  # x86, ARM
                    return line.encode()
    except OSError:
        pass
    return (platform.machine() + platform.processor()).encode()


def _build() -> Path:
    cc = os.environ.get("CC") or "cc"
    source, cpu = SOURCE.read_bytes(), _cpu_identity()
    errors = []
    for flags in FLAG_SETS:
        parts = [source, cc.encode(), " ".join(flags).encode(), cpu]
        key = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
        target = cache_dir() / f"convnet_fused-{key}.so"
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        cmd = [cc, *flags, "-shared", "-fPIC", str(SOURCE), "-o", tmp, "-lm"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as err:
            done = None
            errors.append(f"{' '.join(cmd)}: {err}")
        if done is not None and done.returncode == 0:
            os.replace(tmp, target)  # atomic: concurrent processes never load a half-written file
            return target
        if done is not None:
            errors.append(f"{' '.join(cmd)}: {done.stderr.strip()[-500:]}")
        Path(tmp).unlink(missing_ok=True)
    raise FusedKernelError("could not compile " + str(SOURCE) + " (set CC to a C compiler):\n" + "\n".join(errors))


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    lib.dkkt_block1.argtypes = [p, i, i, i, i, i, p, p, i, p, p, f, p, i]
    lib.dkkt_block1.restype = i
    lib.dkkt_norm_relu_pool.argtypes = [p, i, i, i, i, p, p, f, p, i]
    lib.dkkt_norm_relu_pool.restype = i
    for suffix, a in (("f32", f), ("f64", ctypes.c_double), ("bf16", f)):
        fwd, bwd = getattr(lib, f"dkkt_nrp_forward_{suffix}"), getattr(lib, f"dkkt_nrp_backward_{suffix}")
        fwd.argtypes = [p, i, i, i, i, p, p, a, p, p, p, i]
        bwd.argtypes = [p, p, i, i, i, i, p, p, p, p, p, p, p, i]
        fwd.restype = bwd.restype = i
    for suffix, a in (("f32", f), ("f64", ctypes.c_double)):
        fwd, bwd = getattr(lib, f"dkkt_first_forward_{suffix}"), getattr(lib, f"dkkt_first_backward_{suffix}")
        fwd.argtypes = [p, i, i, i, i, i, p, p, i, p, p, a, p, p, p, p, i]
        bwd.argtypes = [p, p, i, i, i, i, i, p, p, i, p, p, p, p, p, p, p, p, p, i]
        fwd.restype = bwd.restype = i
    return lib
