"""Shards of an input listing and their Parquet parts: the unit of work, of output and of resume.

    store = ShardStore(out, files, shard_size=1000, model_id="runs/x/best.pt", engine="ray")
    store.todo()                      # shard ids without a finished part (all of them on a first run)
    store.write(shard_id, records)    # DIR/results/part-00003.parquet, atomically (temp file, rename)
    store.summary(seconds, extra)     # DIR/summary.json: images, rows, errors, duplicates, missing, img_s

The input listing is fixed by the first run (DIR/manifest.json: the files' hash, count and shard size):
a rerun with the same --out and the same inputs skips every shard whose part exists, and a rerun with
other inputs is refused instead of mixing two jobs in one folder. A part appears only complete (it
is written to a temporary name and renamed), so a job killed at any moment leaves whole parts only.
Every engine writes the same parts, so a job begun on Ray can be finished by torchrun and the reverse.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from parvis.errors import ParvisError
from parvis.io import atomic_write_text

SHARD_SIZE = 1000  # images per part at most: small enough to redo after a crash, large enough for Parquet
MIN_SHARDS = 16  # a small job still splits into this many parts, so 2-16 ranks or actors all get work


def default_shard_size(images: int) -> int:
    """--shard-size when not given: 1,000, or fewer so that a small job still has MIN_SHARDS parts. It
    depends on the image count only, so every engine resumes every other's job."""
    return max(1, min(SHARD_SIZE, -(-images // MIN_SHARDS)))


COLUMNS = ("path", "shard", "label", "score", "result", "error", "model", "node")


def _pyarrow():
    try:
        import pyarrow as pa  # noqa: PLC0415 (optional dependency: the scale extra)
        import pyarrow.parquet as pq  # noqa: PLC0415
    except ImportError as exc:
        raise ParvisError("--engine ray|torchrun write Parquet: pip install 'parvis[scale]' (or pyarrow)") from exc
    return pa, pq


def require_single_images(meta, source: str) -> None:
    """Scale-out predicts single images; a stereo model takes pairs (its own `parvis predict LEFT RIGHT`)."""
    if meta.task == "stereo":
        raise ParvisError(f"{source}: a stereo model takes pairs; --engine ray|torchrun predict single images")


def plan(files: list[Path], shard_size: int) -> list[list[Path]]:
    """Consecutive runs of `shard_size` files (the last may be shorter)."""
    if shard_size < 1:
        raise ParvisError(f"--shard-size {shard_size}: must be at least 1")
    return [files[i : i + shard_size] for i in range(0, len(files), shard_size)]


def headline(record: dict) -> tuple[str | None, float | None]:
    """(label, score) that sum up one image's result: the top class, the best detection, or the largest
    non-background class of a mask."""
    if "class_name" in record:
        return record["class_name"], float(record["score"])
    if "detections" in record:
        best = max(record["detections"], key=lambda d: d["score"], default=None)
        return (best["class_name"], float(best["score"])) if best else (None, None)
    shares = {k: v for k, v in record.get("class_shares", {}).items() if k != record.get("background", "background")}
    if shares:
        name = max(shares, key=shares.get)
        return name, float(shares[name])
    return None, None


def from_transport(row: dict) -> dict:
    """A row back from a columnar batch, where missing strings travel as "" and a missing score as NaN."""
    out = dict(row)
    for key in ("label", "result", "error"):
        out[key] = out.get(key) or None
    score = out.get("score")
    out["score"] = None if score is None or score != score else float(score)
    return out


def to_row(record: dict, shard: int, model_id: str, node: str) -> dict:
    """One Parquet row from a predict record ({"file", task fields..., "error"?})."""
    error = record.get("error")
    fields = {k: v for k, v in record.items() if k not in ("file", "error")}
    label, score = headline(fields) if error is None else (None, None)
    return {
        "path": str(record["file"]),
        "shard": shard,
        "label": label,
        "score": score,
        "result": json.dumps(fields) if error is None else None,
        "error": error,
        "model": model_id,
        "node": node,
    }


class ShardStore:
    """DIR/manifest.json, DIR/results/part-NNNNN.parquet and DIR/summary.json of one job."""

    def __init__(self, out: str | Path, files: list[Path], shard_size: int | None, model_id: str, engine: str):
        shard_size = default_shard_size(len(files)) if shard_size is None else shard_size
        self.out = Path(out)
        self.parts = self.out / "results"
        self.shards = plan(files, shard_size)
        self.files, self.model_id, self.engine = files, model_id, engine
        digest = hashlib.sha256("\n".join(str(f) for f in files).encode()).hexdigest()
        self.manifest = {"images": len(files), "shard_size": shard_size, "inputs_sha256": digest, "model": model_id}

    def open(self) -> None:
        """Write the manifest on a first run; on a rerun check that it describes the same job."""
        path = self.out / "manifest.json"
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise ParvisError(f"{path}: unreadable ({exc}); remove it or use another --out") from exc
            for key in ("images", "shard_size", "inputs_sha256", "model"):
                if old.get(key) != self.manifest[key]:
                    what = "inputs" if key in ("images", "inputs_sha256") else key.replace("_", " ")
                    raise ParvisError(
                        f"{self.out}: holds the results of a job with other {what} ({key} {old.get(key)!r}, "
                        f"now {self.manifest[key]!r}); use another --out, or the same inputs to resume"
                    )
        else:
            self.parts.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(self.manifest, indent=2) + "\n")
        self.parts.mkdir(parents=True, exist_ok=True)

    def part(self, shard: int) -> Path:
        return self.parts / f"part-{shard:05d}.parquet"

    def todo(self) -> list[int]:
        return [s for s in range(len(self.shards)) if not self.part(s).exists()]

    def write(self, shard: int, rows: list[dict]) -> Path:
        """The shard's rows (one per image, in input order) as one Parquet part, atomically."""
        pa, pq = _pyarrow()

        expected = [str(f) for f in self.shards[shard]]
        order = {p: i for i, p in enumerate(expected)}
        got = sorted(rows, key=lambda r: order.get(r["path"], len(expected)))
        if [r["path"] for r in got] != expected:
            raise RuntimeError(f"shard {shard}: {len(rows)} rows do not match its {len(expected)} images")
        schema = pa.schema(
            [("path", pa.string()), ("shard", pa.int32()), ("label", pa.string()), ("score", pa.float64()),
             ("result", pa.string()), ("error", pa.string()), ("model", pa.string()), ("node", pa.string())]
        )  # fmt: skip
        table = pa.Table.from_pylist([{k: r.get(k) for k in COLUMNS} for r in got], schema=schema)
        path = self.part(shard)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def summary(self, seconds: float, processed: int, extra: dict | None = None) -> dict:
        """Count the rows of every part (all runs of the job, not only this one) and write summary.json."""
        _, pq = _pyarrow()
        paths: list[str] = []
        errors, per_node = 0, {}
        for part in sorted(self.parts.glob("part-*.parquet")):
            table = pq.read_table(part, columns=["path", "error", "node"])
            paths += table.column("path").to_pylist()
            errors += len(table) - table.column("error").null_count
            for node in table.column("node").to_pylist():
                per_node[node] = per_node.get(node, 0) + 1
        expected = {str(f) for f in self.files}
        seen = set(paths)
        out = {
            "engine": self.engine,
            "model": self.model_id,
            "images": len(self.files),
            "rows": len(paths),
            "errors": int(errors),
            "duplicates": len(paths) - len(seen),
            "missing": len(expected - seen),
            "shards": len(self.shards),
            "processed_this_run": processed,
            "seconds": round(seconds, 3),
            "img_s": round(processed / seconds, 2) if seconds > 0 else 0.0,
            "rows_per_node": per_node,
            **(extra or {}),
        }
        atomic_write_text(self.out / "summary.json", json.dumps(out, indent=2) + "\n")
        return out
