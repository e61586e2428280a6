"""The fused kernels as torch operations: two autograd Functions and the no-grad bf16 embedding.

- :class:`NormReluPool`: a block's instance norm, ReLU and 2x2 average pooling, one NCHW
  (image, channel) plane at a time in L1, forward and backward (fp32, fp64, or bf16 storage with
  fp32 arithmetic under autocast).
- :class:`FirstBlock`: a ConvNet's first block whole: the 1- or 3-input-channel convolution is
  computed per output plane and recomputed in the backward, so its 128-channel output (the
  largest activation, 8 MiB per 16 images at 32x32) is never stored.
- :class:`EmbeddingPlan`: the no-grad embedding in bf16 (DM's real images): block 1's
  convolution in fp32, each block's norm, ReLU and pooling per image in a channels-last scratch
  buffer that stays in the L2 cache, oneDNN's bf16 convolutions in between. Activations between
  blocks are bf16, as under autocast; block 1 is computed in fp32, so the result is closer to
  the fp32 embedding than autocast's.

torch's ops read and write every activation several times (norm, ReLU, pooling and their
backward, each a pass), and oneDNN runs the first convolution far below its rate: these do each
plane's work in one pass. The Functions give torch's gradients up to float rounding (gradcheck
in float64); under ``create_graph=True`` (double backward) they differentiate torch's ops
instead. Each image or plane is computed the same way whatever the thread count, so results do
not depend on it. Which ConvNet blocks they replace, and when, is :mod:`dkkt_plugin.cpu.blocks`'s
business.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .build import check_status, load_library

_SUFFIX = {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16"}
_ARITH = {torch.float32: torch.float32, torch.float64: torch.float64, torch.bfloat16: torch.float32}


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
        check_status(getattr(lib, f"dkkt_nrp_forward_{_SUFFIX[y.dtype]}")(
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
            grads = iter(torch.autograd.grad(torch_block(y, gamma, beta, ctx.eps), inputs, dout, create_graph=True))
            return (*[next(grads) if want else None for want in wanted], None)
        b, c, h, w = y.shape
        gamma, beta = gamma.detach().contiguous(), beta.detach().contiguous()
        dout = dout.to(y.dtype).contiguous()  # (B, C, H/2, W/2)
        dy = torch.empty_like(y)
        dgamma = torch.empty(b * c, dtype=mean.dtype)  # (B*C,) per-plane shares, summed below
        dbeta = torch.empty(b * c, dtype=mean.dtype)
        check_status(getattr(load_library(), f"dkkt_nrp_backward_{_SUFFIX[y.dtype]}")(
            y.data_ptr(), dout.data_ptr(), b * c, c, h, w, gamma.data_ptr(), beta.data_ptr(),
            mean.data_ptr(), rstd.data_ptr(), dy.data_ptr(), dgamma.data_ptr(), dbeta.data_ptr(),
            torch.get_num_threads()))
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
        check_status(getattr(load_library(), f"dkkt_first_forward_{_SUFFIX[x.dtype]}")(
            x.data_ptr(), n, cin, hin, win, pad, params[0].data_ptr(), params[1].data_ptr(), c,
            params[2].data_ptr(), params[3].data_ptr(), eps, None if bf16 else out.data_ptr(),
            out.data_ptr() if bf16 else None, mean.data_ptr(), rstd.data_ptr(), torch.get_num_threads()))
        ctx.save_for_backward(x, w, b, gamma, beta, mean, rstd)
        ctx.pad, ctx.eps, ctx.out_dtype = pad, eps, out.dtype
        return out

    @staticmethod
    def backward(ctx, dout):
        x, w, b, gamma, beta, mean, rstd = ctx.saved_tensors
        wanted = ctx.needs_input_grad[:5]
        if torch.is_grad_enabled():  # create_graph=True: differentiate torch's ops instead
            inputs = [t for t, want in zip((x, w, b, gamma, beta), wanted) if want]
            out = torch_block(F.conv2d(x, w, b, padding=ctx.pad), gamma, beta, ctx.eps).to(ctx.out_dtype)
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
        check_status(getattr(load_library(), f"dkkt_first_backward_{_SUFFIX[x.dtype]}")(
            x.data_ptr(), dout.data_ptr(), n, cin, hin, win, ctx.pad, params[0].data_ptr(), params[1].data_ptr(),
            c, params[2].data_ptr(), params[3].data_ptr(), mean.data_ptr(), rstd.data_ptr(), ptr(dx), ptr(dw),
            ptr(db), ptr(dgamma), ptr(dbeta), torch.get_num_threads()))
        if not shares:
            return dx, None, None, None, None, None, None, None
        return (dx, dw.sum(0).view_as(w) if wanted[1] else None, db.sum(0) if wanted[2] else None,
                dgamma.sum(0) if wanted[3] else None, dbeta.sum(0) if wanted[4] else None, None, None, None)


def torch_block(y: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> torch.Tensor:
    """The torch ops :class:`NormReluPool` fuses (fp32 arithmetic for bf16 ``y``)."""
    z = F.group_norm(y.float() if y.dtype == torch.bfloat16 else y, y.shape[1], gamma, beta, eps)
    return F.avg_pool2d(F.relu(z), 2).to(y.dtype)


class EmbeddingPlan:
    """The no-grad bf16 embedding of a ConvNet's blocks for their current weights (converted to
    the kernels' layouts once per network draw); calling it embeds one chunk.

    Args:
        blocks: the network's ``(conv, norm, relu, pool)`` blocks in order, as
            :func:`dkkt_plugin.cpu.blocks.find_blocks` matches them (3x3 convolutions with bias
            and square zero padding, instance norms with affine parameters, 2x2 average pooling).

    Shape:
        - Input: ``(B, Cin, Hin, Win)`` fp32; Output: ``(B, feature_dim)`` fp32, in the order of
          ``net.embed`` (NCHW flattened).
    """

    def __init__(self, blocks: Sequence) -> None:
        self.lib = load_library()
        conv = blocks[0].conv
        self.pad = conv.padding[0]
        self.width = conv.out_channels
        self.wt1 = conv.weight.detach().reshape(self.width, -1).t().contiguous()  # (Cin*9, C) tap-major
        self.b1 = conv.bias.detach().contiguous()
        self.norms = [(b.norm.weight.detach().contiguous(), b.norm.bias.detach().contiguous(), b.norm.eps)
                      for b in blocks]
        self.convs = [(b.conv.weight.detach().to(torch.bfloat16).contiguous(memory_format=torch.channels_last),
                       b.conv.bias.detach().to(torch.bfloat16), b.conv.padding) for b in blocks[1:]]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()  # (B, Cin, Hin, Win) fp32
        b, cin, hin, win = x.shape
        threads = torch.get_num_threads()
        h, w = hin + 2 * self.pad - 2, win + 2 * self.pad - 2
        gamma, beta, eps = self.norms[0]
        out = torch.empty(b, self.width, h // 2, w // 2, dtype=torch.bfloat16,
                          memory_format=torch.channels_last)  # (B, C, H/2, W/2), stored NHWC
        check_status(self.lib.dkkt_block1(x.data_ptr(), b, cin, hin, win, self.pad, self.wt1.data_ptr(),
                                          self.b1.data_ptr(), self.width, gamma.data_ptr(), beta.data_ptr(),
                                          eps, out.data_ptr(), threads))
        for (weight, bias, padding), (gamma, beta, eps) in zip(self.convs, self.norms[1:]):
            z = F.conv2d(out, weight, bias, padding=padding)  # (B, C, H, W) bf16, channels-last
            z = z.contiguous(memory_format=torch.channels_last)  # (already is, from oneDNN)
            _, c, h, w = z.shape
            out = torch.empty(b, c, h // 2, w // 2, dtype=torch.bfloat16, memory_format=torch.channels_last)
            check_status(self.lib.dkkt_norm_relu_pool(z.data_ptr(), b, h, w, c, gamma.data_ptr(), beta.data_ptr(),
                                                      eps, out.data_ptr(), threads))
        return out.contiguous().flatten(1).float()  # (B, C*H*W) in NCHW order, as net.embed
