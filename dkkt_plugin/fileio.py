"""Files written atomically and torch files read with clear errors.

Every file dkkt-plugin writes (checkpoints, synthetic sets, records, PNGs) goes through
:func:`write_atomic`: the bytes land in a temporary file in the same folder, which then replaces
the target, so a killed process leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import io
import os
import uuid
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, ConfigError


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (creating parent folders); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")  # same folder
    try:
        with open(tmp, "xb") as f:  # a plain open: the file gets the usual umask permissions
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_atomic(path, buf.getvalue())


def load_torch(path: str | os.PathLike, what: str, fmt: str, fix: str) -> dict:
    """Load a dict saved by :func:`save_torch` whose ``format`` is ``fmt`` (safe unpickling).

    Raises:
        CheckpointError: naming ``what`` and ``path``, and ``fix``, when the file is missing,
            unreadable, or of another format. The file itself is never modified.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist; {fix}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{what} {path} is corrupt or not a torch file ({first}); it was left "
                              f"as it is; {fix}") from exc
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not a dkkt-plugin {what} (format {found!r}, expected {fmt!r}); {fix}")
    return payload


def check_writable(path: str | os.PathLike, flag: str = "--out") -> None:
    """ConfigError now, before any work, when the file ``path`` cannot be written (a missing
    parent that cannot be created, a read-only folder, a file in the way, or a folder in its place).

    Creates the missing parent folders (the file will go there); ``flag`` names the setting in
    the message.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give a file path such as {path / 'out.pt'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.probe")
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write {flag} {path} ({exc.strerror or exc}); choose a writable {flag}") from None
