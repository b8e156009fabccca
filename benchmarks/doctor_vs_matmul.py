"""Check `parvis doctor --json`'s CPU matmul figures against a plain torch.matmul loop run right after it.

Usage: python benchmarks/doctor_vs_matmul.py [--json OUT]
Prints one row per precision: doctor's GFLOP/s, the plain loop's GFLOP/s (4096 x 4096 and 1024 x 1024,
timed with time.perf_counter, no parvis code), and their ratio.
"""

import argparse
import json
import subprocess
import sys
import time

import torch


def plain_gflops(dtype: torch.dtype, n: int, seconds: float = 2.0) -> float:
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.matmul(a, b)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.matmul(a, b)
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    doctor = json.loads(
        subprocess.run(
            [sys.executable, "-m", "parvis", "doctor", "--json"], capture_output=True, text=True, check=True
        ).stdout
    )
    doctor_s = time.perf_counter() - t0
    rows = []
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        ours = doctor["cpu"]["matmul"][f"{name}_gflops"]
        for n in (4096, 1024):
            plain = plain_gflops(dtype, n)
            rows.append(
                {
                    "precision": name,
                    "doctor_gflops": ours,
                    "plain_n": n,
                    "plain_gflops": round(plain, 1),
                    "ratio": round(ours / plain, 3),
                }
            )
    print(f"parvis doctor --json: {doctor_s:.1f} s wall (doctor's own elapsed_s {doctor['elapsed_s']})")
    print("| precision | doctor GFLOP/s | plain matmul n | plain GFLOP/s | doctor / plain |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        cells = [r["precision"], f"{r['doctor_gflops']:.1f}", r["plain_n"], f"{r['plain_gflops']:.1f}"]
        print("| " + " | ".join(map(str, cells)) + f" | {r['ratio']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "doctor_wall_s": round(doctor_s, 1),
                    "rows": rows,
                    "torch": torch.__version__,
                    "cpu": doctor["cpu"]["model"],
                    "threads": torch.get_num_threads(),
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
