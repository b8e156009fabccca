"""`parvis bench serve` end to end: the comparison starts its own servers; a sweep against a running one."""

from __future__ import annotations

import json

import pytest

from parvis.bench.serve import ServerProcess
from parvis.cli.main import main

pytestmark = pytest.mark.slow

ROW_KEYS = {"concurrency", "throughput_rps", "p50_ms", "p99_ms", "mean_batch_size", "errors"}


def test_compare_batching_reports_speedup_ceiling_burst_and_soak(repository, tmp_path, capsys):
    out = tmp_path / "serve.json"
    code = main([
        "bench", "serve", str(repository / "clf" / "best.pt"), "--compare-batching", "--concurrency", "1,4",
        "--requests", "24", "--max-batch-size", "4", "--burst", "3", "--burst-seconds", "0.5", "--soak", "40",
        "--image-size", "64", "--json", str(out),
    ])  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "serve" and result["model"] == "resnet18"
    assert [r["concurrency"] for r in result["rows"]] == [1, 4]
    for row in result["rows"]:
        assert ROW_KEYS <= row.keys()
        assert row["errors"] == 0 and row["off_errors"] == 0
        assert row["throughput_rps"] > 0 and row["off_throughput_rps"] > 0
        assert row["speedup"] == pytest.approx(row["throughput_rps"] / row["off_throughput_rps"])
        assert row["ceiling_ratio"] == pytest.approx(row["throughput_rps"] / row["ceiling_rps"])
        assert 1 <= row["mean_batch_size"] <= 4
    assert result["rows"][0]["mean_batch_size"] == 1.0  # one client: nothing to batch with
    burst, soak = result["burst"], result["soak"]
    assert sum(burst["statuses"].values()) == burst["burst_requests"]
    assert set(burst["statuses"]) <= {"200", "503"} and burst["after_errors"] == 0
    assert soak["ok"] == 40 and soak["rss_mb_before"] > 0
    printed = capsys.readouterr().out
    assert "ceiling ratio" in printed and "burst at 3x" in printed and "soak of 40" in printed

    from parvis.report import build_sections, load_results

    results, _ = load_results([out])
    (section,) = build_sections(results, plots=True)
    assert section.kind == "serve" and section.figure is not None
    assert {"throughput_rps", "speedup", "ceiling_ratio"} <= set(section.columns)


def test_sweep_against_a_running_server_with_an_api_key(repository, tmp_path, capsys):
    with ServerProcess([str(repository / "seg"), "--api-key", "k1"]) as proc:
        out = tmp_path / "sweep.json"
        args = ["bench", "serve", "--url", proc.url, "--concurrency", "2", "--requests", "10", "--image-size", "64"]
        assert main([*args, "--api-key", "k1", "--json", str(out)]) == 0
        row = json.loads(out.read_text())["rows"][0]
        assert ROW_KEYS <= row.keys() and row["ok"] == 10 and row["errors"] == 0
        # Without the key every request is refused, and the table says so.
        assert main([*args, "--json", str(tmp_path / "nokey.json")]) == 2
    assert "401" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "http://10.1.2.3:8000"], "only targets this machine"),
        (["--compare-batching"], "needs a MODEL"),
        ([], "give --url URL"),
        (["resnet18", "--compare-batching", "--peer", "nope"], "expected NAME=URL"),
        (["--url", "http://127.0.0.1:9", "--concurrency", "0"], "must be >= 1"),
        (["--url", "http://127.0.0.1:9"], "no server answers"),
    ],
)
def test_bench_serve_errors(args, message, capsys):
    assert main(["bench", "serve", *args]) == 2
    assert message in capsys.readouterr().err
