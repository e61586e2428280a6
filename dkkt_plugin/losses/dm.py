"""Distribution matching (DM): classwise MMD of mean embeddings through a random network.

    L_DM = Σ_c ‖ mean_{x∈R_c} φ(A_c(x)) − mean_{s∈S_c} φ(A_c(s)) ‖²

with ``φ`` the embedding of a freshly initialised network each step (or a pretrained one for
DM*), and ``A_c`` one Siamese augmentation draw shared by class c's real and synthetic images.

All classes are augmented together, then embedded in chunks (the real batch without autograd:
it is a constant); class means come from ``index_add``. With a per-sample network (instance
norm, eval-mode batch norm) this equals the per-class loop of the reference code. On the CPU,
chunks of 16 images keep each layer's activations in the caches
(:func:`dkkt_plugin.cpu.default_chunk_size`).

Speed follows the process-wide switch (:mod:`dkkt_plugin.runtime`), read when the loss is built:

- precision: the real embedding needs no gradient and only its class means, so under ``auto``
  it runs in bf16 where the hardware computes bf16 natively (``bf16``: everywhere, ``fp32``:
  never); the class sums stay fp32. At width 128 bf16 changed the loss by ~1e-4 and its image
  gradient by ~4e-3 (relative; ``tests/losses/test_dm.py`` bounds them at 1e-3 and 2e-2). The
  synthetic images' pass is fp32.
- backend ``cpu``: on the CPU, a bf16 real embedding through a
  :class:`~dkkt_plugin.nets.ConvNet` runs through the fused kernels' no-grad embedding (block 1's
  convolution in fp32, each block's norm, ReLU and pooling per image in the L2 cache, oneDNN's
  bf16 convolutions in between), and the synthetic images' forward and backward with each block
  fused (the same gradient up to float rounding): at ipc 50 that pass is most of a DM step.
  Where they do not apply, torch's ops run.
- backend ``compile``: the real embedding through ``torch.compile`` (inductor fuses each
  block's norm, ReLU and pooling), after a one-off compile of 8–30 s per process that needs a
  C++ compiler. Chunks keep one static shape (the last is zero-padded and its padding dropped),
  so it compiles once. torch.compile caches per code object: once such a loss has run under a
  dispatch mode (e.g. ``FlopCounterMode``), the compiled path runs eagerly for every later
  instance in that process. The generated CPU kernels also keep the thread count they were
  compiled under: set ``torch.set_num_threads`` before the first step.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import cpu, runtime
from ..errors import ConfigError
from ..nets import check_input
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
            loop (one real and one synthetic forward per class, always fp32 through torch's ops).
        chunk_size: images per forward in the batched path; ``None``:
            :func:`dkkt_plugin.cpu.default_chunk_size` (16 on the CPU, the whole batch on GPUs).

    Precision and backend: the process-wide settings when the loss is built
    (:mod:`dkkt_plugin.runtime`; see the module notes).

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
                 chunk_size: Optional[int] = None) -> None:
        super().__init__()
        if reinit and not hasattr(net, "reset_parameters"):
            raise ConfigError(
                f"DMLoss(reinit=True) needs a network with reset_parameters(generator), such as "
                f"dkkt_plugin.nets.ConvNet; {type(net).__name__} has none (or pass reinit=False)"
            )
        if chunk_size is not None and chunk_size < 1:
            raise ConfigError(f"DMLoss chunk_size must be >= 1 or None, got {chunk_size}")
        self.net = net.requires_grad_(False)
        self.augment = augment
        self.reinit = reinit
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.batched = batched
        self.chunk_size = chunk_size
        self.speed = runtime.settings()  # the process-wide precision and backend, as built
        self._embed_real = cpu.StaticCompiled(self._embed, "backend 'compile', DM's real-image embedding",
                                              "embedding the real images eagerly instead",
                                              enabled=self.speed.backend == "compile")

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
            fused = cpu.embedding_plan(self.net, xr) if bf16 and self.speed.backend == "cpu" else None
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
        with cpu.fused(self.net, enabled=self.speed.backend == "cpu"):
            es = torch.cat([self._embed(xc) for xc in xs.split(chunk)])  # (S, D)
        ms = es.new_zeros(k, es.shape[1]).index_add(0, s_idx, es) / _counts(s_idx, k, es)  # (K, D)
        return (mr - ms).pow(2).sum()

    def uses_bf16(self, x: torch.Tensor) -> bool:
        """Whether the real embedding of images like ``x`` runs in bf16 (batched path)."""
        return self.batched and runtime.runs_bf16(x, self.speed.precision)

    def speed_report(self, x: torch.Tensor) -> dict[str, dict]:
        """What runs for images like ``x`` (:func:`dkkt_plugin.runtime.describe_pass` per pass):
        ``dm.real`` (the real embedding) and ``dm.synthetic`` (the synthetic images' passes)."""
        backend = self.speed.backend
        if not self.batched or not getattr(self.net, "per_sample", True):
            torch_ops = runtime.describe_pass(False, "torch", ["the per-class reference loop runs torch's ops in fp32"])
            return {"dm.real": torch_ops, "dm.synthetic": torch_ops}
        bf16 = self.uses_bf16(x)
        if backend == "cpu" and bf16:
            with torch.no_grad():
                why = cpu.not_supported_reasons(self.net, x, bf16_embedding=True)
            real = runtime.describe_pass(bf16, "torch" if why else "cpu", why)
        elif backend == "cpu":
            real = runtime.describe_pass(bf16, "torch", ["the fused embedding computes in bf16; this pass is fp32"])
        else:
            real = runtime.describe_pass(bf16, "compile" if backend == "compile" and not self._embed_real.failed
                                         else "torch")
        why = cpu.not_supported_reasons(self.net, x) if backend == "cpu" else []
        syn = runtime.describe_pass(False, "cpu" if backend == "cpu" and not why else "torch", why)
        return {"dm.real": real, "dm.synthetic": syn}

    def _chunk(self, device: torch.device) -> int:
        if self.chunk_size is not None:
            return self.chunk_size
        return cpu.default_chunk_size(device)

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
