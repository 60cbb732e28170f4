"""``facekd serve``: the HTTP API on uvicorn (facekd.serve does the work)."""

from __future__ import annotations

import argparse
from pathlib import Path

from facekd.cli.args import onnx_model_arg
from facekd.deploy.photos import DEFAULT_DETECTORS


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve embed, verify and identify over HTTP (FastAPI on uvicorn; OpenAPI page at /docs)"
    )
    p.add_argument("--model", type=onnx_model_arg, required=True,
                   help="exported .onnx model (facekd export), or a shipped one's name")
    p.add_argument("--gallery", required=True,
                   help="gallery: a SQLite file, or a postgresql://user@host:port/db URL shared by several "
                        "servers; created for --model when missing")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1); anything but loopback needs --api-key-file")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--api-key-file", type=Path,
                   help="file of accepted API keys, one a line; clients send one as X-API-Key")
    p.add_argument("--workers-threads", type=int, default=2, dest="worker_threads",
                   help="threads that detect and embed photos at once (default 2)")
    p.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body, MiB (default 16; 413 beyond)")
    p.add_argument("--detector", default=",".join(DEFAULT_DETECTORS),
                   help="face detectors tried in order per photo (default yunet,mtcnn)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn  # the serve extra: imported only by this command

    from facekd.serve.app import create_app
    from facekd.serve.page import page_router
    from facekd.serve.settings import ServeSettings

    settings = ServeSettings(
        model=args.model, gallery=args.gallery, host=args.host, port=args.port, api_key_file=args.api_key_file,
        worker_threads=args.worker_threads, max_body_mb=args.max_body_mb,
        detectors=tuple(d.strip() for d in args.detector.split(",") if d.strip()),
    )
    app = create_app(settings, page=page_router(settings))
    print(f"facekd serve: {settings.model.name} on http://{settings.host}:{settings.port} "
          f"(API docs at /docs; {'API key required' if settings.api_key_file else 'no API key: loopback only'})",
          flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level,
                limit_concurrency=settings.max_connections, server_header=False)
    return 0


COMMANDS = [add_serve]
