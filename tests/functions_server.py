"""A loopback HTTP server in front of the app's HTTP functions, for clients under test.

It does what the Functions host does for an HTTP trigger: matches the route, checks the
function key for `FUNCTION` routes (`x-functions-key` header or `code` query parameter),
builds an `HttpRequest` and writes the `HttpResponse` back.
"""

from __future__ import annotations

import inspect
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import azure.functions as func

from health.api import health
from talk.api import talk_result, talk_start
from tests.conftest import run_async
from tests.durable_host import LocalDurableHost

FUNCTION_KEY = "test-function-key"


class FunctionsServer:
    def __init__(self, durable: LocalDurableHost) -> None:
        self.durable = durable
        routes = {
            ("GET", "health"): (health, False),
            ("POST", "talk"): (talk_start, True),
            ("GET", "talk/{request_id}"): (talk_result, True),
        }
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _serve(self) -> None:
                url = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                response = server.dispatch(self.command, url.path, query, dict(self.headers), body)
                self.send_response(response.status_code)
                for name, value in response.headers.items():
                    if name.lower() != "content-length":
                        self.send_header(name, value)
                if "content-type" not in {k.lower() for k, _ in response.headers.items()}:
                    self.send_header("Content-Type", response.mimetype)
                payload = response.get_body()
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _serve  # noqa: N815 - http.server dispatches to these names

        self.routes = routes
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FunctionsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def dispatch(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> func.HttpResponse:
        parts = path.strip("/").split("/")
        for (route_method, route), (builder, needs_key) in self.routes.items():
            pattern = route.split("/")
            if route_method != method or len(pattern) != len(parts):
                continue
            params = {}
            for want, got in zip(pattern, parts, strict=True):
                if want.startswith("{"):
                    params[want.strip("{}")] = got
                elif want != got:
                    break
            else:
                given = headers.get("x-functions-key") or query.get("code")
                if needs_key and given != FUNCTION_KEY:
                    return func.HttpResponse(status_code=401)
                request = func.HttpRequest(
                    method=method,
                    url=f"{self.url}{path}",
                    headers=headers,
                    params=query,
                    route_params=params,
                    body=body,
                )
                function = builder.build().get_user_function()
                if inspect.iscoroutinefunction(function):
                    return run_async(function(req=request, client=self.durable.client_binding()))
                return function(request)
        return func.HttpResponse(status_code=404)
