"""The CPU backend: fused C kernels for the ConvNet's blocks, their build, and the compiled path.

Everything that makes dkkt-plugin fast on a CPU lives here, and nothing else in the package
decides whether it applies. The process-wide ``backend`` setting (:mod:`dkkt_plugin.runtime`)
chooses it: ``cpu`` (the default) runs a :class:`~dkkt_plugin.nets.ConvNet`'s blocks through the
fused kernels where :func:`not_supported_reasons` is empty, ``compile`` runs the passes that have
a compiled path through :class:`StaticCompiled`, ``torch`` runs neither.

- :mod:`~dkkt_plugin.cpu.build`: compiling ``convnet_fused.c`` with the system C compiler on
  first use, cached on disk, loaded with ctypes;
- :mod:`~dkkt_plugin.cpu.kernels`: the kernels as torch operations (two autograd Functions and
  the no-grad bf16 embedding);
- :mod:`~dkkt_plugin.cpu.blocks`: which blocks they replace, matched by module type, and the one
  test of whether they apply, :func:`not_supported_reasons`;
- :mod:`~dkkt_plugin.cpu.compiled`: a per-sample function through ``torch.compile`` with one
  static chunk shape, eager if compiling fails;
- :mod:`~dkkt_plugin.cpu.tuning`: images per forward that keep activations in the caches.

Example:
    >>> import torch
    >>> from dkkt_plugin.nets import ConvNet
    >>> net = ConvNet(channels=1, num_classes=10, image_size=28, width=8)
    >>> not_supported_reasons(net, torch.zeros(2, 1, 28, 28, device="meta"))
    ['the input is on meta, not on the CPU']
"""
from .blocks import Block, embedding_plan, find_blocks, fused, not_supported_reasons
from .build import FusedKernelError, cache_dir, library_error, load_library
from .compiled import StaticCompiled
from .kernels import EmbeddingPlan, FirstBlock, NormReluPool
from .tuning import CPU_CHUNK, CPU_FUSED_TRAIN_CHUNK, CPU_TRAIN_CHUNK, default_chunk_size

__all__ = ["Block", "embedding_plan", "find_blocks", "fused", "not_supported_reasons",
           "FusedKernelError", "cache_dir", "library_error", "load_library", "StaticCompiled", "EmbeddingPlan",
           "FirstBlock", "NormReluPool", "CPU_CHUNK", "CPU_FUSED_TRAIN_CHUNK", "CPU_TRAIN_CHUNK",
           "default_chunk_size"]
