"""The Functions host's HTTP front, for the app's real HTTP functions without Core Tools.

Routes, methods and auth levels come from the app's own index (`app.get_functions()`, what
the host reads at start), so a new route needs nothing here. Like the host it prefixes
routes with host.json's `routePrefix`, prefers literal segments over `{parameters}`, checks
keys (header `x-functions-key` or query `code`; a `function` route takes the function key
or the master key, an `admin` route only the master key; 401 without a body otherwise),
refuses a body over the host's limit (413), appends the client's address to
`X-Forwarded-For` as Azure's front end does, builds an `HttpRequest`, and binds a durable
client to functions that ask for one. Async functions run on one long-lived event loop, as
in the Python worker.

An app whose HTTP functions take FastAPI's types (`stream_app.py`, through
`azurefunctions-extensions-http-fastapi`) is served as the worker serves one: each function
gets a Starlette request, a streamed answer goes out chunked, each piece as it is made, and
a client that goes away closes the answer's iterator (the handler's `finally` runs). Like the
worker, it refuses to index such an app without `PYTHON_ENABLE_INIT_INDEXING=1`, or one
that mixes FastAPI and classic `HttpRequest` functions.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import importlib
import inspect
import json
import logging
import os
import threading
import time
import typing
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import azure.functions as func

if TYPE_CHECKING:
    from tools.devhost.durable import LocalDurableHost

T = TypeVar("T")
log = logging.getLogger("devhost")
ROOT = Path(__file__).resolve().parents[2]
# The host's default request body limit (FUNCTIONS_REQUEST_BODY_SIZE_LIMIT changes it).
DEFAULT_BODY_LIMIT = 100 * 1024 * 1024
_MAX_LINE = 1024  # a chunk size with its extensions, a trailer


@dataclass(frozen=True)
class HttpRoute:
    function_name: str
    segments: tuple[str, ...]
    methods: frozenset[str] | None  # None: every method
    auth_level: str  # anonymous, function or admin
    request_param: str
    client_param: str | None  # the durable client binding's name, if any
    function: Callable[..., Any]
    fastapi: bool = False  # takes a Starlette request and answers a Starlette response

    def match(self, method: str, parts: list[str]) -> dict[str, str] | None:
        if self.methods is not None and method not in self.methods:
            return None
        if len(parts) != len(self.segments):
            return None
        params = {}
        for want, got in zip(self.segments, parts, strict=True):
            if want.startswith("{") and want.endswith("}"):
                params[want[1:-1].split(":")[0]] = got
            elif want.lower() != got.lower():
                return None
        return params

    @property
    def literal_segments(self) -> int:
        return sum(not s.startswith("{") for s in self.segments)


@dataclass(frozen=True)
class AppIndex:
    routes: list[HttpRoute]
    orchestrators: dict[str, Callable[[str], str]]
    activities: dict[str, Callable[..., Any]]


class AppIndexError(ValueError):
    """The worker would not index this app."""


def app_index(entry: str = "function_app") -> AppIndex:
    """The Function App in `entry` as the host indexes it (once per process, as
    `get_functions` allows)."""
    return _index(entry)


@functools.cache
def _index(entry: str) -> AppIndex:
    app = importlib.import_module(entry).app
    prefix = route_prefix()
    routes, orchestrators, activities = [], {}, {}
    for function in app.get_functions():
        bindings = [b.get_dict_repr() for b in function.get_bindings()]
        by_type = {b["type"]: b for b in bindings}
        name = function.get_function_name()
        if "orchestrationTrigger" in by_type:
            orchestrators[name] = function.get_user_function()
        elif "activityTrigger" in by_type:
            activities[name] = function.get_user_function()
        elif trigger := by_type.get("httpTrigger"):
            methods = trigger.get("methods")
            route = "/".join(p for p in (prefix, trigger["route"]) if p)
            user_function = function.get_user_function()
            routes.append(
                HttpRoute(
                    function_name=name,
                    segments=tuple(route.strip("/").split("/")),
                    methods=frozenset(_text(m).upper() for m in methods) if methods else None,
                    auth_level=_text(trigger.get("authLevel")).lower() or "function",
                    request_param=trigger["name"],
                    client_param=by_type.get("durableClient", {}).get("name"),
                    function=user_function,
                    fastapi=_takes_fastapi(user_function, trigger["name"]),
                )
            )
    _check_streaming(entry, routes)
    # ASP.NET routing, as the host uses: literal segments win over parameters.
    routes.sort(key=lambda r: -r.literal_segments)
    return AppIndex(routes, orchestrators, activities)


def _takes_fastapi(function: Callable[..., Any], param: str) -> bool:
    from starlette.requests import Request

    try:
        hint = typing.get_type_hints(function).get(param)
    except (NameError, TypeError):  # annotations this process cannot resolve: not FastAPI's
        return False
    return isinstance(hint, type) and issubclass(hint, Request)


def _check_streaming(entry: str, routes: list[HttpRoute]) -> None:
    """The worker's rules for an app with FastAPI-typed functions."""
    streaming = [r.function_name for r in routes if r.fastapi]
    if not streaming:
        return
    classic = [r.function_name for r in routes if not r.fastapi]
    if classic:
        raise AppIndexError(
            f"{entry}: {', '.join(classic)} take HttpRequest beside FastAPI functions "
            f"({', '.join(streaming)}); the worker gives every HTTP function of an app that "
            "imports the FastAPI extension FastAPI's types"
        )
    if os.environ.get("PYTHON_ENABLE_INIT_INDEXING") != "1":
        raise AppIndexError(
            f"{entry}: HTTP streaming needs the app setting PYTHON_ENABLE_INIT_INDEXING=1 "
            "(Python 3.11 and 3.12); without it the worker does not index the app"
        )


def route_prefix() -> str:
    host = json.loads((ROOT / "host.json").read_text())
    return host.get("extensions", {}).get("http", {}).get("routePrefix", "api").strip("/")


def _text(value: Any) -> str:
    return str(getattr(value, "value", value) or "")


@functools.cache
def _event_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True, name="functions-event-loop").start()
    return loop


def run_async(coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run `coroutine` on the process's one long-lived loop, as the Python worker does: the
    Durable client keeps an aiohttp session that belongs to the loop that made it."""
    return asyncio.run_coroutine_threadsafe(coroutine, _event_loop()).result(timeout)


class FunctionsHttpHost:
    """Serve the app's HTTP functions on `host`:`port` (0 picks a free port)."""

    def __init__(
        self,
        durable: LocalDurableHost,
        *,
        key: str,
        master_key: str,
        host: str = "127.0.0.1",
        port: int = 0,
        body_limit: int = DEFAULT_BODY_LIMIT,
        entry: str = "function_app",
    ) -> None:
        self.durable = durable
        self.key = key
        self.master_key = master_key
        self.body_limit = body_limit
        self.routes = app_index(entry).routes
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # As the Functions host: a streamed event goes out at once, not when the client's
            # delayed ACK lets Nagle's algorithm send it (40 ms late).
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:
                pass

            def _serve(self) -> None:
                started = time.perf_counter()
                response = front.handle(self)
                if not isinstance(response, func.HttpResponse):
                    _send_starlette(self, response)
                    return
                self.send_response(response.status_code)
                headers = {k.lower(): v for k, v in response.headers.items()}
                for name, value in response.headers.items():
                    if name.lower() != "content-length":
                        self.send_header(name, value)
                if "content-type" not in headers and response.mimetype:
                    self.send_header("Content-Type", response.mimetype)
                payload = response.get_body() or b""
                self.send_header("Content-Length", str(len(payload)))
                try:
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    # The function ran to its end anyway, as in Azure: a retry can join it.
                    log.info(
                        "%s %s: the client left before the answer",
                        self.command,
                        urlsplit(self.path).path,
                    )
                    self.close_connection = True
                    return
                log.info(
                    "%s %s -> %d in %.0f ms",
                    self.command,
                    urlsplit(self.path).path,
                    response.status_code,
                    (time.perf_counter() - started) * 1000,
                )

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve  # noqa: N815

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        bound_host, bound_port = self.server.server_address[:2]
        self.url = f"http://{bound_host}:{bound_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FunctionsHttpHost:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, request: BaseHTTPRequestHandler) -> Any:
        """The function's answer: an HttpResponse, or a Starlette response from a FastAPI
        function."""
        url = urlsplit(request.path)
        parts = [p for p in url.path.strip("/").split("/") if p]
        for route in self.routes:
            params = route.match(request.command, parts)
            if params is None:
                continue
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            given = request.headers.get("x-functions-key") or query.get("code") or ""
            if not self._authorized(route.auth_level, given):
                return func.HttpResponse(status_code=401)
            try:
                body = read_body(request, self.body_limit)
            except ValueError:  # a malformed length or chunk size
                request.close_connection = True
                return func.HttpResponse(status_code=400)
            if body is None:
                return func.HttpResponse(status_code=413)
            headers = dict(request.headers.items())
            forwarded = [headers.pop(k) for k in list(headers) if k.lower() == "x-forwarded-for"]
            headers["X-Forwarded-For"] = ", ".join([*forwarded, request.client_address[0]])
            if route.fastapi:
                starlette_request = _starlette_request(request, url, headers, params, body)
                return self.call(route, starlette_request)
            http_request = func.HttpRequest(
                method=request.command,
                url=f"{self.url}{request.path}",
                headers=headers,
                params=query,
                route_params=params,
                body=body,
            )
            return self.call(route, http_request)
        return func.HttpResponse(status_code=404)

    def _authorized(self, auth_level: str, given: str) -> bool:
        if auth_level == "anonymous":
            return True
        keys = [self.master_key] if auth_level == "admin" else [self.key, self.master_key]
        return any(hmac.compare_digest(given.encode(), key.encode()) for key in keys)

    def call(self, route: HttpRoute, http_request: Any) -> Any:
        arguments: dict[str, Any] = {route.request_param: http_request}
        if route.client_param:
            arguments[route.client_param] = self.durable.client_binding()
        try:
            if inspect.iscoroutinefunction(route.function):
                return run_async(route.function(**arguments))
            return route.function(**arguments)
        except Exception:  # what the host does with an unhandled exception
            log.exception("Function %s failed", route.function_name)
            return func.HttpResponse(status_code=500)


def _starlette_request(
    request: BaseHTTPRequestHandler,
    url: Any,
    headers: dict[str, str],
    params: dict[str, str],
    body: bytes,
) -> Any:
    """The request as the worker hands it to a FastAPI function."""
    from starlette.requests import Request

    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": request.command,
        "scheme": "http",
        "path": url.path,
        "raw_path": url.path.encode(),
        "query_string": url.query.encode(),
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
        "client": request.client_address[:2],
        "server": request.server.server_address[:2],
        "path_params": params,
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


def _send_starlette(request: BaseHTTPRequestHandler, response: Any) -> None:
    """Send a Starlette response: a streamed one chunked, each piece as soon as it is made;
    a client that goes away closes the stream, as the worker's disconnect does."""
    request.send_response(response.status_code)
    for name, value in response.raw_headers:
        if name.lower() not in (b"content-length", b"transfer-encoding"):
            request.send_header(name.decode("latin-1"), value.decode("latin-1"))
    iterator = getattr(response, "body_iterator", None)
    if iterator is None:
        request.send_header("Content-Length", str(len(response.body)))
        request.end_headers()
        request.wfile.write(response.body)
        return
    request.send_header("Transfer-Encoding", "chunked")
    request.end_headers()
    try:
        while True:
            try:
                piece = run_async(anext(iterator))
            except StopAsyncIteration:
                break
            data = piece.encode() if isinstance(piece, str) else bytes(piece)
            if data:
                request.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                request.wfile.flush()
        request.wfile.write(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        log.info("%s %s: the client went away mid-stream", request.command, request.path)
        request.close_connection = True
        run_async(iterator.aclose())
    except Exception as error:  # the answer failed mid-way: dropped, as the worker drops it
        log.info("%s %s: the answer failed mid-stream (%s)", request.command, request.path, error)
        request.close_connection = True
        request.connection.close()


def read_body(request: BaseHTTPRequestHandler, limit: int) -> bytes | None:
    """The request body (chunked or with a length), or None when it is over `limit`;
    ValueError for a length or chunk size that is not plain digits (a negative one would
    read to the end of the stream, past the limit)."""
    encoding = request.headers.get("Transfer-Encoding", "").strip().lower()
    if encoding and encoding != "chunked":  # the rest would be read as the next request
        raise ValueError("an unsupported transfer encoding")
    if encoding:
        chunks, total = [], 0
        while size := _digits(_line(request).split(b";")[0].strip() or b"0", 16):
            total += size
            if total > limit:
                request.close_connection = True
                return None
            chunks.append(request.rfile.read(size))
            if _line(request).strip():
                raise ValueError("a chunk longer than its size")
        while _line(request).strip():  # trailers
            pass
        return b"".join(chunks)
    length = _digits((request.headers.get("Content-Length") or "0").strip().encode(), 10)
    if length > limit:
        request.close_connection = True
        return None
    return request.rfile.read(length) if length else b""


def _line(request: BaseHTTPRequestHandler) -> bytes:
    """One line of the chunked framing, refused when longer than any real one."""
    line = request.rfile.readline(_MAX_LINE)
    if len(line) >= _MAX_LINE and not line.endswith(b"\n"):
        raise ValueError("a chunk line too long")
    return line


def _digits(text: bytes, base: int) -> int:
    allowed = b"0123456789abcdefABCDEF"[: 10 if base == 10 else 22]
    if not text or len(text) > 16 or text.strip(allowed):
        raise ValueError("not a length")
    return int(text, base)
