"""The dev host indexes a streaming app as the Python worker does, and refuses what it would."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tools.devhost.functions import AppIndexError, app_index

HEADER = """
import azure.functions as func
from azurefunctions.extensions.http.fastapi import JSONResponse, Request

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.route(route="fast", methods=["GET"])
async def fast(req: Request) -> JSONResponse:
    return JSONResponse({"ok": True})
"""
CLASSIC = """

@app.route(route="classic", methods=["GET"])
def classic(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("ok")
"""


def write_app(folder: Path, name: str, source: str, monkeypatch) -> str:
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(folder))
    return name


def test_a_streaming_app_is_indexed_with_fastapi_types(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PYTHON_ENABLE_INIT_INDEXING", "1")
    [route] = app_index(write_app(tmp_path, "streaming_ok", HEADER, monkeypatch)).routes
    assert route.fastapi and route.segments == ("fast",)
    # The main app's functions stay classic.
    assert not any(route.fastapi for route in app_index().routes)


def test_a_streaming_app_needs_init_indexing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("PYTHON_ENABLE_INIT_INDEXING", raising=False)
    with pytest.raises(AppIndexError, match="PYTHON_ENABLE_INIT_INDEXING=1"):
        app_index(write_app(tmp_path, "streaming_unindexed", HEADER, monkeypatch))


def test_fastapi_and_classic_functions_cannot_share_an_app(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PYTHON_ENABLE_INIT_INDEXING", "1")
    entry = write_app(tmp_path, "streaming_mixed", HEADER + CLASSIC, monkeypatch)
    with pytest.raises(AppIndexError, match="classic take HttpRequest beside FastAPI"):
        app_index(entry)


def test_the_shipped_streaming_app_is_all_fastapi(monkeypatch) -> None:
    monkeypatch.setenv("PYTHON_ENABLE_INIT_INDEXING", "1")
    routes = app_index("stream_app").routes
    assert {"/".join(r.segments) for r in routes} == {"health", "talk/stream"}
    assert all(route.fastapi for route in routes)
