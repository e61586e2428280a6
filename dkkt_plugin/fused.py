"""Fused CPU kernels for a ConvNet's no-grad bf16 embedding (the DM loss's real images).

Under bf16 autocast the CPU spends much of a ConvNet embedding outside the 128-channel
convolutions: oneDNN runs the one- or three-input-channel first convolution at a small fraction
of its peak, and each instance norm, ReLU and pooling reads and writes the block's activations
several times (torch.compile fuses them into one kernel, but still streams the whole chunk
through it in several passes). ``csrc/convnet_fused.c`` does each image's work in one thread,
in a channels-last scratch buffer that stays in the L2 cache:

- block 1: the first convolution (fp32), the instance norm's mean and variance (two passes over
  the buffer), then normalise, affine, ReLU and 2x2 average pooling in one pass writing bf16;
- later blocks: oneDNN's bf16 convolution (channels-last, fp32 accumulation), then the same
  norm / ReLU / pooling pass.

Activations between blocks are bf16, as under autocast; block 1 is computed in fp32, so the
result is closer to the fp32 embedding than autocast's (``tests/test_fused.py`` bounds both).
Each image is computed the same way whatever the thread count, so results do not depend on it.

The C source is compiled on first use with the system C compiler (``$CC``, else ``cc``) into
``$DKKT_CACHE_DIR`` (default ``~/.cache/dkkt_plugin``), keyed by the source, compiler, flags and
the CPU's instruction-set flags (``-march=native`` code built on one node of a cluster must not
run on an older one sharing the home directory), and loaded with :mod:`ctypes`. If that fails,
:class:`FusedEmbed` warns once, naming the error, and its callers fall back to the torch path.

Example:
    >>> from dkkt_plugin.nets import ConvNet
    >>> net = ConvNet(channels=1, num_classes=10, image_size=28, width=16)
    >>> embed, x = FusedEmbed(), torch.randn(4, 1, 28, 28)
    >>> with torch.no_grad():
    ...     features = embed.prepare(net)(x) if embed.applies(net, x) else net.embed(x)
    >>> features.shape  # like net.embed(x): (B, width * 4 * 4)
    torch.Size([4, 256])
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
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .errors import DkktError
from .nets import ConvNet

SOURCE = Path(__file__).with_name("csrc") / "convnet_fused.c"
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
    return lib


class FusedEmbed:
    """The fused embedding where it applies, with a warn-once fallback.

    Args:
        enabled: ``False`` never applies (the torch path always runs).

    A caller checks :meth:`applies`, then embeds chunks with the function :meth:`prepare`
    returns (weights converted once per network draw). If building the kernels fails,
    :meth:`applies` warns once and returns ``False`` from then on.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.failed = False

    def applies(self, net: nn.Module, x: torch.Tensor) -> bool:
        """Whether ``net.embed(x)`` can run fused: a CPU fp32 ConvNet with instance norm and
        average pooling, fp32 images, gradients off, and the kernels built."""
        if not (self.enabled and not self.failed and isinstance(net, ConvNet) and x.device.type == "cpu"
                and x.dtype == torch.float32 and x.dim() == 4 and not torch.is_grad_enabled()
                and net.config["norm"] == "instancenorm" and net.config["pooling"] == "avg"
                and net.classifier.weight.device.type == "cpu"
                and net.classifier.weight.dtype == torch.float32):
            return False
        try:
            load_library()
        except FusedKernelError as err:
            warnings.warn(f"fused ConvNet embedding unavailable ({str(err).splitlines()[0]}); "
                          "embedding with torch instead", RuntimeWarning, stacklevel=2)
            self.failed = True
            return False
        return True

    def prepare(self, net: ConvNet) -> Callable[[torch.Tensor], torch.Tensor]:
        """A function ``x (B, C, H, W) fp32 -> (B, feature_dim) fp32`` for ``net``'s current weights."""
        return _Plan(net, load_library())


class _Plan:
    """``net``'s weights in the kernels' layouts; calling it embeds one chunk."""

    def __init__(self, net: ConvNet, lib: ctypes.CDLL) -> None:
        self.lib = lib
        feats = list(net.features)
        blocks = [feats[i:i + 4] for i in range(0, len(feats), 4)]  # conv, norm, relu, pool
        conv = blocks[0][0]
        self.pad = conv.padding[0]
        self.width = conv.out_channels
        self.wt1 = conv.weight.detach().reshape(self.width, -1).t().contiguous()  # (Cin*9, C) tap-major
        self.b1 = conv.bias.detach().contiguous()
        self.norms = [(b[1].weight.detach().contiguous(), b[1].bias.detach().contiguous(), b[1].eps)
                      for b in blocks]
        self.convs = [(b[0].weight.detach().to(torch.bfloat16).contiguous(memory_format=torch.channels_last),
                       b[0].bias.detach().to(torch.bfloat16), b[0].padding) for b in blocks[1:]]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()  # (B, Cin, Hin, Win) fp32
        b, cin, hin, win = x.shape
        threads = torch.get_num_threads()
        h, w = hin + 2 * self.pad - 2, win + 2 * self.pad - 2
        gamma, beta, eps = self.norms[0]
        out = torch.empty(b, self.width, h // 2, w // 2, dtype=torch.bfloat16,
                          memory_format=torch.channels_last)  # (B, C, H/2, W/2), stored NHWC
        self._check(self.lib.dkkt_block1(x.data_ptr(), b, cin, hin, win, self.pad, self.wt1.data_ptr(),
                                         self.b1.data_ptr(), self.width, gamma.data_ptr(), beta.data_ptr(),
                                         eps, out.data_ptr(), threads))
        for (weight, bias, padding), (gamma, beta, eps) in zip(self.convs, self.norms[1:]):
            z = F.conv2d(out, weight, bias, padding=padding)  # (B, C, H, W) bf16, channels-last
            z = z.contiguous(memory_format=torch.channels_last)  # (already is, from oneDNN)
            _, c, h, w = z.shape
            out = torch.empty(b, c, h // 2, w // 2, dtype=torch.bfloat16, memory_format=torch.channels_last)
            self._check(self.lib.dkkt_norm_relu_pool(z.data_ptr(), b, h, w, c, gamma.data_ptr(), beta.data_ptr(),
                                                     eps, out.data_ptr(), threads))
        return out.contiguous().flatten(1).float()  # (B, C*H*W) in NCHW order, as net.embed

    @staticmethod
    def _check(status: int) -> None:
        if status != 0:
            raise FusedKernelError("fused ConvNet kernel could not allocate its scratch buffers (out of memory)")
