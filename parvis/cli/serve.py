"""`parvis serve MODEL_OR_REPO...`: an HTTP inference server with dynamic batching.

MODEL_OR_REPO: a checkpoint, an .onnx/.pt2 artifact (an ONNX file made elsewhere serves raw tensors on
/infer, and images once its preprocessing is given), a `parvis optimize` folder, a registered or zoo name
(with --weights), or a model repository (one subfolder per model, optional model.yaml each)."""

from __future__ import annotations

import ipaddress
import logging
import os

from parvis.cli.model_args import add_model_args, preprocess_from
from parvis.cli.output import console
from parvis.errors import ParvisError


class _ServeDefaults:
    """parvis.serve.models.ModelConfig's defaults, copied so `parvis --help` does not import torch and the
    serving stack (tests/test_cli_startup.py checks they stay equal)."""

    precision = "auto"
    device = "auto"
    threads = 0
    instances = 1
    max_batch_size = 16
    max_queue_delay_ms = 5.0
    max_queue = 128
    timeout_ms = 30000.0


def add_parser(sub) -> None:
    d = _ServeDefaults
    p = sub.add_parser("serve", help="serve models over HTTP with dynamic batching, metrics and overload protection")
    p.add_argument(
        "models",
        nargs="+",
        metavar="MODEL_OR_REPO",
        help="checkpoint, artifact, optimize folder, "
        "registered name, or a model repository folder; a model's name is its file or folder stem, or NAME "
        "in NAME=MODEL",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="required to bind a non-loopback --host (e.g. 0.0.0.0): the server is then reachable "
        "from the network; set an API key",
    )
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size, help=f"default {d.max_batch_size}")
    p.add_argument(
        "--max-queue-delay-ms",
        type=float,
        default=d.max_queue_delay_ms,
        help=f"longest a request waits for companions while more are on their way (default "
        f"{d.max_queue_delay_ms:g}); 0 = no batching delay",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=d.max_queue,
        help=f"requests admitted per model (queued or being decoded); beyond it 503 (default {d.max_queue})",
    )
    p.add_argument(
        "--instances",
        type=int,
        default=d.instances,
        help="model copies sharing the queue (CPU: they split the cores; GPU: one per device)",
    )
    p.add_argument("--threads", type=int, default=d.threads, help="threads per instance (default: cores / instances)")
    p.add_argument("--timeout-ms", type=float, default=d.timeout_ms, help="per-request limit, then 504")
    p.add_argument("--runtime", default="", help="torch|torch-compile|onnxruntime|openvino (default: by artifact)")
    p.add_argument("--precision", default=d.precision)
    p.add_argument("--device", default=d.device)
    p.add_argument(
        "--api-key",
        default=None,
        help="require this key on every endpoint but /healthz and /readyz "
        "(default: the PARVIS_API_KEY environment variable, if set)",
    )
    p.add_argument("--max-body-mb", type=float, default=20.0, help="largest request body (default 20 MB), then 413")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="largest image in pixels, checked before decoding (default 89,478,485, Pillow's), then 413",
    )
    p.add_argument("--workers", type=int, default=0, help="decode/preprocess threads (default: usable cores)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add_model_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from parvis.config import load_config
    from parvis.serve.app import API_KEY_ENV, ServerConfig, run_server
    from parvis.serve.models import ModelConfig, resolve_specs

    if not _is_loopback(args.host) and not args.allow_remote:
        raise ParvisError(
            f"--host {args.host} is reachable from the network; add --allow-remote to mean it "
            "(and set --api-key), or keep the default 127.0.0.1"
        )
    if not 0 <= args.port <= 65535:
        raise ParvisError(f"--port {args.port} is not a port number; use 1-65535")
    defaults = load_config(
        ModelConfig,
        values={
            "runtime": args.runtime, "precision": args.precision, "device": args.device, "threads": args.threads,
            "instances": args.instances, "max_batch_size": args.max_batch_size,
            "max_queue_delay_ms": args.max_queue_delay_ms, "max_queue": args.max_queue, "timeout_ms": args.timeout_ms,
        },
    )  # fmt: skip
    specs = resolve_specs(args.models, defaults)
    given = preprocess_from(args)
    for spec in specs:
        spec.weights, spec.given = args.weights, given
    config = ServerConfig(
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        workers=args.workers,
    )
    if args.max_pixels:
        config.max_pixels = args.max_pixels
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s: %(name)s: %(message)s")
    con = console()
    for spec in specs:
        c = spec.config
        con.print(
            f"serving {spec.name} from {c.source}: max batch {c.max_batch_size}, delay {c.max_queue_delay_ms:g} ms, "
            f"queue {c.max_queue}, {c.instances} instance(s)"
        )
    auth = "API key required" if config.api_key else "no API key"
    con.print(f"listening on http://{args.host}:{args.port} ({auth}); /readyz turns 200 once models are warm")
    run_server(specs, config, args.host, args.port, log_level=args.log_level)
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
