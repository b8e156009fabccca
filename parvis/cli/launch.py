"""torchrun's launcher flags for commands that run on several processes (`parvis train`, `parvis predict
--engine torchrun`): `--nproc N` re-runs the command under torch.distributed.run with N local processes,
`--nnodes --node-rank --rdzv-endpoint` join a multi-node run; `torchrun ... -m parvis ...` works directly."""

from __future__ import annotations

import os
import subprocess
import sys

from parvis.errors import ParvisError

LAUNCHER_FLAGS = ("--nproc", "--nnodes", "--node-rank", "--rdzv-endpoint")


def add_launcher_args(p, nproc_default: int = 1) -> None:
    p.add_argument("--nproc", type=int, default=nproc_default, help="local processes (launches torch.distributed.run)")
    p.add_argument("--nnodes", default=None, help="nodes for a multi-node run (torchrun's --nnodes)")
    p.add_argument("--node-rank", dest="node_rank", type=int, default=None, help="this node's rank")
    p.add_argument("--rdzv-endpoint", dest="rdzv_endpoint", default=None, help="host:port of the rendezvous")


def relaunch_under_torchrun(args, argv: list[str]) -> int:
    """Re-run this command under torch.distributed.run, minus the launcher flags."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.nproc)]
    if args.nnodes or args.rdzv_endpoint:
        if not args.rdzv_endpoint:
            raise ParvisError("--nnodes needs --rdzv-endpoint HOST:PORT (the same on every node)")
        cmd += ["--nnodes", str(args.nnodes or 1), "--rdzv-backend", "c10d", "--rdzv-endpoint", args.rdzv_endpoint]
        if args.node_rank is not None:
            cmd += ["--node-rank", str(args.node_rank)]
    else:
        cmd += ["--standalone"]
    cmd += ["-m", "parvis", *without_launcher_flags(argv)]
    # torchrun would set 1 thread per process (and say so); the node's cores shared by its processes instead.
    env = {**os.environ}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))
    return subprocess.call(cmd, env=env)


def without_launcher_flags(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in LAUNCHER_FLAGS:
            skip = "=" not in a
            continue
        out.append(a)
    return out
