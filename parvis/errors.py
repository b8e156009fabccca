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

    def __init__(self, path: str | Path, reason: str, kind: str = "corrupt"):
        self.path = str(path)
        self.reason = reason
        self.kind = kind
        super().__init__(f"{self.path}: {reason}")
