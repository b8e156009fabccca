"""Imports flow one way (docs/design.md, ARCHITECTURE.md): a module never imports from a later stage, and
parvis's own modules are imported at the top of a module (outside parvis/cli), so a cycle cannot hide
inside a function body. Third-party imports inside functions are allowed for optional heavy
dependencies only (ruff's PLC0415 with per-file ignores checks those).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "parvis"

# Stages, bottom to top. A module may import its own stage and the ones below it.
STAGES: list[tuple[str, ...]] = [
    ("parvis.errors", "parvis.io", "parvis.registry", "parvis.structures", "parvis.draw"),
    ("parvis.runtime", "parvis.config"),
    ("parvis.data",),
    ("parvis.models",),
    ("parvis.artifact",),
    ("parvis.engine",),
    ("parvis.export", "parvis.quantize", "parvis.prune"),
    ("parvis.runtimes",),
    ("parvis.optimize", "parvis.serve", "parvis.video", "parvis.describe", "parvis.scale"),
    ("parvis.bench", "parvis.report", "parvis.demo"),
    ("parvis.api",),
    ("parvis.cli", "parvis.__main__"),
]
# The package root exposes the API lazily (PEP 562 __getattr__), so `import parvis` stays light.
EXEMPT = {("parvis", "parvis.api")}


def stage(module: str) -> int | None:
    if module == "parvis":
        return 0  # the package root: its version, and the lazy API facade (EXEMPT)
    best: tuple[int, int] | None = None
    for index, names in enumerate(STAGES):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > best[0]):
                best = (len(name), index)
    return None if best is None else best[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def parvis_imports(tree: ast.AST) -> list[tuple[ast.ImportFrom | ast.Import, list[str]]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "parvis":
            names = [f"{node.module}.{a.name}" if node.module == "parvis" else node.module for a in node.names]
            out.append((node, names))
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "parvis"]
            if names:
                out.append((node, names))
    return out


def in_function(tree: ast.AST) -> set[int]:
    ids = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            ids.update(id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
    return ids


def violations() -> tuple[list[str], list[str]]:
    upward, hidden = [], []
    for path in sorted(ROOT.rglob("*.py")):
        module = module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nested = in_function(tree)
        for node, targets in parvis_imports(tree):
            where = f"{path.relative_to(ROOT.parent)}:{node.lineno}"
            for target in targets:
                own, theirs = stage(module), stage(target)
                if own is not None and theirs is not None and theirs > own and (module, target) not in EXEMPT:
                    upward.append(f"{where}: {module} imports {target} from a later stage")
            if id(node) in nested and not module.startswith("parvis.cli") and module != "parvis":
                hidden.append(f"{where}: {module} imports {', '.join(targets)} inside a function")
    return upward, hidden


def test_every_module_has_a_stage():
    missing = [module_name(p) for p in ROOT.rglob("*.py") if stage(module_name(p)) is None]
    assert missing == [], f"add these modules to a stage in tests/test_imports.py: {missing}"


def test_nothing_imports_upward():
    upward, _ = violations()
    assert upward == [], "\n".join(upward)


def test_parvis_imports_sit_at_the_top_of_modules():
    _, hidden = violations()
    assert hidden == [], "\n".join(hidden)


def test_the_check_fails_on_an_upward_import(tmp_path, monkeypatch):
    """The rule itself: a data module importing the runtimes is reported."""
    tree = ast.parse("from parvis.runtimes import open_runtime\n")
    ((node, targets),) = parvis_imports(tree)
    assert stage(targets[0]) > stage("parvis.data.loader")
    assert stage("parvis.models.zoo") < stage("parvis.engine.loading") < stage("parvis.runtimes")
