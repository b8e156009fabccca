"""Atomic file writes: a crash never leaves a half-written result, checkpoint or report behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from parvis.errors import ParvisError


def atomic_write(path: str | Path, write: Callable[[str], object], durable: bool = True, suffix: str = ".tmp") -> Path:
    """Call `write(temp_name)` for a temp file beside `path`, fsync it, then rename it over `path`.

    The rename is atomic, so `path` holds either the old file or the complete new one; the temp file
    is removed on any failure, Ctrl-C included. `durable=False` skips the fsyncs: readers still never
    see a partial file, but a power cut may lose it (for per-image outputs, where an fsync each costs
    more than the image). `suffix`: for writers that insist on a file extension (torch.export.save).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise ParvisError(f"cannot write {path}: {exc.strerror or exc}; choose a writable location") from None
    try:
        write(tmp)
        publish(tmp, path, fsync=durable)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise ParvisError(
                f"cannot write {path}: {exc.strerror or exc}; free space or choose another location"
            ) from None
        raise
    if durable:
        _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = True) -> Path:
    """`data` to `path` through `atomic_write`."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), durable)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_copy(src: str | Path, dst: str | Path, durable: bool = True) -> Path:
    """A copy of `src` at `dst` that is complete or absent (a winner's artifact, a best checkpoint)."""
    return atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp), durable)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself survive a power cut; not every filesystem lets a folder be opened.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
