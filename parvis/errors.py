"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations

from pathlib import Path


class ParvisError(Exception):
    """A mistake the user can fix: the message names the thing and what to do."""

    exit_code = 2


class BadSampleError(ParvisError):
    """One sample of a dataset cannot be used (unreadable image, missing mask, ...)."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
