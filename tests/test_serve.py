"""`make serve` (`python -m tools.serve`) in a process of its own, driven over real HTTP by
`python -m talk --url`, as a developer or the Android emulator would use it."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO

import psutil
import pytest
import requests

from tests.conftest import ROOT, SAMPLE, cli_environment, closed_port_connection_string, run_cli
from tools.azurite import free_port

SERVE = (sys.executable, "-m", "tools.serve")


@dataclass
class DevServer:
    process: subprocess.Popen[str]
    url: str
    key: str
    master_key: str
    banner: list[str]


def banner_value(banner: list[str], label: str) -> str:
    [value] = [line.split(": ", 1)[1] for line in banner if line.startswith(f"{label}:")]
    return value


def start_server(
    tmp_path: Path, port: int, log: IO[str] | int = subprocess.PIPE, **env: str
) -> subprocess.Popen[str]:
    """`make serve` on `port`; its log (stderr) to `log`."""
    # As `make serve` and the Bicep set it: the streaming app is served beside the main one.
    # STREAM_PORT=0: a free port, not the next one, which a parallel run may hold.
    environment = cli_environment(
        LLM_PROVIDER="local", TTS_PROVIDER="piper", PYTHON_ENABLE_INIT_INDEXING="1", STREAM_PORT="0"
    )
    for name in ("AzureWebJobsStorage", "TALK_FUNCTION_KEY", "TALK_MASTER_KEY"):
        environment.pop(name, None)
    environment.update(env)
    return subprocess.Popen(
        [*SERVE, "--port", str(port), "--azurite-dir", str(tmp_path / "azurite")],
        cwd=tmp_path,  # no local.settings.json or .env of the developer's
        env=environment,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )


def read_banner(process: subprocess.Popen[str]) -> list[str]:
    lines: list[str] = []
    assert process.stdout is not None
    while not lines or not lines[-1].startswith("Press Ctrl-C"):
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"the server stopped: {process.stderr.read()}")
        lines.append(line.strip())
    return lines


def stop(process: subprocess.Popen[str], signum: int = signal.SIGINT) -> int:
    process.send_signal(signum)
    return process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[DevServer]:
    tmp_path = tmp_path_factory.mktemp("serve")
    port = free_port()
    process = start_server(tmp_path, port)
    try:
        banner = read_banner(process)
        key = banner_value(banner, "Function key")
        master_key = banner_value(banner, "Master key (for /health/ready)")
        yield DevServer(process, f"http://127.0.0.1:{port}", key, master_key, banner)
    finally:
        if process.poll() is None:
            stop(process)


def test_it_prints_where_it_serves_and_a_generated_key(server) -> None:
    assert server.banner[0] == f"Serving the Function App at {server.url} (development server)"
    assert server.banner[1].startswith("Streaming app (POST /talk/stream) at http://127.0.0.1:")
    assert len(server.key) == 64
    assert any(line.startswith("Storage: Azurite") for line in server.banner)


def test_the_sample_question_like_the_android_app(server, tmp_path: Path) -> None:
    done = run_cli(
        str(SAMPLE), "--url", server.url, "--key", server.key, "--json", "-v", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["transcript"].startswith("What is a good way to relax")
    assert result["providers"] == {"stt": "faster-whisper", "llm": "local", "tts": "piper"}
    mp3 = (tmp_path / "reply.mp3").read_bytes()
    assert result["audio_bytes"] == len(mp3)
    assert "Backend response code: 200" in done.stderr
    assert f"MP3 bytes={len(mp3)}" in done.stderr


def test_a_written_question_with_the_key_in_the_environment(server, tmp_path: Path) -> None:
    done = run_cli(
        "--text",
        "Hello!",
        "--url",
        server.url,
        "--json",
        cwd=tmp_path,
        TALK_FUNCTION_KEY=server.key,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["transcript"] is None


def test_bad_audio_is_bad_input(server, tmp_path: Path) -> None:
    upload = tmp_path / "notes.m4a"
    upload.write_bytes(b"not audio " * 100)
    done = run_cli(str(upload), "--url", server.url, "--key", server.key, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: Backend error (422): the data is not audio in a supported format"
    )


@pytest.mark.parametrize("key", [None, "wrong"])
def test_a_missing_or_wrong_key_is_401(server, tmp_path: Path, key: str | None) -> None:
    args = ["--key", key] if key else []
    done = run_cli("--text", "Hi", "--url", server.url, *args, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == "error: Backend error (401): Unauthorized"
    response = requests.post(f"{server.url}/talk", json={"text": "Hi"}, timeout=10)
    assert response.status_code == 401
    assert response.content == b""


def test_the_key_also_works_as_the_code_parameter(server) -> None:
    response = requests.get(f"{server.url}/talk/{'0' * 32}", params={"code": server.key})
    assert response.status_code == 404
    assert response.json()["error"] == "unknown request id"


def test_health_and_readiness(server) -> None:
    assert requests.get(f"{server.url}/health", timeout=10).json() == {"status": "ok"}
    # Liveness says nothing more, whatever is asked of it.
    liveness = requests.get(f"{server.url}/health", params={"ready": "1"}, timeout=10)
    assert liveness.json() == {"status": "ok"}
    ready_url = f"{server.url}/health/ready"
    # Readiness is the operator's: not for the function key that ships in the app.
    for key in (None, server.key):
        headers = {"x-functions-key": key} if key else {}
        assert requests.get(ready_url, headers=headers, timeout=10).status_code == 401
    ready = requests.get(ready_url, headers={"x-functions-key": server.master_key}, timeout=30)
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"config": "ok", "secrets": "ok", "storage": "ok"}


def test_an_unknown_route_is_404(server) -> None:
    assert requests.get(f"{server.url}/nowhere", timeout=10).status_code == 404


def test_an_unreachable_backend_is_one_line(tmp_path: Path) -> None:
    done = run_cli("--text", "Hi", "--url", "http://127.0.0.1:9", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == "error: cannot reach http://127.0.0.1:9"


def test_a_taken_port_is_refused_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = start_server(tmp_path, port)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1
    assert stderr.strip() == f"error: 127.0.0.1:{port} is in use; set PORT to another port"
    assert not (tmp_path / "azurite").exists()  # nothing was started


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_it_stops_cleanly_and_leaves_no_process(tmp_path: Path, signum: int) -> None:
    port = free_port()
    process = start_server(tmp_path, port, TALK_FUNCTION_KEY="my-own-key")
    banner = read_banner(process)
    assert "Function key: $TALK_FUNCTION_KEY" in banner
    assert banner_value(banner, "Master key (for /health/ready)") != "my-own-key"
    children = psutil.Process(process.pid).children(recursive=True)
    assert children  # Azurite
    url = f"http://127.0.0.1:{port}"
    headers = {"x-functions-key": "my-own-key"}
    assert requests.get(f"{url}/talk/{'0' * 32}", headers=headers).status_code == 404
    assert stop(process, signum) == 0
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/health", timeout=5)


def test_the_streaming_app_is_not_served_where_the_worker_would_not_index_it(
    tmp_path: Path,
) -> None:
    process = start_server(tmp_path, free_port(), PYTHON_ENABLE_INIT_INDEXING="0")
    try:
        banner = read_banner(process)
    finally:
        stop(process)
    [line] = [line for line in banner if line.startswith("Streaming app")]
    assert line.startswith("Streaming app not served: stream_app: HTTP streaming needs")


def test_make_serve_is_the_documented_command() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "serve: $(APP_STAMP) $(AZURITE_STAMP)" in makefile
    assert "-m tools.serve --host $(HOST) --port $(PORT)" in makefile


# --- the deploy workflow's smoke test, against the dev server ---------------------------------


def smoke_test(
    url: str, key: str, master_key: str, tmp_path: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tools.smoke_test", url, "--attempts", "2", "--delay", "0.1"]
    return subprocess.run(
        [*command, *extra],
        cwd=tmp_path,
        env=cli_environment(TALK_FUNCTION_KEY=key, TALK_MASTER_KEY=master_key),
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_the_smoke_test_checks_a_deploy_without_a_paid_call(server, tmp_path: Path) -> None:
    done = smoke_test(server.url, server.key, server.master_key, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    # The deployed models heard the sample and the embedded voice said it back ...
    assert "self-check: heard 'What is a good way to relax" in done.stdout
    # ... the function key, the counters and the Durable task hub answered ...
    assert "durable: an unknown request id is 404" in done.stdout
    # ... and no question went to the providers.
    assert "/talk answered" not in done.stdout


def test_the_smoke_test_asks_talk_only_when_told(server, tmp_path: Path) -> None:
    done = smoke_test(server.url, server.key, server.master_key, tmp_path, "--ask")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "talk: /talk answered" in done.stdout


def test_the_self_check_is_for_operators_and_refuses_bad_audio(server) -> None:
    url = f"{server.url}/health/speech"
    # The function key ships inside the app: it must not run the models on any upload.
    assert requests.post(url, data=b"x", headers={"x-functions-key": server.key}).status_code == 401
    admin = {"x-functions-key": server.master_key}
    for body, status, code in ((b"", 400, "no_input"), (b"\x00" * 4096, 422, None)):
        response = requests.post(url, data=body, headers=admin, timeout=60)
        assert response.status_code == status, response.text
        answer = response.json()
        assert answer["request_id"] and answer["error"]
        assert code is None or answer["code"] == code


@pytest.mark.parametrize(
    ("env", "exit_code", "says"),
    [
        # The first deploy: the provider secrets are not in Key Vault yet.
        ({"LLM_PROVIDER": "huggingface"}, 0, "::notice::The provider secrets are not set yet"),
        # Anything else that is not ready fails the deploy.
        ({"AzureWebJobsStorage": closed_port_connection_string()}, 1, "::error::the app is not"),
        # A model folder without the model in it (a package that shipped broken): ready, but
        # the self-check's 503, never a 500.
        (
            {"WHISPER_MODEL": str(ROOT / "docs")},
            1,
            "::error::self-check: the self-check failed (503)",
        ),
    ],
)
def test_the_smoke_test_passes_while_only_the_secrets_are_missing(
    tmp_path: Path, env: dict[str, str], exit_code: int, says: str
) -> None:
    port = free_port()
    keys = {"TALK_FUNCTION_KEY": "smoke-key", "TALK_MASTER_KEY": "smoke-master-key"}
    process = start_server(tmp_path, port, **keys, **env)
    try:
        read_banner(process)
        done = smoke_test(f"http://127.0.0.1:{port}", "smoke-key", "smoke-master-key", tmp_path)
    finally:
        stop(process)
    assert done.returncode == exit_code, done.stdout + done.stderr
    assert says in done.stdout


def test_only_secrets_not_set_yet_pass_a_deploy_that_is_not_ready() -> None:
    from tools.smoke_test import _only_secrets_missing

    def readiness(secrets: str) -> dict:
        return {"checks": {"config": "ok", "secrets": secrets, "storage": "ok"}}

    assert _only_secrets_missing(503, readiness("missing: hf-api-token, elevenlabs-api-key"))
    # A vault that refused the app or could not be reached reads as missing secrets too,
    # with the problem after them: a broken deploy.
    unreachable = "missing: hf-api-token; Key Vault kv-x unreachable (HttpResponseError)"
    assert not _only_secrets_missing(503, readiness(unreachable))
    assert not _only_secrets_missing(200, readiness("ok"))


@pytest.mark.parametrize(
    ("status", "code", "passes"), [(503, "budget_exhausted", True), (503, "unavailable", False)]
)
def test_a_spent_budget_is_a_notice_when_the_smoke_test_asks(
    status: int, code: str, passes: bool, capsys
) -> None:
    """`--ask` against a backend whose daily budget is spent (its 503, as `/talk` answers
    it): a deploy never fails because of a budget; any other 503 fails it."""
    from tools.smoke_test import SmokeFailed, ask

    class Backend(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"error": "refused", "code": code, "request_id": "r"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Backend) as backend:
        threading.Thread(target=backend.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{backend.server_address[1]}"
        try:
            if passes:
                assert ask(url, "key") == "skipped: budget spent"
                notice = "::notice::/talk not asked: a daily budget is spent"
                assert notice in capsys.readouterr().out
            else:
                with pytest.raises(SmokeFailed, match=r"\(503\)"):
                    ask(url, "key")
        finally:
            backend.shutdown()
