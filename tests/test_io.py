"""parvis.io: the one atomic-write helper (temp file, fsync, rename) every writer goes through."""

import os

import pytest

from parvis.errors import ParvisError
from parvis.io import atomic_copy, atomic_write, atomic_write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = atomic_write_text(tmp_path / "r.json", "old")

    def half_then_fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["r.json"]


def test_os_errors_name_the_file(tmp_path):
    def no_space(tmp):
        raise OSError(28, "No space left on device")

    with pytest.raises(ParvisError, match="cannot write .*r.json: No space left"):
        atomic_write(tmp_path / "r.json", no_space)


def test_copy_is_whole_with_the_umask_mode(tmp_path):
    src = tmp_path / "scratch" / "model.onnx"
    src.parent.mkdir()
    src.write_bytes(b"x" * 100_000)
    dst = atomic_copy(src, tmp_path / "out" / "model.onnx")
    assert dst.read_bytes() == src.read_bytes() and os.listdir(dst.parent) == ["model.onnx"]
    umask = os.umask(0)
    os.umask(umask)
    assert dst.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_suffix_for_writers_that_want_an_extension(tmp_path):
    seen = []
    atomic_write(tmp_path / "m.pt2", lambda tmp: (seen.append(tmp), open(tmp, "wb").close()), suffix=".tmp.pt2")
    assert seen[0].endswith(".tmp.pt2") and (tmp_path / "m.pt2").exists()
