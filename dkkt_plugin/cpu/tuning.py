"""Images per forward on the CPU: chunks whose activations stay in the caches.

Where samples are independent (instance norm, eval-mode batch norm), the losses and classifier
training run a batch in chunks and combine the results (the same numbers up to float rounding).
One image's first block is 128 x 32 x 32 floats (512 KiB), and a VM's memory bandwidth beyond the
L3 can be a few GB/s. Measured on a 2-core Zen 5 VM (``benchmarks/results/speed-cpu``): DM's
embedding (no backward) runs as fast with 16, 32 or 64 images per forward, about twice the rate
of 256 or 2 560, at one and two threads; training (forward and backward keep twice the
activations) is fastest with 8 through torch's ops (4, 16, 24, 50 and 100 tried) and with 16
through the fused blocks, which never store block 1's output (32 is no faster).
"""
from __future__ import annotations

from typing import Any

CPU_CHUNK = 16  # images per forward without a backward
CPU_TRAIN_CHUNK = 8  # images per forward and backward through torch's ops
CPU_FUSED_TRAIN_CHUNK = 16  # images per forward and backward through the fused blocks
WHOLE_BATCH = 2 ** 62  # other devices: one chunk


def default_chunk_size(device: Any, *, training: bool = False, fused: bool = False) -> int:
    """Images per forward for per-sample networks: on the CPU :data:`CPU_CHUNK`, or when training
    the network's weights :data:`CPU_TRAIN_CHUNK` (:data:`CPU_FUSED_TRAIN_CHUNK` with the fused
    blocks), whatever the thread count; on other devices the whole batch.

    Example:
        >>> default_chunk_size("cpu"), default_chunk_size("cpu", training=True, fused=True)
        (16, 16)
    """
    if getattr(device, "type", str(device).split(":")[0]) != "cpu":
        return WHOLE_BATCH
    if training:
        return CPU_FUSED_TRAIN_CHUNK if fused else CPU_TRAIN_CHUNK
    return CPU_CHUNK
