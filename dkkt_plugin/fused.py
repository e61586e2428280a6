"""Fused CPU kernels for :class:`dkkt_plugin.nets.ConvNet` (instance norm, ReLU, average pooling).

Two uses, one C source (``csrc/convnet_fused.c``):

1. :class:`FusedEmbed`: the no-grad bf16 embedding of the DM loss's real images (below).
2. :class:`NormReluPool` and :class:`FirstBlock`: autograd Functions for every pass that needs a
   backward (DM's synthetic images, the DKKT term's edge model, evaluation training), turned on
   by :func:`dkkt_plugin.nets.fused_blocks` (:func:`fused_features`). ``NormReluPool`` does a
   block's instance norm, ReLU and 2x2 pooling one NCHW (image, channel) plane at a time in L1,
   forward and backward (fp32, fp64, or bf16 storage with fp32 arithmetic under autocast);
   ``FirstBlock`` does block 1 whole: the 1- or 3-input-channel convolution is computed per
   output plane and recomputed in the backward, so its 128-channel output (the largest
   activation, 8 MiB per 16 images at 32x32) is never stored. torch's ops had read and written
   every activation several times (norm, ReLU, pooling and their backward, each a pass), and
   oneDNN ran the first convolution far below its rate. The same gradients up to float
   rounding (``tests/test_fused.py``: gradcheck in float64, torch's gradients in fp32 and
   under autocast); under ``create_graph=True`` (double backward) they differentiate torch's
   ops instead.

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
:class:`FusedEmbed` and :func:`fused_features` warn once, naming the error, and their callers
fall back to the torch path.

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

import contextlib
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
from torch.utils._python_dispatch import _get_current_dispatch_mode

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


def _loads_or_warns(what: str, instead: str, stacklevel: int) -> bool:
    """Whether the kernels load; if not, a warning names the error and what runs ``instead``
    (``stacklevel`` counted from the caller)."""
    try:
        load_library()
        return True
    except FusedKernelError as err:
        warnings.warn(f"{what} unavailable ({str(err).splitlines()[0]}); {instead}", RuntimeWarning,
                      stacklevel=stacklevel + 1)
        return False


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
        self.failed = not _loads_or_warns("fused ConvNet embedding", "embedding with torch instead", 2)
        return not self.failed

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


# -- instance norm + ReLU + 2x2 average pooling with a backward ---------------------------------

_SUFFIX = {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16"}
_ARITH = {torch.float32: torch.float32, torch.float64: torch.float64, torch.bfloat16: torch.float32}
_grad_failed = False  # the kernels failed to build once in this process: torch from then on


class NormReluPool(torch.autograd.Function):
    """``avg_pool2d(relu(group_norm(y, C, gamma, beta, eps)), 2)`` for a CPU ``(B, C, H, W)``
    tensor with even H and W, forward and backward by the C kernels (one pass per plane in L1).

    ``y`` may be float32, float64 or bfloat16 (arithmetic in fp32, as autocast's group norm;
    the output is bf16 then, which the next bf16 convolution reads unchanged). The backward
    gives the same gradients as torch's ops up to float rounding; asked for a differentiable
    backward (``create_graph=True``: double backward, gradient matching) it recomputes the block
    with torch's ops and differentiates those instead.

    Shape:
        - y: ``(B, C, H, W)``; gamma, beta: ``(C,)`` in fp32 (fp64 for fp64 ``y``).
        - Output: ``(B, C, H/2, W/2)``, ``y``'s dtype.
    """

    @staticmethod
    def forward(ctx, y: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> torch.Tensor:
        lib = load_library()
        y = y.contiguous()
        b, c, h, w = y.shape
        arith = _ARITH[y.dtype]
        out = torch.empty(b, c, h // 2, w // 2, dtype=y.dtype)  # (B, C, H/2, W/2)
        mean = torch.empty(b * c, dtype=arith)  # (B*C,) per plane
        rstd = torch.empty(b * c, dtype=arith)
        g, t = gamma.detach().contiguous(), beta.detach().contiguous()
        _Plan._check(getattr(lib, f"dkkt_nrp_forward_{_SUFFIX[y.dtype]}")(
            y.data_ptr(), b * c, c, h, w, g.data_ptr(), t.data_ptr(), eps, out.data_ptr(),
            mean.data_ptr(), rstd.data_ptr(), torch.get_num_threads()))
        ctx.save_for_backward(y, gamma, beta, mean, rstd)  # gamma, beta attached: double backward
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        y, gamma, beta, mean, rstd = ctx.saved_tensors
        wanted = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph=True: differentiate torch's ops instead
            inputs = [t for t, want in zip((y, gamma, beta), wanted) if want]
            grads = iter(torch.autograd.grad(_block(y, gamma, beta, ctx.eps), inputs, dout, create_graph=True))
            return (*[next(grads) if want else None for want in wanted], None)
        b, c, h, w = y.shape
        gamma, beta = gamma.detach().contiguous(), beta.detach().contiguous()
        dout = dout.to(y.dtype).contiguous()  # (B, C, H/2, W/2)
        dy = torch.empty_like(y)
        dgamma = torch.empty(b * c, dtype=mean.dtype)  # (B*C,) per-plane shares, summed below
        dbeta = torch.empty(b * c, dtype=mean.dtype)
        status = getattr(load_library(), f"dkkt_nrp_backward_{_SUFFIX[y.dtype]}")(
            y.data_ptr(), dout.data_ptr(), b * c, c, h, w, gamma.data_ptr(), beta.data_ptr(),
            mean.data_ptr(), rstd.data_ptr(), dy.data_ptr(), dgamma.data_ptr(), dbeta.data_ptr(),
            torch.get_num_threads())
        _Plan._check(status)
        return (dy if wanted[0] else None, dgamma.view(b, c).sum(0) if wanted[1] else None,
                dbeta.view(b, c).sum(0) if wanted[2] else None, None)


class FirstBlock(torch.autograd.Function):
    """A ConvNet's first block, ``avg_pool2d(relu(group_norm(conv2d(x, w, b, padding=pad), C,
    gamma, beta, eps)), 2)``, for a CPU float32 / float64 ``x`` with a 3x3 kernel, forward and
    backward by the C kernels: each output channel's plane is computed in L1 and never stored
    (the backward recomputes it from ``x``, cheap with 1 or 3 input channels). Gradients as
    torch's up to float rounding; under ``create_graph=True`` torch's ops are differentiated.

    Shape:
        - x: ``(B, Cin, Hin, Win)``; w: ``(C, Cin, 3, 3)``; b, gamma, beta: ``(C,)``, ``x``'s dtype.
        - Output: ``(B, C, H/2, W/2)`` with ``H = Hin + 2 pad - 2`` (even), ``W`` likewise.
    """

    @staticmethod
    def forward(ctx, x, w, b, gamma, beta, pad: int, eps: float, out_dtype: Optional[torch.dtype] = None):
        x = x.contiguous()
        n, cin, hin, win = x.shape
        c, h, wd = w.shape[0], hin + 2 * pad - 2, win + 2 * pad - 2
        bf16 = out_dtype == torch.bfloat16 and x.dtype == torch.float32
        out = torch.empty(n, c, h // 2, wd // 2, dtype=torch.bfloat16 if bf16 else x.dtype)  # (B, C, H/2, W/2)
        mean = torch.empty(n, c, dtype=x.dtype)
        rstd = torch.empty(n, c, dtype=x.dtype)
        params = [t.detach().contiguous() for t in (w, b, gamma, beta)]
        status = getattr(load_library(), f"dkkt_first_forward_{_SUFFIX[x.dtype]}")(
            x.data_ptr(), n, cin, hin, win, pad, params[0].data_ptr(), params[1].data_ptr(), c,
            params[2].data_ptr(), params[3].data_ptr(), eps, None if bf16 else out.data_ptr(),
            out.data_ptr() if bf16 else None, mean.data_ptr(), rstd.data_ptr(), torch.get_num_threads())
        _Plan._check(status)
        ctx.save_for_backward(x, w, b, gamma, beta, mean, rstd)
        ctx.pad, ctx.eps, ctx.out_dtype = pad, eps, out.dtype
        return out

    @staticmethod
    def backward(ctx, dout):
        x, w, b, gamma, beta, mean, rstd = ctx.saved_tensors
        wanted = ctx.needs_input_grad[:5]
        if torch.is_grad_enabled():  # create_graph=True: differentiate torch's ops instead
            inputs = [t for t, want in zip((x, w, b, gamma, beta), wanted) if want]
            out = _block(F.conv2d(x, w, b, padding=ctx.pad), gamma, beta, ctx.eps).to(ctx.out_dtype)
            grads = iter(torch.autograd.grad(out, inputs, dout, create_graph=True))
            return (*[next(grads) if want else None for want in wanted], None, None, None)
        n, cin, hin, win = x.shape
        c = w.shape[0]
        dout = dout.to(x.dtype).contiguous()  # (B, C, H/2, W/2)
        params = [t.detach().contiguous() for t in (w, b, gamma, beta)]
        dx = torch.empty_like(x) if wanted[0] else None
        shares = any(wanted[1:])
        dw = torch.empty(n, c, cin * 9, dtype=x.dtype) if shares else None  # (B, C, Cin*9) per image
        db, dgamma, dbeta = (torch.empty(n, c, dtype=x.dtype) if shares else None for _ in range(3))
        ptr = lambda t: t.data_ptr() if t is not None else None  # noqa: E731
        status = getattr(load_library(), f"dkkt_first_backward_{_SUFFIX[x.dtype]}")(
            x.data_ptr(), dout.data_ptr(), n, cin, hin, win, ctx.pad, params[0].data_ptr(), params[1].data_ptr(),
            c, params[2].data_ptr(), params[3].data_ptr(), mean.data_ptr(), rstd.data_ptr(), ptr(dx), ptr(dw),
            ptr(db), ptr(dgamma), ptr(dbeta), torch.get_num_threads())
        _Plan._check(status)
        if not shares:
            return dx, None, None, None, None, None, None, None
        return (dx, dw.sum(0).view_as(w) if wanted[1] else None, db.sum(0) if wanted[2] else None,
                dgamma.sum(0) if wanted[3] else None, dbeta.sum(0) if wanted[4] else None, None, None, None)


def _block(y: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> torch.Tensor:
    """The torch ops :class:`NormReluPool` fuses (fp32 arithmetic for bf16 ``y``)."""
    z = F.group_norm(y.float() if y.dtype == torch.bfloat16 else y, y.shape[1], gamma, beta, eps)
    return F.avg_pool2d(F.relu(z), 2).to(y.dtype)


def fused_features(net: ConvNet, x: torch.Tensor) -> Optional[torch.Tensor]:
    """``net.features(x)`` with block 1 as :class:`FirstBlock` and every later block's norm, ReLU
    and pooling as :class:`NormReluPool` where they apply: a CPU tensor of float32, float64 or (under autocast) bfloat16, even height
    and width, ReLUs not patched (``soft_relu_backward``), outside ``torch.compile``, functorch
    transforms and dispatch modes. A block where it does not apply runs torch's ops.

    Returns ``None`` (the caller runs torch's path) where nothing applies or the kernels cannot
    be built (a warning says so, once per process).
    """
    global _grad_failed
    if (_grad_failed or x.device.type != "cpu" or type(x) not in (torch.Tensor, nn.Parameter)  # no subclasses
            or torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()
            or _get_current_dispatch_mode() is not None):
        return None
    if not _loads_or_warns("fused ConvNet blocks", "running torch's ops instead", 3):  # embed()'s caller
        _grad_failed = True
        return None
    feats = list(net.features)
    h = x
    for i in range(0, len(feats), 4):
        conv, norm, relu, pool = feats[i:i + 4]  # ConvNet with instance norm and average pooling
        first_fp32 = i == 0 and net.first_conv_fp32(x)  # as embed(): fp32 under autocast
        if first_fp32:
            h = h.float()
        if i == 0 and _first_block_fits(conv, norm, relu, h):
            # under autocast, bf16 output: what the next convolution would cast it to
            out_dtype = torch.bfloat16 if first_fp32 and torch.get_autocast_dtype("cpu") == torch.bfloat16 else None
            h = FirstBlock.apply(h, conv.weight, conv.bias, norm.weight, norm.bias, conv.padding[0], norm.eps,
                                 out_dtype)
            continue  # (B, C, H/2, W/2)
        with torch.autocast("cpu", enabled=False) if first_fp32 else contextlib.nullcontext():
            h = conv(h)  # (B, C, H, W)
        if (h.dtype in _SUFFIX and h.shape[-2] % 2 == 0 and h.shape[-1] % 2 == 0 and "forward" not in vars(relu)
                and norm.weight is not None and norm.weight.dtype == norm.bias.dtype == _ARITH[h.dtype]):
            h = NormReluPool.apply(h, norm.weight, norm.bias, norm.eps)  # (B, C, H/2, W/2)
        else:
            h = pool(relu(norm(h)))
    return h


def _first_block_fits(conv: nn.Conv2d, norm: nn.Module, relu: nn.Module, x: torch.Tensor) -> bool:
    """Whether :class:`FirstBlock` computes this block for ``x``."""
    pad = conv.padding
    return (x.dtype in (torch.float32, torch.float64) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and isinstance(pad, tuple) and pad[0] == pad[1]
            and conv.padding_mode == "zeros" and conv.bias is not None and "forward" not in vars(relu)
            and (x.shape[-2] + 2 * pad[0]) % 2 == 0 and (x.shape[-1] + 2 * pad[1]) % 2 == 0
            and all(t is not None and t.dtype == x.dtype for t in (conv.weight, conv.bias, norm.weight, norm.bias))
            and (not torch.is_autocast_enabled("cpu") or torch.is_grad_enabled()))  # embed(): fp32 then
