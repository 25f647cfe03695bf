"""A small threaded HTTP server on loopback that answers with a function, and records.

The local Durable host serves the extension's HTTP API with it, and the tests' provider
stand-ins (`tests/stubs.py`) speak the providers' wire formats with it. Every request is
recorded (method, path, query, headers, JSON body, arrival time); replies come from a
script first, then from the default function.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    drop: bool = False  # close the connection without answering
    # A streamed answer: each piece sent (chunked) after its delay, as a provider that
    # streams makes it; `body` is then ignored. A piece of None drops the connection there.
    pieces: list[tuple[float, bytes | None]] | None = None

    @classmethod
    def json(cls, status: int, document: Any, **headers: str) -> Reply:
        return cls(
            status, json.dumps(document).encode(), {"Content-Type": "application/json", **headers}
        )


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    at: float
    client_port: int


class LoopbackServer:
    def __init__(
        self,
        default: Callable[[Recorded], Reply],
        *,
        tls: ssl.SSLContext | None = None,
        record: bool = True,
    ) -> None:
        """`record`: keep every request in `requests` (a test's stand-in; a long-running
        server would only grow)."""
        self.default = default
        self.record = record
        self.script: list[Reply] = []
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        loopback = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _serve(self) -> None:
                declared = (self.headers.get("Content-Length") or "0").strip()
                length = int(declared) if declared.isascii() and declared.isdigit() else 0
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                url = urlsplit(self.path)
                recorded = Recorded(
                    self.command,
                    url.path,
                    parse_qs(url.query),
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    time.monotonic(),
                    self.client_address[1],
                )
                with loopback._lock:
                    if loopback.record:
                        loopback.requests.append(recorded)
                    reply = loopback.script.pop(0) if loopback.script else None
                reply = reply or loopback.default(recorded)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if reply.drop:
                    self.close_connection = True
                    self.connection.close()
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if reply.pieces is not None:
                    self._stream(reply.pieces)
                    return
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def _stream(self, pieces: list[tuple[float, bytes | None]]) -> None:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for delay_s, piece in pieces:
                        time.sleep(delay_s)
                        if piece is None:  # the provider dropped the stream half-way
                            self.close_connection = True
                            self.connection.close()
                            return
                        if piece:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                            self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:  # the client went away: stop making the rest
                    self.close_connection = True

            # http.server dispatches to these names.
            do_GET = do_POST = do_PUT = do_DELETE = _serve  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
