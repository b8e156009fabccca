"""Terminal output shared by the commands: a rich console that degrades to plain text off a TTY."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from parvis.io import atomic_write_text


@lru_cache(maxsize=1)
def console():
    from rich.console import Console

    # Off a terminal (CI logs, pipes) rich already drops colour and animation; a wide fixed width
    # keeps tables from wrapping into unreadable columns in logs, and soft wrap keeps a long message
    # (a deep path) on one line, as scripts that grep the output expect.
    con = Console()
    if not con.is_terminal:
        con = Console(width=160, soft_wrap=True)
    return con


def write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
