"""`make serve`: the Function App's HTTP API on a laptop, without Azure Functions Core Tools.

Starts Azurite (data kept in `.azurite/`) and serves the app's real HTTP functions with the
host's routes and function-key check, with the Durable orchestration run by the local
stand-in of the Durable extension (the real orchestrator and activities). The streaming
app (`stream_app.py`, `POST /talk/stream`) is served beside it on the next port, as Azure
serves it from a Function App of its own. A development server: see the README for what it
does not reproduce from the Functions host.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import logging
import os
import secrets
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from tools.azurite import running_azurite

ROOT = Path(__file__).resolve().parent.parent
STORAGE_SETTING = "AzureWebJobsStorage"  # the host's name for it, which the app reads too
DEVELOPMENT_STORAGE = "UseDevelopmentStorage=true"
log = logging.getLogger("devhost")


class Unusable(Exception):
    """A port the server cannot listen on: the one line to print."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.serve", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("HOST") or "127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 7071))
    parser.add_argument(
        "--stream-port",
        type=int,
        default=int(os.environ.get("STREAM_PORT") or -1),
        help="the streaming app's port (default: the next one; 0 picks a free one)",
    )
    parser.add_argument(
        "--azurite-dir", type=Path, default=ROOT / ".azurite", help="where Azurite keeps data"
    )
    return parser.parse_args(argv)


@contextlib.contextmanager
def storage(location: Path) -> Iterator[str]:
    """Azurite, unless `AzureWebJobsStorage` already names another storage account."""
    configured = os.environ.get(STORAGE_SETTING, "")
    if configured and configured != DEVELOPMENT_STORAGE:
        yield "the storage in AzureWebJobsStorage"
        return
    location.mkdir(parents=True, exist_ok=True)
    with running_azurite(location) as connection:
        # The environment wins over local.settings.json, as it does for the host.
        os.environ[STORAGE_SETTING] = connection
        yield f"Azurite (data in {location})"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The storage SDK logs every request at INFO; the operator lines are what matter here.
    logging.getLogger("azure").setLevel(logging.WARNING)
    from shared.security.secrets import redact
    from tools.devhost.durable import app_durable_host
    from tools.devhost.functions import DEFAULT_BODY_LIMIT, AppIndexError, FunctionsHttpHost

    redact.install()
    key = os.environ.get("TALK_FUNCTION_KEY") or secrets.token_hex(32)
    master_key = os.environ.get("TALK_MASTER_KEY") or secrets.token_hex(32)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    body_limit = int(os.environ.get("FUNCTIONS_REQUEST_BODY_SIZE_LIMIT") or DEFAULT_BODY_LIMIT)
    with app_durable_host() as durable:

        def serve_on(port: int, variable: str, entry: str = "function_app") -> FunctionsHttpHost:
            try:
                return FunctionsHttpHost(
                    durable,
                    key=key,
                    master_key=master_key,
                    host=args.host,
                    port=port,
                    body_limit=body_limit,
                    entry=entry,
                )
            except OSError as error:
                reason = (
                    "is in use"
                    if error.errno == errno.EADDRINUSE
                    else f"cannot be used: {error.strerror}"
                )
                raise Unusable(
                    f"error: {args.host}:{port} {reason}; set {variable} to another port"
                ) from None

        streaming: FunctionsHttpHost | None = None
        not_streaming = ""
        try:
            front = serve_on(args.port, "PORT")
            next_port = args.port + 1 if args.port else 0
            try:
                stream_port = args.stream_port if args.stream_port >= 0 else next_port
                streaming = serve_on(stream_port, "STREAM_PORT", "stream_app")
            except AppIndexError as refused:  # what the worker would refuse too
                not_streaming = str(refused)
        except Unusable as unusable:
            print(unusable, file=sys.stderr)
            return 1
        with storage(args.azurite_dir) as where, front, streaming or contextlib.nullcontext():
            print(f"Serving the Function App at {front.url} (development server)", flush=True)
            if streaming is not None:
                print(f"Streaming app (POST /talk/stream) at {streaming.url}", flush=True)
            else:
                print(f"Streaming app not served: {not_streaming}", flush=True)
            for name, variable, value in (
                ("Function key", "TALK_FUNCTION_KEY", key),
                ("Master key (for /health/ready)", "TALK_MASTER_KEY", master_key),
            ):
                shown = f"${variable}" if os.environ.get(variable) else value
                print(f"{name}: {shown}", flush=True)
            print(f"Storage: {where}", flush=True)
            if not ipaddress.ip_address(front.server.server_address[0]).is_loopback:
                print("Reachable from the network: anyone with the key can call it.", flush=True)
            print(f"Try: python -m talk samples/question.m4a --url {front.url} --key <key>")
            print("Press Ctrl-C to stop.", flush=True)
            stop.wait()
            log.info("Stopping")
    return 0


if __name__ == "__main__":
    sys.exit(main())
