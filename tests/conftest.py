"""Shared fixtures: a tiny generated shapes set, and skipping of GPU-only tests on machines without one."""

from __future__ import annotations

import pytest

from parvis import runtime


def pytest_collection_modifyitems(config, items):
    if runtime.has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    """A 60-scene, 64 px shapes set with every layout, generated once per test session."""
    from parvis.data.synth import synthesize

    out = tmp_path_factory.mktemp("shapes") / "shapes"
    synthesize(out, n=60, size=64, seed=0, workers=2, progress=False)
    return out
