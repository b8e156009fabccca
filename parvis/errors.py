"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations

from pathlib import Path


class ParvisError(Exception):
    """A mistake the user can fix: the message names the thing and what to do."""

    exit_code = 2


class BadSampleError(ParvisError):
    """One sample of a dataset cannot be used (unreadable image, missing mask, ...).

    `kind` says which way it is bad, for callers that answer differently (the HTTP server):
    "format" (not an image, or a format not read), "corrupt" (truncated or damaged), "size" (too
    many pixels), "io" (cannot be read).
    """

    def __init__(self, path: str | Path, reason: str | None = None, kind: str = "corrupt"):
        if reason is None:
            # torch's DataLoader re-raises an error from a worker process as type(exc)(text), where
            # text is "Caught BadSampleError in DataLoader worker process N. Original Traceback ...";
            # without this it could not construct us and raised a 20-line RuntimeError instead.
            # The traceback's last line is the worker's own message: keep just that, so --workers N
            # ends in the same one line as --workers 0 (kind is not in the text: the default stays).
            message = _worker_message(str(path), type(self))
            path, sep, reason = message.partition(": ")
            if not sep:
                path, reason = "", message
        self.path = str(path)
        self.reason = reason
        self.kind = kind
        super().__init__(f"{self.path}: {reason}" if self.path else reason)

    def __reduce__(self):
        # Pickled whole (process pools, DataLoader workers): path, reason and kind survive the trip.
        return (type(self), (self.path, self.reason, self.kind))


def _worker_message(text: str, cls: type) -> str:
    """The message of the `cls` error at the end of a formatted traceback (text itself if none)."""
    _, found, tail = text.rpartition(f"{cls.__module__}.{cls.__qualname__}: ")
    return tail.strip() if found else text.strip()
