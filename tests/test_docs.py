"""The documentation builds and its links lead somewhere: the MkDocs site in strict mode (a broken page,
nav entry, link or anchor fails the build) and every relative link in README.md."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# [text](target) and ![alt](target), target up to the first space or closing parenthesis.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def markdown_links(text: str) -> list[str]:
    """Link targets outside code blocks and inline code."""
    text = INLINE_CODE.sub("", FENCE.sub("", text))
    return LINK.findall(text)


def heading_anchors(path: Path) -> set[str]:
    """The anchors MkDocs gives a page's headings (Python-Markdown's toc slugify)."""
    from markdown.extensions.toc import slugify

    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    anchors = set()
    for title in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        anchors.add(slugify(title.replace("`", ""), "-"))
    return anchors


def test_markdown_links_skip_code():
    text = 'see [a](docs/a.md) and `[b](nope.md)`\n```\n[c](nope.md)\n```\n![img](x.png "t")'
    assert markdown_links(text) == ["docs/a.md", "x.png"]


def test_readme_relative_links_point_at_files():
    readme = ROOT / "README.md"
    targets = [t for t in markdown_links(readme.read_text(encoding="utf-8")) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]
    assert targets, "README.md has no relative links; the test would prove nothing"
    missing, bad_anchors = [], []
    for target in targets:
        path_part, _, anchor = target.partition("#")
        path = readme.parent / path_part if path_part else readme
        if not path.exists():
            missing.append(target)
            continue
        if anchor and path.suffix == ".md":
            try:
                anchors = heading_anchors(path)
            except ImportError:  # markdown comes with mkdocs; without it only files are checked
                continue
            if anchor not in anchors:
                bad_anchors.append(target)
    assert not missing, f"README.md links to files that do not exist: {missing}"
    assert not bad_anchors, f"README.md links to headings that do not exist: {bad_anchors}"


def test_mkdocs_builds_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    assert (tmp_path / "site" / "index.html").exists()
    assert (tmp_path / "site" / "commands" / "inference" / "index.html").exists()
