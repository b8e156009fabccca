"""Problems a newcomer hit on a first run, each pinned by a test."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from torch.utils.data import DataLoader, Dataset

from parvis.errors import BadSampleError

REPO = Path(__file__).resolve().parents[1]


def _parvis(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "parvis", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd or REPO,
    )


class _Broken(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        raise BadSampleError(f"/data/img {index}.jpg", "corrupt or truncated image; re-create or remove it", kind="io")


def test_bad_sample_error_survives_a_dataloader_worker():
    # torch re-raises a worker's error as type(exc)(traceback text): it must come back as a
    # BadSampleError with a one-line message naming the file, not a RuntimeError with a traceback.
    loader = DataLoader(_Broken(), batch_size=2, num_workers=1)
    with pytest.raises(BadSampleError) as info:
        next(iter(loader))
    assert str(info.value) == "/data/img 0.jpg: corrupt or truncated image; re-create or remove it"
    assert info.value.path == "/data/img 0.jpg"
    assert "\n" not in str(info.value)


def test_bad_sample_error_pickles_whole():
    err = pickle.loads(pickle.dumps(BadSampleError("a.png", "too many pixels", kind="size")))
    assert (err.path, err.reason, err.kind, str(err)) == ("a.png", "too many pixels", "size", "a.png: too many pixels")


@pytest.fixture(scope="module")
def corrupt_shapes(tmp_path_factory) -> Path:
    """A tiny shapes set whose classification train images are all truncated JPEGs."""
    from parvis.data.synth import synthesize

    out = tmp_path_factory.mktemp("corrupt") / "shapes"
    synthesize(out, n=16, size=32, seed=0, workers=1, progress=False)
    for path in (out / "classification" / "train").rglob("*.jpg"):
        path.write_bytes(path.read_bytes()[:200])
    return out


def test_train_corrupt_jpeg_with_a_worker_is_one_line(corrupt_shapes, tmp_path):
    proc = _parvis(
        "train",
        "--task",
        "classification",
        "--model",
        "resnet18",
        "--data",
        str(corrupt_shapes),
        "--epochs",
        "1",
        "--size",
        "32",
        "--batch",
        "4",
        "--workers",
        "1",
        "--quiet",
        "--out",
        str(tmp_path / "run"),
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("parvis: error: "), lines[0]
    assert str(corrupt_shapes / "classification" / "train") in lines[0] and ".jpg" in lines[0]
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", ["model.pt2", "best.pt"])
def test_quantize_a_non_onnx_artifact_says_export_one(name, tmp_path, capsys):
    from parvis.cli.main import main

    (tmp_path / name).write_bytes(b"not onnx")
    args = ["quantize", str(tmp_path / name), "--data", str(tmp_path), "--out", str(tmp_path / "q" / "int8.onnx")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("parvis: error:") and str(tmp_path / name) in err
    if name.endswith(".pt2"):
        assert "quantize needs an .onnx" in err and "parvis export" in err and "--format onnx" in err
    else:  # a checkpoint is exported first; this one is not a checkpoint, and says so
        assert "so it was not written by parvis" in err
    assert not (tmp_path / "q").exists()


def test_compile_runtime_drops_only_the_no_cuda_runtime_notice(tmp_path, monkeypatch):
    import logging

    import torch.utils.cpp_extension as cpp

    from parvis import runtime
    from parvis.runtimes.torch_compile import TorchCompileRuntime

    if runtime.has_cuda():
        pytest.skip("torch logs the notice only on a machine without a GPU")
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    log = logging.getLogger("torch.utils.cpp_extension")
    keep = Keep(level=logging.WARNING)
    log.addHandler(keep)
    try:
        TorchCompileRuntime("resnet18", threads=1)  # compiles lazily: sets up, compiles nothing yet
        monkeypatch.setenv("CUDA_HOME", str(tmp_path))  # a toolkit folder without a GPU, as on the newcomer's box
        assert cpp._find_cuda_home() == str(tmp_path)  # what Inductor's import of cpp_extension runs
        log.warning("an unrelated warning")
    finally:
        log.removeHandler(keep)
    assert seen == ["an unrelated warning"]


def test_decoded_images_become_tensors_without_the_numpy_not_writable_warning():
    # torch warns once per process, so a fresh interpreter sees whether any decoder's array triggers it
    code = (
        "import io, warnings\n"
        "import numpy as np\n"
        "from PIL import Image\n"
        "from parvis.data.decode import DECODERS, decode, to_tensor\n"
        "warnings.simplefilter('error')\n"
        "rgb = Image.fromarray(np.arange(40 * 50 * 3, dtype=np.uint8).reshape(40, 50, 3))\n"
        "for fmt in ('PNG', 'JPEG'):\n"
        "    buf = io.BytesIO(); rgb.save(buf, fmt)\n"
        "    for decoder in DECODERS:\n"
        "        t = to_tensor(decode(buf.getvalue(), decoder=decoder))\n"
        "        assert t.shape == (3, 40, 50), t.shape\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]


def test_to_tensor_keeps_a_writable_array_uncopied():
    import numpy as np

    from parvis.data.decode import to_tensor

    array = np.zeros((4, 5, 3), np.uint8)
    assert to_tensor(array).data_ptr() == array.ctypes.data


def test_roofline_times_the_peak_matmul_in_turn_with_the_model():
    # The peak was a separate measurement, after the model's, and fp32 read 139% and 174% "of peak";
    # now every round times each precision's peak matmul right before its model.
    import statistics

    from parvis.bench.roofline import bench_roofline

    said: list[str] = []
    r = bench_roofline("resnet18", size=32, batch=2, rounds=2, iters=1, peak_seconds=0.1, progress=said.append)
    names = [row["precision"] for row in r["rows"]]
    one_round = [label for n in names for label in (f"peak matmul {n}", f"torch {n}")]
    timed = [m.split(": ", 1)[1] for m in said if m.startswith("round ")]
    assert timed == one_round * 2, said
    for row in r["rows"]:
        assert len(row["peak_gflops_runs"]) == len(row["img_s_runs"]) == 2
        assert row["peak_gflops"] == round(statistics.median(row["peak_gflops_runs"]), 1)
        runs = zip(row["img_s_runs"], row["peak_gflops_runs"], strict=True)
        paired = [r["flops_per_image"] * s / 1e9 / p for s, p in runs]
        assert row["fraction_of_peak"] == pytest.approx(statistics.median(paired))
        assert r["peak_gflops"][f"{row['precision']}_gflops"] == row["peak_gflops"]


def test_make_clean_removes_every_data_folder_the_docs_write():
    # `make clean` left data/video behind: the docs' video commands write it, the demo writes data/shapes.
    import re
    import shutil

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    texts = [(REPO / "README.md").read_text(), *(p.read_text() for p in (REPO / "docs").rglob("*.md"))]
    written = {m for t in texts for m in re.findall(r"(?<![\w/.])data/[\w-]+(?![\w.])", t)}
    assert {"data/shapes", "data/video"} <= written
    dry = subprocess.run(["make", "-n", "clean"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    removed = set(" ".join(line for line in dry.stdout.splitlines() if line.startswith("rm ")).split())
    assert written | {"runs"} <= removed, sorted(written | {"runs"} - removed)
