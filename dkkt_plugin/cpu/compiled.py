"""A function run through ``torch.compile`` with static chunk shapes, or eagerly if that fails.

The ``compile`` backend (:mod:`dkkt_plugin.runtime`) runs two passes this way: DM's real-image
embedding and each chunk of classifier training. Both run a per-sample function over chunks of a
batch, whose last chunk is usually shorter. Padding that chunk with zeros to the full chunk size keeps one
static shape, so the function compiles once per process (dynamo caches per code object, so later
instances reuse the code). A failed compile (no C++ compiler, an unsupported operation, ...)
warns once and runs the function eagerly from then on.

Example:
    >>> double = StaticCompiled(lambda x: 2 * x, "doubling", "doubling eagerly", enabled=False)
    >>> double(torch.ones(3, 2), pad_to=4).shape
    torch.Size([3, 2])
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

import torch


class StaticCompiled:
    """``fn`` through ``torch.compile(dynamic=False)``, or plain ``fn`` when not ``enabled``.

    Args:
        fn: a function whose tensor arguments and output share their leading (sample) dimension
            and whose samples are independent (padding samples must not change the others).
        who: the pass that asked for compiling, named in the warning (e.g. ``"backend 'compile',
            DM's real-image embedding"``).
        fallback: what happens instead, ending the warning (e.g. ``"training eagerly instead"``).
        enabled: ``False`` runs ``fn`` eagerly and never pads.
        eager_fn: what runs instead of ``fn`` when not compiling (not enabled, or the compile
            failed); default ``fn``. E.g. a version with kernels that ``torch.compile`` cannot trace.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], who: str, fallback: str, *, enabled: bool = True,
                 eager_fn: Optional[Callable[..., torch.Tensor]] = None) -> None:
        self.fn = fn
        self.eager_fn = eager_fn or fn
        self.who = who
        self.fallback = fallback
        self.compiled: Optional[Callable[..., torch.Tensor]] = None
        self.failed = False
        self.eager = not enabled

    def __call__(self, *args: Any, pad_to: Optional[int] = None) -> torch.Tensor:
        """``fn(*args)``; with ``pad_to``, tensor arguments with fewer samples are zero-padded to
        ``pad_to`` for the compiled call and the output cut back to the real samples."""
        if self.eager or self.failed:
            return self.eager_fn(*args)
        n = next(a.shape[0] for a in args if torch.is_tensor(a))
        padded = args
        if pad_to is not None and n < pad_to:
            padded = tuple(torch.cat([a, a.new_zeros(pad_to - n, *a.shape[1:])]) if torch.is_tensor(a) else a
                           for a in args)  # (pad_to, ...)
        try:
            if self.compiled is None:
                self.compiled = torch.compile(self.fn, dynamic=False)
            return self.compiled(*padded)[:n]
        except Exception as err:  # no C++ compiler, an unsupported op, ...: warn once, run eagerly
            first = str(err).splitlines()[0] if str(err) else ""
            warnings.warn(f"{self.who}: torch.compile failed ({type(err).__name__}: {first}); {self.fallback}",
                          RuntimeWarning, stacklevel=3)
            self.failed = True
            return self.eager_fn(*args)
