"""Progress bars that stay quiet when output is not a terminal (tqdm with ``disable=None``), and
plain log lines in their place for long loops (:class:`LogLines`).

``DKKT_PROGRESS=0`` silences both, ``DKKT_PROGRESS=1`` forces the bars on.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Optional, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_bar(iterable: Iterable[T], **kwargs) -> "tqdm[T]":
    """A tqdm bar on stderr, shown only on a terminal unless ``DKKT_PROGRESS`` says otherwise."""
    env = os.environ.get("DKKT_PROGRESS", "").strip().lower()
    disable = {"0": True, "false": True, "1": False, "true": False}.get(env)
    return tqdm(iterable, disable=disable, file=sys.stderr, dynamic_ncols=True, leave=False, **kwargs)


class LogLines:
    """A line on stdout every ``every`` steps (default: every 5 % of ``total``) while no progress
    bar is shown: what a run writes into a log file or a batch job's output.

    Example:
        >>> lines = LogLines("distill dm", total=40, start=0, shown=False)
        >>> lines.every
        2
    """

    def __init__(self, desc: str, total: int, start: int = 0, *, shown: bool, every: Optional[int] = None):
        silent = os.environ.get("DKKT_PROGRESS", "").strip().lower() in ("0", "false")
        self.active = not shown and not silent and total > start
        self.desc, self.total, self.start = desc, total, start
        self.every = every or max(1, (total - start) // 20)
        self.t0 = time.perf_counter()

    def step(self, done: int, **values: float) -> None:
        """Report after ``done`` steps (counted from 0, including those before ``start``)."""
        if not self.active or ((done - self.start) % self.every and done != self.total):
            return
        elapsed = time.perf_counter() - self.t0
        rate = elapsed / max(done - self.start, 1)
        extra = "".join(f", {k} {v:.4g}" for k, v in values.items())
        print(f"{self.desc}: {done}/{self.total} ({100 * done / self.total:.0f} %), {elapsed:.0f} s, "
              f"{rate:.3g} s/it, about {rate * (self.total - done):.0f} s left{extra}", flush=True)
