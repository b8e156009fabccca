"""`parvis doctor [--json]`: hardware inventory, measured micro-benchmarks and advice."""

from __future__ import annotations

import json

from parvis.cli.output import console


def add_parser(sub) -> None:
    p = sub.add_parser("doctor", help="inventory the hardware, measure it, and advise")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    p.add_argument("--quick", action="store_true", help="shorter timings (about 3 s instead of 10-15 s)")
    p.set_defaults(func=run)


def run(args) -> int:
    from parvis.bench.doctor import run_doctor

    if args.json:
        print(json.dumps(run_doctor(quick=args.quick), indent=2))
        return 0
    con = console()
    with con.status("measuring (about 10-15 s)..."):
        report = run_doctor(quick=args.quick)
    show(report, con)
    return 0


def show(report: dict, con) -> None:
    from rich.table import Table

    v = report["versions"]
    con.print(f"[bold]parvis {v['parvis']}[/]  torch {v['torch']}  CUDA {v['cuda'] or '-'}  Python {v['python']}")
    cpu = report["cpu"]
    con.print(
        f"[bold]CPU[/] {cpu['model']} ({cpu['arch']}): {cpu['usable_cores']} usable of {cpu['logical_cores']} "
        f"logical cores, torch kernels {cpu['torch_capability']}, {cpu['torch_threads']} threads"
    )
    con.print(f"    ISA: {', '.join(cpu['features']) or '-'}")
    table = Table(title="measured", title_justify="left")
    for col in ("device", "fp32", "tf32", "bf16", "fp16", "memory", "host->device"):
        table.add_column(col, justify="right" if col != "device" else "left")
    for key, entry in report.items():
        if key != "cpu" and not key.startswith("cuda:") and key != "mps":
            continue
        mm = entry.get("matmul", {})
        h2d = entry.get("h2d")
        table.add_row(
            key if key != "cpu" else "cpu",
            *(
                f"{mm[f'{p}_gflops']:,.0f} GFLOP/s" if f"{p}_gflops" in mm else "-"
                for p in ("fp32", "tf32", "bf16", "fp16")
            ),
            f"{entry['memory_bandwidth_gbs']:.1f} GB/s" if "memory_bandwidth_gbs" in entry else "-",
            f"{h2d['pageable_gbs']:.1f} pageable / {h2d['pinned_gbs']:.1f} pinned GB/s" if h2d else "-",
        )
    con.print(table)
    jd = cpu["jpeg_decode"]
    con.print(f"JPEG decode ({jd['image']}, {jd['decoder']}): {jd['img_s_per_core']:,.0f} img/s per core")
    for key, entry in report.items():
        if key.startswith("cuda:"):
            cc = ".".join(map(str, entry["compute_capability"]))
            mig = {True: "on", False: "off", None: "unknown"}[entry["mig_mode"]]
            con.print(
                f"[bold]{key}[/] {entry['name']}, {entry['memory_gb']} GB, compute {cc}, MIG {mig}"
                + "".join(f"\n    {m['name']} ({m['uuid']})" for m in entry["mig_instances"])
            )
    prec = report["precision"]
    con.print(
        f"precision auto on {report['default_device']}: train {prec['train']['name']}, infer {prec['infer']['name']}"
    )
    for name, rt in report["runtimes"].items():
        if rt.get("available"):
            extra = rt.get("providers") or rt.get("devices") or []
            con.print(f"runtime {name} {rt.get('version', '')}: {', '.join(extra)}")
        else:
            con.print(f"runtime {name}: not available ({rt.get('error', '')})")
    con.print("[bold]advice[/]")
    for tip in report["advice"]:
        con.print(f"  - {tip}")
    con.print(f"({report['elapsed_s']} s)")
