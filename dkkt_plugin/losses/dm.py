"""Distribution matching (DM): classwise MMD of mean embeddings through a random network.

    L_DM = Σ_c ‖ mean_{x∈R_c} φ(A_c(x)) − mean_{s∈S_c} φ(A_c(s)) ‖²

with ``φ`` the embedding of a freshly initialised network each step (or a pretrained one for
DM*), and ``A_c`` one Siamese augmentation draw shared by class c's real and synthetic images.

All classes are augmented together, then embedded in chunks of ``chunk_size`` images (the real
batch without autograd: it is a constant); class means come from ``index_add``. With a
per-sample network (instance norm, eval-mode batch norm) this equals the per-class loop of the
reference code. On the CPU, chunks of ``nets.CPU_CHUNK`` (16) images keep each layer's
activations in the caches (``nets.default_chunk_size``).

The real embedding needs no gradient and only its class means, so by default it runs in bf16
(autocast) where the hardware computes bf16 natively (CUDA, CPUs with AVX-512 BF16 or AMX); the
class sums stay fp32. ``real_precision="fp32"`` gives the exact fp32 loss. At width 128 bf16
changed the loss by ~1e-4 and its image gradient by ~4e-3 (relative; ``tests/losses/test_dm.py``
bounds them at 1e-3 and 2e-2).

On the CPU a bf16 real embedding through :class:`dkkt_plugin.nets.ConvNet` (instance norm, average
pooling) runs by default through the package's fused kernels (``fused_real=True``,
:mod:`dkkt_plugin.fused`): block 1's convolution (fp32), each block's norm, ReLU and pooling per
image in the L2 cache, oneDNN's bf16 convolutions in between; on our CPU a DM step at ipc 10 took
0.49-0.56x the autocast path's time and 0.64-0.73x the compiled path's (sitting 6's grid of
``benchmarks/results/speed-cpu``, in git history at commit 541fdb0), with no compile step. It
needs a C compiler on first use (built once, then cached); if building fails a warning says so
and the torch path runs.

The synthetic images' forward and backward run with each ConvNet block fused by default
(``fused_syn=True``, :func:`dkkt_plugin.nets.fused_blocks`; the same gradient up to float
rounding): at ipc 50 (500 synthetic images) that pass is most of a DM step on the CPU.

``compile_real=True`` (opt-in) runs that real embedding through ``torch.compile`` (inductor fuses
each block's norm, ReLU and pooling): on our CPU about a third off a DM step, after a one-off
compile of 8–30 s per process that needs a C++ compiler. Chunks keep one static shape (the last
is zero-padded and its padding dropped), so it compiles once. torch.compile caches per code
object: once a ``compile_real`` loss has run under a dispatch mode (e.g. ``FlopCounterMode``), the
compiled path runs eagerly for every later instance in that process (measured: that is what made
an earlier benchmark of this option look inconsistent, ``benchmarks/results/speed-cpu``). The
generated CPU kernels also keep the thread count they were compiled under (compiled under one
thread they never parallelise): set ``torch.set_num_threads`` before the first step.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..compiled import StaticCompiled
from ..errors import ConfigError
from ..fused import FusedEmbed
from ..nets import BF16_PRECISIONS as PRECISIONS, check_input, default_chunk_size, fused_blocks, runs_bf16
from .dkkt import check_labels




class DMLoss(nn.Module):
    """Classwise mean-embedding MMD between real and synthetic images.

    Args:
        net: embedding network; ``net.embed(x)`` is used when present, else ``net(x)``. Its
            parameters are never trained here.
        augment: Siamese augmentation with ``sample(num_groups)`` and ``(x, draw, groups)``,
            e.g. :class:`dkkt_plugin.augment.DSA`; ``None`` for no augmentation.
        reinit: draw fresh weights for ``net`` at every call (DM); ``False`` keeps ``net`` (DM*).
        generator: the random source of re-initialisation (seeded with 0 if omitted).
        batched: all classes together, embedded in chunks (``True``), or the reference per-class
            loop (one real and one synthetic forward per class, always fp32).
        real_precision: precision of the real images' embedding in the batched path: ``"fp32"``
            (exact), ``"bf16"`` (bf16 activations: the fused kernels or autocast; class sums in
            fp32) or ``"auto"``: bf16 on CUDA and on CPUs with native bf16 dot products, else
            fp32. Only float32 inputs are affected.
        chunk_size: images per forward in the batched path; ``None``:
            ``nets.default_chunk_size`` (16 on the CPU, the whole batch on GPUs).
        compile_real: embed the real images through ``torch.compile`` (batched path; see the
            module notes). If compiling fails, a warning names the error and the eager path runs.
        fused_real: on the CPU, embed the real images with :mod:`dkkt_plugin.fused`'s kernels
            where they apply (batched path, bf16 precision, a ConvNet with instance norm and
            average pooling); they take precedence over ``compile_real``. ``False``: torch only.
        fused_syn: on the CPU, run the synthetic images' forward and backward through a ConvNet
            with each block's norm, ReLU and pooling fused (:func:`dkkt_plugin.nets.fused_blocks`;
            the same gradients up to float rounding). ``False``: torch only.

    Shape:
        - real: ``(R, C, H, W)`` with real_labels ``(R,)``; syn: ``(S, C, H, W)`` with syn_labels ``(S,)``.
        - Output: scalar.

    Raises:
        ConfigError: when called with images whose channels or size do not fit ``net``, real and
            synthetic images of different shapes, or labels that are not integers, not one per
            image, or of a class without real images (the message names the shapes).

    Example:
        >>> from dkkt_plugin.nets import ConvNet
        >>> dm = DMLoss(ConvNet(channels=1, num_classes=2, image_size=28, width=8))
        >>> real, syn = torch.randn(8, 1, 28, 28), torch.zeros(2, 1, 28, 28, requires_grad=True)
        >>> loss = dm(real, torch.tensor([0, 1] * 4), syn, torch.tensor([0, 1]))
        >>> loss.backward(); syn.grad.shape
        torch.Size([2, 1, 28, 28])
    """

    def __init__(self, net: nn.Module, *, augment: Optional[nn.Module] = None, reinit: bool = True,
                 generator: Optional[torch.Generator] = None, batched: bool = True,
                 real_precision: str = "auto", chunk_size: Optional[int] = None,
                 compile_real: bool = False, fused_real: bool = True, fused_syn: bool = True) -> None:
        super().__init__()
        if reinit and not hasattr(net, "reset_parameters"):
            raise ConfigError(
                f"DMLoss(reinit=True) needs a network with reset_parameters(generator), such as "
                f"dkkt_plugin.nets.ConvNet; {type(net).__name__} has none (or pass reinit=False)"
            )
        if real_precision not in PRECISIONS:
            raise ConfigError(f"DMLoss real_precision={real_precision!r}; choose one of {PRECISIONS}")
        if chunk_size is not None and chunk_size < 1:
            raise ConfigError(f"DMLoss chunk_size must be >= 1 or None, got {chunk_size}")
        self.net = net.requires_grad_(False)
        self.augment = augment
        self.reinit = reinit
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.batched = batched
        self.real_precision = real_precision
        self.chunk_size = chunk_size
        self.compile_real = compile_real
        self._fused = FusedEmbed(enabled=fused_real)
        self.fused_syn = fused_syn
        self._embed_real = StaticCompiled(self._embed, "DMLoss(compile_real=True)",
                                          "embedding the real images eagerly instead", enabled=compile_real)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.embed(x) if hasattr(self.net, "embed") else self.net(x)

    def forward(self, real: torch.Tensor, real_labels: torch.Tensor,
                syn: torch.Tensor, syn_labels: torch.Tensor) -> torch.Tensor:
        if real.ndim != 4 or syn.ndim != 4 or real.shape[1:] != syn.shape[1:]:
            raise ConfigError(f"real and synthetic images must be (N, C, H, W) alike; got "
                              f"{tuple(real.shape)} and {tuple(syn.shape)}")
        check_input(self.net, syn, "DMLoss")
        check_labels(real_labels, real, "real_labels")
        check_labels(syn_labels, syn, "syn_labels")
        classes = syn_labels.unique()  # (K,) sorted
        r_idx = torch.searchsorted(classes, real_labels)  # (R,) group of each real image
        s_idx = torch.searchsorted(classes, syn_labels)  # (S,)
        missing = set(classes.tolist()) - set(real_labels.tolist())
        if missing:
            raise ConfigError(f"no real images for synthetic classes {sorted(missing)}: DM needs "
                              "real images of every class it distils")
        if self.reinit:
            self.net.reset_parameters(self.generator)
        k = classes.numel()
        draw = self.augment.sample(k, device=syn.device) if self.augment is not None else None
        if self.batched and getattr(self.net, "per_sample", True):
            return self._batched(real, r_idx, syn, s_idx, k, draw)
        return self._per_class(real, r_idx, syn, s_idx, k, draw)

    def _aug(self, x: torch.Tensor, groups: torch.Tensor, draw) -> torch.Tensor:
        return x if draw is None else self.augment(x, draw, groups)

    def _batched(self, real, r_idx, syn, s_idx, k, draw) -> torch.Tensor:
        chunk = self._chunk(syn.device)
        with torch.no_grad():
            xr = self._aug(real, r_idx, draw)  # (R, C, H, W), all classes in one DSA call
            bf16 = self.uses_bf16(xr)
            fused = self._fused.prepare(self.net) if bf16 and self._fused.applies(self.net, xr) else None
            sums = None
            pad = chunk if chunk < xr.shape[0] else None  # several chunks: pad the last to one shape
            for xc, ic in zip(xr.split(chunk), r_idx.split(chunk)):
                if fused is not None:
                    ec = fused(xc)  # (chunk, D) fp32
                else:
                    with torch.autocast(xr.device.type, dtype=torch.bfloat16, enabled=bf16):
                        ec = self._embed_real(xc, pad_to=pad)  # (chunk, D), fp32 or bf16
                if sums is None:
                    sums = torch.zeros(k, ec.shape[1], device=ec.device, dtype=xr.dtype)  # (K, D)
                sums.index_add_(0, ic, ec.to(xr.dtype))
            mr = sums / _counts(r_idx, k, sums)  # (K, D)
        xs = self._aug(syn, s_idx, draw)  # (S, C, H, W)
        with fused_blocks(self.fused_syn):
            es = torch.cat([self._embed(xc) for xc in xs.split(chunk)])  # (S, D)
        ms = es.new_zeros(k, es.shape[1]).index_add(0, s_idx, es) / _counts(s_idx, k, es)  # (K, D)
        return (mr - ms).pow(2).sum()

    def uses_bf16(self, x: torch.Tensor) -> bool:
        """Whether the real embedding of ``x`` runs in bf16 under this loss's ``real_precision``."""
        return runs_bf16(self.real_precision, x)

    def _chunk(self, device: torch.device) -> int:
        if self.chunk_size is not None:
            return self.chunk_size
        return default_chunk_size(device)

    def _per_class(self, real, r_idx, syn, s_idx, k, draw) -> torch.Tensor:
        loss = syn.new_zeros(())
        for c in range(k):
            rc, sc = real[r_idx == c], syn[s_idx == c]
            with torch.no_grad():
                er = self._embed(self._aug(rc, r_idx[r_idx == c], draw))
            es = self._embed(self._aug(sc, s_idx[s_idx == c], draw))
            loss = loss + (er.mean(0) - es.mean(0)).pow(2).sum()
        return loss


def _counts(idx: torch.Tensor, k: int, like: torch.Tensor) -> torch.Tensor:
    return torch.bincount(idx, minlength=k).to(like.dtype)[:, None]  # (K, 1)
