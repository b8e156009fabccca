"""`parvis report`: any set of parvis result files as one self-contained HTML page, plus JSON and CSV.

Reads the JSON written by `parvis bench data | train | runtime | precision | batch | scaling |
roofline | partition` and `parvis optimize` (`optimize.json`), recognised by their `benchmark` key
(optimize: `candidates` + `chosen`). Each result becomes a section: its settings (device, versions,
batch, input size, ...), one plot (throughput vs batch, speedup bars, roofline, partition kept
fractions, ...) embedded as a base64 PNG, and its table. The same table rows go to FILE.json and
FILE.csv beside the HTML. All text is HTML-escaped; the page loads nothing from anywhere.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from parvis import __version__
from parvis.errors import ParvisError
from parvis.io import atomic_write_text

SUITES = (
    "data", "train", "runtime", "precision", "batch", "scaling", "roofline", "partition", "serve", "video", "learn",
    "inspection",
)  # fmt: skip
KINDS = (*SUITES, "optimize")
REPORT_KEY = "parvis_report"  # marks this module's own JSON output, so a re-run over a folder skips it

# Table columns per kind, in order; a column no row has is left out.
COLUMNS = {
    "data": ["workers", "baseline_img_s", "parvis_img_s", "speedup"],
    "train": ["config", "resolved", "precision", "layout", "compile", "img_s", "speedup_vs_fp32"],
    "runtime": [
        "runtime", "precision", "layout", "img_s", "speedup_vs_eager_fp32", "latency_ms_p50", "latency_ms_p99",
        "max_abs_err",
    ],
    "precision": ["runtime", "precision", "img_s", "speedup_vs_fp32", "speedup_vs_runtime_fp32", "max_abs_err"],
    "batch": ["batch", "img_s", "latency_ms_p50", "latency_ms_p90", "latency_ms_per_image", "iters"],
    "scaling": ["mode", "processes", "threads", "gpus", "cores", "img_s", "efficiency"],
    "roofline": [
        "precision", "img_s", "gflop_per_image", "achieved_gflops", "peak_gflops", "fraction_of_peak",
        "arithmetic_intensity", "attainable_gflops", "bound",
    ],
    "partition": ["run", "share", "threads", "img_s", "kept_vs_solo", "kept_vs_alone_same_share"],
    "serve": [
        "concurrency", "throughput_rps", "p50_ms", "p95_ms", "p99_ms", "mean_batch_size", "errors",
        "off_throughput_rps", "speedup", "ceiling_rps", "ceiling_ratio", "peer_fastapi_rps", "peer_ray_rps",
        "vs_best_peer",
    ],
    "video": [
        "streams", "batch", "aggregate_fps", "mean_batch", "model_only_img_s", "ceiling_fps", "ceiling_ratio",
        "peer_fps", "vs_peer", "mota", "id_switches", "decode_ms", "infer_ms", "track_ms", "encode_ms",
    ],
    "learn": [
        "engine", "recipe", "final_metric", "train_s", "img_s", "time_to_target_s", "time_to_peer_final_s",
        "vs_peer_time",
    ],
    "inspection": [
        "method", "image_auroc", "pixel_auroc", "pro", "fit_s", "ms_per_image", "memory_bank", "n_train", "n_test",
    ],
    "optimize": [
        "chosen", "variant", "runtime", "precision", "int8_scheme", "float_layers", "batch", "threads", "img_s",
        "latency_ms_p50", "metric", "metric_drop", "size_mb", "speedup_vs_eager_fp32", "status", "reason",
    ],
}  # fmt: skip
# Settings shown first in a section's header, when present; other scalar keys follow.
SETTINGS_FIRST = ("model", "source", "device", "torch", "threads", "batch", "input_size", "size", "precision")


@dataclass
class Section:
    """One result file, ready to render."""

    path: Path
    kind: str
    data: dict
    title: str
    settings: dict
    rows: list[dict]
    columns: list[str]
    extra_tables: list[tuple[str, list[str], list[dict]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figure: tuple[str, bytes] | None = None  # (caption, PNG)


# --------------------------------------------------------------------------- loading


def result_kind(data) -> str | None:
    """The kind of a parsed result JSON, "report" for this module's own output, None when unknown."""
    if not isinstance(data, dict):
        return None
    if REPORT_KEY in data:
        return "report"
    if isinstance(data.get("candidates"), list) and "chosen" in data:
        return "optimize"
    kind = data.get("benchmark")
    return kind if kind in SUITES and isinstance(data.get("rows"), list) else None


def expand_paths(items: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders give every *.json directly inside them (sorted)."""
    out: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            out += sorted(p for p in path.glob("*.json") if p.is_file())
        elif path.is_file():
            out.append(path)
        else:
            raise ParvisError(f"{path}: no such file or folder; pass result JSON files or folders holding them")
    if not out:
        raise ParvisError("no result JSON files found in " + ", ".join(str(i) for i in items))
    return out


def load_results(paths: Iterable[Path], skip_unknown: bool = False) -> tuple[list[tuple[Path, str, dict]], list[str]]:
    """[(path, kind, data)] and the skipped files with why. Unknown files are a ParvisError naming the
    file, unless `skip_unknown`."""
    results, skipped = [], []
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            reason = f"not readable JSON ({str(exc).splitlines()[0]})"
            if not skip_unknown:
                raise ParvisError(f"{path}: {reason}; pass parvis result files only") from None
            skipped.append(f"{path}: {reason}")
            continue
        kind = result_kind(data)
        if kind == "report":
            skipped.append(f"{path}: a parvis report's own JSON")
            continue
        if kind is None:
            reason = f"not a parvis result (known: {', '.join(f'bench {k}' for k in SUITES)}, optimize)"
            if not skip_unknown:
                raise ParvisError(f"{path}: {reason}; remove it from the arguments or use --skip-unknown")
            skipped.append(f"{path}: {reason}")
            continue
        results.append((path, kind, data))
    return results, skipped


# --------------------------------------------------------------------------- sections


def _scalar(v) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


_SKIP = object()


def settings_of(data: dict) -> dict:
    """The scalar settings of a result (top level and `machine`), the usual ones first."""

    def scalar_or_list(v):
        if _scalar(v):
            return v
        if isinstance(v, list) and all(_scalar(i) for i in v):
            return ", ".join(str(i) for i in v) or "none"
        return _SKIP

    flat = {}
    for k, v in data.items():
        if k not in ("benchmark", "rows", "candidates", "notes") and (v := scalar_or_list(v)) is not _SKIP:
            flat[k] = v
    for group in ("machine", "versions"):
        for k, v in (data.get(group) or {}).items():
            if (v := scalar_or_list(v)) is not _SKIP:
                flat.setdefault(k, v)
    if isinstance(data.get("info"), dict):  # batch: what actually ran the model
        for k, v in data["info"].items():
            if _scalar(v) and k != "artifact":
                flat.setdefault(k, v)
    first = {k: flat.pop(k) for k in SETTINGS_FIRST if k in flat}
    return first | flat


def _rows(data: dict, kind: str) -> tuple[list[dict], list[tuple[str, list[str], list[dict]]]]:
    """Table rows (flat dicts) and extra tables of a result."""
    extra: list[tuple[str, list[str], list[dict]]] = []
    if kind == "partition":
        solo, alone = data.get("solo") or {}, data.get("alone_same_share")
        rows = [{"run": "solo", "share": solo.get("share"), "threads": solo.get("threads"), "img_s": solo.get("img_s"),
                 "kept_vs_solo": 1.0}]  # fmt: skip
        if alone:
            rows.append(
                {"run": "alone on share", "share": alone["share"], "threads": alone["threads"], "img_s": alone["img_s"],
                 "kept_vs_solo": alone["img_s"] / solo["img_s"] if solo.get("img_s") else None,
                 "kept_vs_alone_same_share": 1.0}
            )  # fmt: skip
        rows += [{"run": f"job {r['job']}", **r} for r in data["rows"]]
        rows.append(
            {"run": "aggregate", "img_s": data.get("aggregate_img_s"), "kept_vs_solo": data.get("aggregate_vs_solo")}
        )
        return rows, extra
    if kind == "optimize":
        return [dict(r) for r in data["candidates"]], extra
    rows = [dict(r) for r in data["rows"]]
    if kind == "data" and data.get("decoders"):
        extra.append(("JPEG decoders (one core)", ["decoder", "img_s_per_core", "mean_abs_diff_vs_pil",
                                                     "reduced_img_s_per_core", "error"], data["decoders"]))  # fmt: skip
    if kind == "train" and data.get("end_to_end"):
        extra.append(("end to end on the real loader", list(data["end_to_end"]), [data["end_to_end"]]))
    if kind == "serve":
        for part in ("burst", "soak"):
            if isinstance(data.get(part), dict):
                flat = {k: v for k, v in data[part].items() if _scalar(v)}
                extra.append((part, list(flat), [flat]))
    if kind == "roofline" and data.get("peak_gflops"):
        peaks = [{"measure": k, "value": v} for k, v in data["peak_gflops"].items()]
        peaks.append({"measure": "memory_bandwidth_gbs", "value": data.get("memory_bandwidth_gbs")})
        extra.append(("device peaks (as parvis doctor measures them)", ["measure", "value"], peaks))
    return rows, extra


def _title(kind: str, data: dict) -> str:
    what = data.get("model") or data.get("source") or data.get("dataset") or ""
    label = "optimize" if kind == "optimize" else f"bench {kind}"
    size = data.get("input_size") or data.get("size") or data.get("crop")
    threads = data.get("threads")
    return (
        f"{label}: {what}"
        + (f", {size} px" if size else "")
        + (f", {data['device']}" if data.get("device") else "")
        + (f", {threads} thread(s)" if isinstance(threads, int) and kind != "partition" else "")
    )


def build_sections(results: list[tuple[Path, str, dict]], plots: bool = True) -> list[Section]:
    sections = []
    for path, kind, data in results:
        rows, extra = _rows(data, kind)
        columns = [c for c in COLUMNS[kind] if any(r.get(c) is not None for r in rows)]
        notes = [str(n) for n in data.get("notes") or []]
        if kind == "optimize" and data.get("chosen"):
            c = data["chosen"]
            what = " ".join(str(c[k]) for k in LABEL_KEYS if c.get(k) not in (None, "", "qdq"))
            more = ", ".join(f"{k} {c[k]}" for k in ("batch", "threads") if c.get(k) is not None)
            notes.insert(0, f"chosen: {what}" + (f" ({more})" if more else ""))
        section = Section(path, kind, data, _title(kind, data), settings_of(data), rows, columns, extra, notes)
        if plots:
            section.figure = plot(section)
        sections.append(section)
    return sections


# --------------------------------------------------------------------------- plots


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 - heavy: charts only

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    return buf.getvalue()


def _figure(width: float = 7.5, height: float = 3.6, ncols: int = 1):
    # The object API (no pyplot): no global backend or figure state, safe in a library and in threads.
    from matplotlib.figure import Figure  # noqa: PLC0415 - heavy: charts only

    fig = Figure(figsize=(width, height))
    axes = fig.subplots(1, ncols)
    return fig, axes


def _bars(labels: list[str], values: list[float], xlabel: str, colors=None, ref: float | None = 1.0):
    fig, ax = _figure(height=max(2.0, 0.45 * len(labels) + 1.0))
    y = list(range(len(labels)))
    ax.barh(y, values, color=colors or "#4c72b0")
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    if ref is not None:
        ax.axvline(ref, color="#555", lw=1, ls="--")
    for yi, v in zip(y, values, strict=True):
        ax.text(v, yi, f" {v:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, max([*values, ref or 0]) * 1.12)  # room for the value labels
    ax.grid(axis="x", alpha=0.3)
    return fig


def _plot_speedups(section: Section, key: str, label: Callable[[dict], str], xlabel: str):
    rows = [r for r in section.rows if isinstance(r.get(key), (int, float))]
    if not rows:
        return None
    return _bars([label(r) for r in rows], [r[key] for r in rows], xlabel)


def _plot_batch(section: Section):
    rows = [r for r in section.rows if r.get("img_s")]
    if not rows:
        return None
    fig, (a, b) = _figure(9, 3.4, ncols=2)
    xs = [r["batch"] for r in rows]
    a.plot(xs, [r["img_s"] for r in rows], "o-")
    a.set(xscale="log", xlabel="batch", ylabel="img/s", title="throughput")
    b.plot(xs, [r["latency_ms_p50"] for r in rows], "o-", label="p50")
    if all("latency_ms_p90" in r for r in rows):
        b.plot(xs, [r["latency_ms_p90"] for r in rows], "s--", label="p90")
    b.set(xscale="log", yscale="log", xlabel="batch", ylabel="ms per batch", title="latency")
    b.legend()
    for ax in (a, b):
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _plot_serve(section: Section):
    rows = [r for r in section.rows if r.get("throughput_rps") is not None]
    if not rows:
        return None
    fig, (a, b) = _figure(9, 3.4, ncols=2)
    xs = [r["concurrency"] for r in rows]
    series = [("throughput_rps", "p99_ms", "parvis batching", "o-")]
    if any(r.get("off_throughput_rps") is not None for r in rows):
        series.append(("off_throughput_rps", "off_p99_ms", "parvis batch 1", "s--"))
    for key in sorted({k for r in rows for k in r if k.startswith("peer_") and k.endswith("_rps")}):
        series.append((key, key[:-4] + "_p99_ms", key[5:-4], "^:"))
    for rps, p99, label, marker in series:
        a.plot(xs, [r.get(rps) for r in rows], marker, label=label)
        b.plot(xs, [r.get(p99) for r in rows], marker, label=label)
    if any(r.get("ceiling_rps") for r in rows):
        a.plot(xs, [r.get("ceiling_rps") for r in rows], "k:", lw=1, label="CPU-sharing ceiling")
    a.set(xscale="log", xlabel="concurrent clients", ylabel="requests/s", title="throughput")
    b.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="ms", title="p99 latency")
    for ax in (a, b):
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.grid(alpha=0.3)
    a.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _plot_video(section: Section):
    rows = [r for r in section.rows if r.get("aggregate_fps")]
    if not rows:
        return None
    labels = [f"{r['streams']} stream(s), batch {r['batch']}" for r in rows]
    return _bars(labels, [r.get("ceiling_ratio") or 0.0 for r in rows], "aggregate fps / CPU-sharing ceiling")


def _plot_learn(section: Section):
    """Val metric against training seconds, parvis and the peer on one axis."""
    fig, ax = _figure()
    metric = section.data.get("metric", "metric")
    for side, style in (("parvis", "o-"), ("peer", "s--")):
        curve = (section.data.get(side) or {}).get("curve") or []
        if curve:
            ax.plot([p["seconds"] for p in curve], [p["metric"] for p in curve], style, label=side)
    target = section.data.get("target")
    if target is not None:
        ax.axhline(target, color="grey", linewidth=0.8, linestyle=":", label=f"target {target}")
    ax.set_xlabel("training seconds (evaluation excluded)")
    ax.set_ylabel(f"val {metric}")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _plot_roc(section: Section):
    """Image-level and pixel-level ROC curves of every method, side by side."""
    rows = [r for r in section.rows if (r.get("image_roc") or {}).get("fpr")]
    if not rows:
        return None
    fig, axes = _figure(9, 3.8, ncols=2)
    for ax, key, title in zip(axes, ("image_roc", "pixel_roc"), ("images (OK/NG)", "pixels"), strict=True):
        for r in rows:
            curve = r.get(key) or {}
            if curve.get("fpr"):
                auroc = r.get(key.replace("_roc", "_auroc"))
                label = r.get("method", "?") + (f" (AUROC {auroc:.4f})" if auroc is not None else "")
                ax.plot(curve["fpr"], curve["tpr"], label=label)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title=title, xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def _plot_scaling(section: Section):
    fig, (a, b) = _figure(9, 3.4, ncols=2)
    any_rows, ticks = False, set()
    for mode, marker in (("threads", "o-"), ("processes", "s--"), ("gpus", "^-")):
        rows = [r for r in section.rows if r.get("mode") == mode and r.get("img_s")]
        if not rows:
            continue
        any_rows = True
        xs = [r.get("gpus") or r.get("cores") or r.get("processes") for r in rows]
        ticks.update(xs)
        a.plot(xs, [r["img_s"] for r in rows], marker, label=mode)
        if all(r.get("efficiency") is not None for r in rows):
            b.plot(xs, [r["efficiency"] for r in rows], marker, label=mode)
    if not any_rows:
        return None
    a.set(xlabel="cores (GPUs for gpus)", ylabel="img/s", title="throughput")
    b.set(xlabel="cores (GPUs for gpus)", ylabel="parallel efficiency", title="efficiency", ylim=(0, 1.2))
    b.axhline(1.0, color="#555", lw=1, ls="--")
    for ax in (a, b):
        ax.set_xticks(sorted(ticks))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def _plot_roofline(section: Section):
    rows = [r for r in section.rows if r.get("achieved_gflops")]
    if not rows:
        return None
    data = section.data
    fig, ax = _figure(7.5, 4.2)
    bw = data.get("memory_bandwidth_gbs")
    intensities = [r["arithmetic_intensity"] for r in rows if r.get("arithmetic_intensity")]
    lo = min([*intensities, 1.0]) / 4
    hi = max([*intensities, 1.0]) * 8
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3"]
    for i, r in enumerate(rows):
        color = colors[i % len(colors)]
        peak = r.get("peak_gflops")
        if peak:
            ridge = max(peak / bw if bw else lo, lo)
            ax.plot([ridge, hi], [peak, peak], color=color, lw=1.5)
            ax.text(
                ridge * 1.15, peak * 1.06, f"{r['precision']} peak {peak:.0f}", va="bottom", fontsize=8, color=color
            )
        x = r.get("arithmetic_intensity")
        if x:
            ax.plot([x], [r["achieved_gflops"]], "o", color=color, ms=8, label=f"{r['precision']} achieved")
    if bw:
        top = max(r.get("peak_gflops") or 0 for r in rows) or max(r["achieved_gflops"] for r in rows)
        ax.plot([lo, top / bw], [lo * bw, top], color="#555", lw=1.5, ls="--", label=f"memory {bw:.1f} GB/s")
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP/byte, lower bound)", ylabel="GFLOP/s")
    ax.set_ylim(top=max([r.get("peak_gflops") or 0 for r in rows] + [r["achieved_gflops"] for r in rows]) * 1.8)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def _plot_partition(section: Section):
    rows = [r for r in section.rows if r.get("run", "").startswith("job ")]
    if not rows:
        return None
    kind = section.data.get("share_kind", "share")
    labels = [f"{r['run']}\n({kind} {r.get('share')})" for r in rows]
    fig, ax = _figure(height=max(2.2, 0.6 * len(rows) + 1.2))
    y = list(range(len(rows)))
    h = 0.38
    ax.barh([v - h / 2 for v in y], [r["kept_vs_solo"] for r in rows], h, label="kept vs solo (whole device)")
    alone = [r.get("kept_vs_alone_same_share") for r in rows]
    if all(a is not None for a in alone):
        ax.barh([v + h / 2 for v in y], alone, h, label="kept vs alone on the same share")
    fair = section.data.get("fair_share")
    if fair:
        ax.axvline(fair, color="#c44e52", lw=1, ls=":", label=f"fair share 1/{section.data.get('jobs')}")
    ax.axvline(1.0, color="#555", lw=1, ls="--")
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel("fraction of throughput kept")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return fig


def _plot_data(section: Section):
    rows = section.rows
    if not rows:
        return None
    fig, ax = _figure()
    x = list(range(len(rows)))
    ax.bar([i - 0.2 for i in x], [r["baseline_img_s"] for r in rows], 0.4, label="torchvision baseline")
    ax.bar([i + 0.2 for i in x], [r["parvis_img_s"] for r in rows], 0.4, label="parvis")
    ax.set_xticks(x, [str(r["workers"]) for r in rows])
    ax.set(xlabel="loader workers", ylabel="img/s")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return fig


LABEL_KEYS = ("variant", "runtime", "precision", "int8_scheme")


def _plot_optimize(section: Section):
    rows = [r for r in section.rows if isinstance(r.get("speedup_vs_eager_fp32"), (int, float))]
    if not rows:
        return None
    colors = ["#55a868" if r.get("chosen") else ("#4c72b0" if r.get("status") == "ok" else "#c44e52") for r in rows]
    labels = [
        " ".join(str(r[k]) for k in LABEL_KEYS if r.get(k) not in (None, "", "base", "qdq"))
        + f" b{r.get('batch')}"
        + (f" t{r['threads']}" if r.get("threads") else "")
        + f" [{r.get('status')}]"
        for r in rows
    ]
    return _bars(labels, [r["speedup_vs_eager_fp32"] for r in rows], "speedup vs eager fp32 (green: chosen)", colors)


def _rt_label(r: dict) -> str:
    return " ".join(str(r[k]) for k in ("runtime", "precision", "layout") if r.get(k) not in (None, "-"))


PLOTS: dict[str, tuple[str, Callable[[Section], object]]] = {
    "runtime": ("speedup vs eager fp32 per runtime and precision",
                lambda s: _plot_speedups(s, "speedup_vs_eager_fp32", _rt_label, "speedup vs eager fp32")),
    "train": ("training speedup vs fp32 per precision and layout",
              lambda s: _plot_speedups(s, "speedup_vs_fp32", lambda r: r["config"], "speedup vs fp32")),
    "precision": ("speedup vs fp32 per precision",
                  lambda s: _plot_speedups(s, "speedup_vs_fp32", _rt_label, "speedup vs fp32")),
    "data": ("loader throughput per worker count", _plot_data),
    "batch": ("throughput and latency vs batch size", _plot_batch),
    "scaling": ("throughput and parallel efficiency vs cores", _plot_scaling),
    "roofline": ("roofline: achieved vs peak GFLOP/s", _plot_roofline),
    "partition": ("throughput each concurrent job keeps", _plot_partition),
    "optimize": ("optimize candidates: speedup vs eager fp32", _plot_optimize),
    "serve": ("HTTP serving: throughput and p99 latency vs concurrent clients", _plot_serve),
    "video": ("multi-stream video: share of the CPU-sharing ceiling reached", _plot_video),
    "learn": ("learning curves: val metric against training seconds", _plot_learn),
    "inspection": ("ROC curves on the test split: images (OK/NG) and pixels", _plot_roc),
}  # fmt: skip


def plot(section: Section) -> tuple[str, bytes] | None:
    caption, make = PLOTS[section.kind]
    fig = make(section)
    return None if fig is None else (caption, _png(fig))


# --------------------------------------------------------------------------- rendering


def fmt(value, column: str = "") -> str:
    """A cell as text: counts with separators, ratios to 2 decimals, errors in scientific notation."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    if isinstance(value, float):
        if "err" in column or "diff" in column:
            return f"{value:.1e}"
        if column.startswith("speedup") or column == "speedup":
            return f"{value:.2f}x"
        if "fraction" in column:
            return f"{value:.1%}"
        if "kept" in column or "efficiency" in column:
            return f"{value:.2f}"
        if "img_s" in column or "gflops" in column:
            return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.1f}"
        if value == 0 or abs(value) >= 1:
            return f"{value:.2f}"
        if abs(value) >= 0.01:
            return f"{value:.3f}"
        return f"{value:.2e}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _numeric(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _table_html(columns: list[str], rows: list[dict], cls: str = "rows") -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = []
    for r in rows:
        cells = "".join(
            f"<td>{_e(fmt(r.get(c), c))}</td>" if _numeric(r.get(c)) else f'<td class="t">{_e(fmt(r.get(c), c))}</td>'
            for c in columns
        )
        status = r.get("status")
        attr = f' class="status-{_e(status)}"' if status else ""
        body.append(f"<tr{attr}>{cells}</tr>")
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _settings_html(d: dict) -> str:
    items = "".join(f"<span><b>{_e(k)}</b> {_e(fmt(v, k))}</span>" for k, v in d.items())
    return f'<div class="settings">{items}</div>'


def _kv_html(d: dict) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(fmt(v, k))}</td></tr>" for k, v in d.items())
    return f'<table class="kv">{rows}</table>'


STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1100px;
       color: #222; background: #fff; }
h1 { margin-bottom: 4px; } h2 { margin-top: 36px; border-bottom: 2px solid #4c72b0; padding-bottom: 4px; }
.meta { color: #555; margin: 2px 0 12px; }
table { border-collapse: collapse; margin: 10px 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #eef1f7; } td:first-child, th:first-child { text-align: left; }
td.t { text-align: left; } table.kv th { text-align: left; } table.kv td { text-align: left; }
tr.status-ok td { background: #f3faf4; } tr[class^="status-"]:not(.status-ok) td { background: #fbf0f0; }
figure { margin: 12px 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 13px; }
.settings { display: flex; flex-wrap: wrap; gap: 4px 18px; font-size: 13px; margin: 8px 0; }
.settings b { color: #4c72b0; font-weight: 600; }
.note { color: #555; font-size: 13px; margin: 2px 0; } .skipped { color: #a33; }
"""


def render_html(sections: list[Section], skipped: list[str] | None = None, title: str = "parvis report") -> str:
    overview = _overview(sections)
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">generated {_e(time.strftime("%Y-%m-%d %H:%M:%S"))} by parvis {_e(__version__)} '
        f"from {len(sections)} result file(s)</p>",
        _kv_html(overview),
    ]
    for s in skipped or []:
        parts.append(f'<p class="note skipped">skipped {_e(s)}</p>')
    parts.append("<ul>" + "".join(f'<li><a href="#r{i}">{_e(s.title)}</a></li>' for i, s in enumerate(sections)))
    parts.append("</ul>")
    for i, s in enumerate(sections):
        parts.append(f'<section id="r{i}"><h2>{_e(s.title)}</h2>')
        parts.append(f'<p class="meta">{_e(s.path)}</p>')
        parts.append(_settings_html(s.settings))
        if s.figure:
            caption, png = s.figure
            b64 = base64.b64encode(png).decode("ascii")
            parts.append(
                f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{b64}">'
                f"<figcaption>{_e(caption)}</figcaption></figure>"
            )
        if s.rows and s.columns:
            parts.append(_table_html(s.columns, s.rows))
        for name, columns, rows in s.extra_tables:
            cols = [c for c in columns if any(r.get(c) is not None for r in rows)]
            parts.append(f"<h3>{_e(name)}</h3>" + _table_html(cols, rows))
        parts += [f'<p class="note">{_e(n)}</p>' for n in s.notes]
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _overview(sections: list[Section]) -> dict:
    """Devices, versions and machines across all results (distinct values)."""

    def distinct(*keys: str) -> str:
        seen: list[str] = []
        for s in sections:
            for k in keys:
                v = s.settings.get(k)
                if v not in (None, "") and str(v) not in seen:
                    seen.append(str(v))
                    break
        return ", ".join(seen) or "-"

    return {
        "results": ", ".join(f"{s.kind}" for s in sections),
        "devices": distinct("device"),
        "cpu": distinct("cpu"),
        "usable cores": distinct("usable_cores"),
        "gpus": distinct("gpus"),
        "torch": distinct("torch"),
        "python": distinct("python"),
        "parvis (results)": distinct("parvis"),
        "load average (1 min) while measuring": distinct("load_average_1m"),
    }


def flat_rows(sections: list[Section]) -> list[dict]:
    """Every table row of every section with the file and kind, nested values JSON-encoded (for CSV)."""
    out = []
    for s in sections:
        for r in s.rows:
            row = {"file": str(s.path), "kind": s.kind, "model": s.data.get("model")}
            for k, v in r.items():
                row[k] = v if _scalar(v) else json.dumps(v)
            out.append(row)
    return out


def write_report(
    inputs: Iterable[str | Path], out: str | Path, skip_unknown: bool = False, title: str = "parvis report"
) -> dict:
    """Render `inputs` (files, folders of *.json) to `out` (.html), with `out`.json and `out`.csv beside it."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ParvisError(f"--out {out}: name an .html file (the JSON and CSV are written beside it)")
    results, skipped = load_results(expand_paths(inputs), skip_unknown)
    if not results:
        raise ParvisError("no parvis result files among the arguments: " + "; ".join(skipped))
    sections = build_sections(results)
    page = render_html(sections, skipped, title)
    rows = flat_rows(sections)
    json_doc = {
        REPORT_KEY: {"version": __version__, "generated": time.strftime("%Y-%m-%dT%H:%M:%S"), "html": out.name},
        "results": [
            {"file": str(s.path), "kind": s.kind, "title": s.title, "settings": s.settings, "rows": s.rows,
             "notes": s.notes}
            for s in sections
        ],
        "skipped": skipped,
    }  # fmt: skip
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    json_path, csv_path = out.with_suffix(".json"), out.with_suffix(".csv")
    atomic_write_text(json_path, json.dumps(json_doc, indent=2, default=str) + "\n")
    atomic_write_text(csv_path, buf.getvalue())
    atomic_write_text(out, page)
    return {
        "html": str(out),
        "json": str(json_path),
        "csv": str(csv_path),
        "results": len(sections),
        "plots": sum(1 for s in sections if s.figure),
        "rows": len(rows),
        "skipped": skipped,
    }
