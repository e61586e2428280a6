"""Progress bars that stay quiet when output is not a terminal (tqdm with ``disable=None``).

``DKKT_PROGRESS=0`` silences them, ``DKKT_PROGRESS=1`` forces them on.
"""
from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_bar(iterable: Iterable[T], **kwargs) -> "tqdm[T]":
    """A tqdm bar on stderr, shown only on a terminal unless ``DKKT_PROGRESS`` says otherwise."""
    env = os.environ.get("DKKT_PROGRESS", "").strip().lower()
    disable = {"0": True, "false": True, "1": False, "true": False}.get(env)
    return tqdm(iterable, disable=disable, file=sys.stderr, dynamic_ncols=True, leave=False, **kwargs)
