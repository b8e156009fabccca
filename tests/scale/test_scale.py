"""Scale-out predict: the shard store (resume, refusal, counts), Ray Data locally and on a two-node loopback
cluster, and torchrun with a world size that does not divide the shards. The model is convnet_small with
random weights at 32 px: these tests count rows, not accuracy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from parvis.cli.main import main
from parvis.errors import ParvisError
from parvis.scale.shards import ShardStore, from_transport, headline, to_row

pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> list[str]:
    """A convnet_small checkpoint at 32 px with fixed (random) weights: every actor and rank loads the same."""
    import torch

    from parvis.engine.checkpoint import save_checkpoint
    from parvis.models import build_model

    torch.manual_seed(0)
    net = build_model("convnet_small", 5, ["circle", "ring", "square", "star", "triangle"], input_size=32)
    path = tmp_path_factory.mktemp("model") / "convnet.pt"
    save_checkpoint(path, {"model": net.state_dict(), "meta": net.meta.to_dict()})
    return [str(path)]


@pytest.fixture(scope="module")
def images(shapes_dir, tmp_path_factory) -> Path:
    """13 shapes photos and one file that is not an image."""
    folder = tmp_path_factory.mktemp("scale") / "in"
    folder.mkdir()
    for path in sorted((shapes_dir / "images" / "train").glob("*.jpg"))[:13]:
        shutil.copy(path, folder / path.name)
    (folder / "zz_broken.jpg").write_bytes(b"not a jpeg")
    return folder


def rows(out: Path) -> list[dict]:
    return pq.read_table(out / "results").to_pylist()


def check_each_once(out: Path, images: Path) -> list[dict]:
    got = rows(out)
    expected = sorted(str(p) for p in images.iterdir())
    assert sorted(r["path"] for r in got) == expected  # every image, exactly once
    broken = [r for r in got if r["error"]]
    assert [Path(r["path"]).name for r in broken] == ["zz_broken.jpg"] and broken[0]["result"] is None
    answered = [r for r in got if not r["error"]]
    assert all(r["label"] in ("circle", "ring", "square", "star", "triangle") and 0 <= r["score"] <= 1
               and json.loads(r["result"])["top5"] for r in answered)  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["images"], summary["rows"], summary["errors"]) == (14, 14, 1)
    assert summary["duplicates"] == summary["missing"] == 0
    return got


def test_shard_store_resumes_by_part_and_refuses_other_inputs(tmp_path):
    files = [tmp_path / f"{i:02d}.jpg" for i in range(7)]
    store = ShardStore(tmp_path / "out", files, 3, "m", "ray")
    store.open()
    assert [len(s) for s in store.shards] == [3, 3, 1] and store.todo() == [0, 1, 2]
    record = {"file": str(files[0]), "label": 1, "class_name": "ring", "score": 0.9}
    store.write(0, [to_row({**record, "file": str(f)}, 0, "m", "n0") for f in reversed(store.shards[0])])
    assert store.todo() == [1, 2] and not list((tmp_path / "out" / "results").glob(".*tmp"))
    assert [r["path"] for r in rows(tmp_path / "out")] == [str(f) for f in files[:3]]  # input order
    with pytest.raises(RuntimeError, match="do not match"):
        store.write(1, [to_row(record, 1, "m", "n0")])  # a shard's rows must be exactly its images
    summary = store.summary(1.0, 3)
    assert (summary["rows"], summary["missing"], summary["duplicates"]) == (3, 4, 0)
    with pytest.raises(ParvisError, match="other inputs"):
        ShardStore(tmp_path / "out", files[:6], 3, "m", "ray").open()
    with pytest.raises(ParvisError, match="other model"):
        ShardStore(tmp_path / "out", files, 3, "other.pt", "ray").open()


def test_rows_sum_up_each_task_and_survive_columnar_transport():
    assert headline({"class_name": "star", "score": 0.7}) == ("star", 0.7)
    dets = {"detections": [{"class_name": "ring", "score": 0.4}, {"class_name": "star", "score": 0.8}]}
    assert headline(dets) == ("star", 0.8) and headline({"detections": []}) == (None, None)
    assert headline({"class_shares": {"background": 0.9, "ring": 0.06, "star": 0.04}}) == ("ring", 0.06)
    back = from_transport({"path": "a", "label": "", "score": float("nan"), "result": "", "error": "bad"})
    assert (back["label"], back["score"], back["result"], back["error"]) == (None, None, None, "bad")


@pytest.mark.slow
def test_ray_local_writes_each_image_once_and_a_rerun_redoes_only_missing_parts(model, images, tmp_path, capsys):
    out = tmp_path / "ray"
    argv = ["predict", *model, str(images), "--engine", "ray", "--out", str(out), "--shard-size", "4", "--batch", "4"]
    assert main(argv) == 0
    first = check_each_once(out, images)
    assert len(list((out / "results").glob("part-*.parquet"))) == 4
    # A job killed part-way leaves whole parts only (written to a temporary name, then renamed): remove one
    # part and leave a stray temporary file, as a kill would; the rerun redoes that shard alone.
    (out / "results" / "part-00002.parquet").unlink()
    (out / "results" / ".part-00002.parquet.999.tmp").write_bytes(b"partial")
    capsys.readouterr()
    assert main(argv) == 0
    assert "3 finished shard(s) skipped" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processed_this_run"] == 4 and summary["skipped_shards"] == 3
    second = check_each_once(out, images)
    assert {r["path"]: r["label"] for r in second} == {r["path"]: r["label"] for r in first}


def _torchrun_predict(model: list[str], images: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "parvis", "predict", *model, str(images), "--engine", "torchrun", "--nproc", "2",
           "--out", str(out), "--shard-size", "3"]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_shards_cover_each_image_once_when_ranks_do_not_divide_them(model, images, tmp_path):
    out = tmp_path / "torchrun"
    proc = _torchrun_predict(model, images, out)  # 14 images in 5 shards of 3 over 2 ranks
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = check_each_once(out, images)
    per_rank = json.loads((out / "summary.json").read_text())["rows_per_node"]
    assert sorted(per_rank.values()) == [6, 8] and all(k.endswith(("rank0", "rank1")) for k in per_rank)
    assert len({r["shard"] for r in got}) == 5
    (out / "results" / "part-00004.parquet").unlink()
    proc = _torchrun_predict(model, images, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processed_this_run"] == 2 and summary["skipped_shards"] == 4
    check_each_once(out, images)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ray_nodes_on_loopback_both_do_work(model, images, tmp_path):
    """A head and a second node (separate temp dirs) on 127.0.0.1; two single-thread actors spread over them."""
    ray_bin = Path(sys.executable).with_name("ray")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    port = "6397"
    # Ray's socket paths live under the temp dir and must fit AF_UNIX's 107 bytes: short dirs in /tmp.
    temp = Path(tempfile.mkdtemp(prefix="pvray-", dir="/tmp"))
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=2", "--object-store-memory=150000000", "--disable-usage-stats"]
    try:
        for extra in (["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp / 'h'}"],
                      [f"--address=127.0.0.1:{port}", f"--temp-dir={temp / 'n'}"]):  # fmt: skip
            proc = subprocess.run([str(ray_bin), "start", *extra, *common], capture_output=True, text=True,
                                  timeout=120, env=env)  # fmt: skip
            assert proc.returncode == 0, proc.stderr[-2000:]
        # Actors decode their own images, so on 2 shared cores the first actor can finish all 14 images
        # before the other node's actor has loaded its model: a second job (fresh folder) gets the warm
        # cluster. Both nodes must do work in one of the two.
        for attempt in range(2):
            out = tmp_path / f"two-nodes-{attempt}"
            cmd = [sys.executable, "-m", "parvis", "predict", *model, str(images), "--engine", "ray", "--address",
                   f"127.0.0.1:{port}", "--actors", "2", "--threads", "1", "--batch", "2", "--shard-size", "3",
                   "--out", str(out)]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
            assert proc.returncode == 0, proc.stderr[-3000:]
            check_each_once(out, images)
            summary = json.loads((out / "summary.json").read_text())
            if len(summary["rows_per_node"]) == 2:
                break
        assert summary["nodes"] == 2 and len(summary["rows_per_node"]) == 2, summary["rows_per_node"]
    finally:
        subprocess.run([str(ray_bin), "stop", "--force"], capture_output=True, timeout=120, env=env)
        shutil.rmtree(temp, ignore_errors=True)


def test_default_shard_size_gives_small_jobs_16_parts_and_bad_sizes_are_refused(tmp_path):
    from parvis.scale.shards import default_shard_size

    assert [default_shard_size(n) for n in (1, 14, 800, 16_000, 10**6)] == [1, 1, 50, 1000, 1000]
    files = [tmp_path / f"{i}.jpg" for i in range(800)]
    assert len(ShardStore(tmp_path / "a", files, None, "m", "ray").shards) == 16
    with pytest.raises(ParvisError, match="--shard-size 0"):
        ShardStore(tmp_path / "b", files, 0, "m", "ray")


def test_actor_plans_from_cluster_resources():
    """No cluster needed: threads, actors, their CPU reservation and their GPU share from Ray's resources."""
    from parvis.scale.ray_engine import actor_cpus, default_actors, default_threads, gpu_per_actor

    two_cores, big, gpu_node = {"CPU": 2.0}, {"CPU": 32.0}, {"CPU": 16.0, "GPU": 1.0}
    # CPU actors decode their own images: one single-thread actor per core on small nodes
    assert default_threads(two_cores, [2.0]) == 1 and default_actors(two_cores, 1) == 2
    assert actor_cpus(two_cores, 1, 2, decode_tasks=False) == 1.0
    # at most 8 CPU actors per node: 32 CPUs on two 16-CPU nodes -> 2 threads each, 16 actors
    assert default_threads(big, [16.0, 16.0]) == 2 and default_actors(big, 2) == 16
    assert default_threads(big, [32.0, 4.0]) == 1  # the smallest node decides
    # GPU actors: 2 threads, one per GPU, decode tasks keep one CPU
    assert default_threads(gpu_node, [16.0]) == 2 and default_actors(gpu_node, 2) == 1
    assert actor_cpus({"CPU": 2.0, "GPU": 1.0}, 2, 1, decode_tasks=True) == 1.0
    assert gpu_per_actor(gpu_node, 1) == 1.0
    assert gpu_per_actor(gpu_node, 4) == 0.25  # --actors 4 on one GPU: four fractional actors share it
    assert gpu_per_actor(gpu_node, 4, "cpu") == 0.0 and gpu_per_actor(big, 2) == 0.0
    assert gpu_per_actor({"CPU": 8.0, "GPU": 4.0}, 2) == 1.0
