"""Atomic file writes: a crash never leaves a half-written result, checkpoint or report behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from parvis.errors import ParvisError


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = True) -> Path:
    """Write to a temp file in the same directory, fsync, then rename over `path`.

    `durable=False` skips the fsync: readers still never see a partial file (the rename is atomic),
    but a power cut may lose it. For per-image outputs, where an fsync each costs more than the image.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ParvisError(f"cannot write {path}: {exc.strerror or exc}; choose a writable location") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def publish(tmp: str | Path, path: str | Path, fsync: bool = False) -> None:
    """Move a finished temp file (made by mkstemp in `path`'s folder) into place: the mode a plain
    open() would give it (mkstemp makes 0600; 0666 minus the umask), then an atomic rename."""
    if fsync:
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())
