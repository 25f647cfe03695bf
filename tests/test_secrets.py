"""Secrets from the environment, local files and Key Vault (real SDK clients over HTTPS)."""

from __future__ import annotations

import json
import logging
import os
import pty
import select
import sys
import time
from pathlib import Path

import pytest

from shared.config import ENV_FILE, Settings
from shared.pipeline import TalkRequest, talk
from shared.security.secrets import (
    KeyVaultSource,
    MappingSource,
    MissingSecret,
    SecretStore,
    build_secret_store,
    redact,
)
from tests.conftest import SAMPLE, cli_environment, run_cli
from tests.stubs import (
    StubServer,
    chat_completion,
    elevenlabs_speech,
    key_vault,
    make_certificates,
    managed_identity,
)
from tests.test_providers import STUB_REPLY
from tools.azurite import free_port

IDENTITY_HEADER = "identity-header-value"
ACCESS_TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.stub-token"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def identity(monkeypatch):
    """The managed identity endpoint that Azure Functions exposes to the app."""
    with StubServer(managed_identity(IDENTITY_HEADER, ACCESS_TOKEN)) as server:
        monkeypatch.setenv("IDENTITY_ENDPOINT", f"{server.url}/msi/token")
        monkeypatch.setenv("IDENTITY_HEADER", IDENTITY_HEADER)
        yield server


@pytest.fixture
def vault_secrets() -> dict[str, str]:
    return {"hf-api-token": "hf_from_key_vault_v1", "elevenlabs-api-key": "sk_from_key_vault"}


@pytest.fixture
def vault(certificates, vault_secrets):
    with StubServer(key_vault(vault_secrets, ACCESS_TOKEN), tls=certificates.server_context) as kv:
        yield kv


def vault_source(vault: StubServer, certificates) -> KeyVaultSource:
    return KeyVaultSource(
        vault.url,
        CLIENT_ID,
        connection_verify=str(certificates.ca_file),
        verify_challenge_resource=False,
    )


def test_environment_wins_over_local_files_over_key_vault(
    tmp_path: Path, identity, vault, certificates, monkeypatch
) -> None:
    monkeypatch.delenv(ENV_FILE)
    (tmp_path / ".env").write_text("ELEVENLABS_API_KEY=sk_from_dotenv\n")
    settings = Settings(key_vault_url=vault.url, azure_client_id=CLIENT_ID)
    store = build_secret_store(
        settings,
        environ={"LLM_API_KEY": "from-environment"},
        root=tmp_path,
        connection_verify=str(certificates.ca_file),
        verify_challenge_resource=False,
    )
    assert store.get("LLM_API_KEY") == "from-environment"
    assert store.get("ELEVENLABS_API_KEY") == "sk_from_dotenv"
    assert store.get("HF_API_TOKEN") == "hf_from_key_vault_v1"
    # Only the one secret that was not found locally was asked of Key Vault.
    assert {r.path for r in vault.requests} == {"/secrets/hf-api-token/"}


def test_key_vault_through_the_user_assigned_managed_identity(
    identity, vault, certificates
) -> None:
    store = SecretStore([vault_source(vault, certificates)], ttl_s=300)
    assert store.get("HF_API_TOKEN") == "hf_from_key_vault_v1"
    assert store.get("LLM_API_KEY") is None  # not in the vault: a miss, not an error
    [token_request] = identity.requests
    assert token_request.query["resource"] == ["https://vault.azure.net"]
    assert token_request.query["client_id"] == [CLIENT_ID]
    assert token_request.headers["x-identity-header"] == IDENTITY_HEADER
    # The SDK's challenge flow: first unauthenticated, then with the bearer token.
    assert "authorization" not in vault.requests[0].headers
    assert vault.requests[1].headers["authorization"] == f"Bearer {ACCESS_TOKEN}"


def test_a_rotated_secret_is_used_after_the_ttl(
    identity, vault, vault_secrets, certificates
) -> None:
    now = [1000.0]
    store = SecretStore([vault_source(vault, certificates)], ttl_s=300, clock=lambda: now[0])
    assert store.get("HF_API_TOKEN") == "hf_from_key_vault_v1"
    vault_secrets["hf-api-token"] = "hf_from_key_vault_v2"
    now[0] += 299
    assert store.get("HF_API_TOKEN") == "hf_from_key_vault_v1"  # cached
    now[0] += 2
    assert store.get("HF_API_TOKEN") == "hf_from_key_vault_v2"


def test_an_unreachable_key_vault_is_reported_not_raised(identity, certificates, caplog) -> None:
    source = KeyVaultSource(
        f"https://127.0.0.1:{free_port()}",
        CLIENT_ID,
        connection_verify=str(certificates.ca_file),
        verify_challenge_resource=False,
        retry_total=0,
    )
    store = SecretStore([MappingSource("environment", {}), source], ttl_s=300)
    caplog.set_level(logging.WARNING)
    assert store.get("HF_API_TOKEN") is None
    assert store.problems() == ["Key Vault unreachable"]
    with pytest.raises(MissingSecret) as raised:
        store.require("ELEVENLABS_API_KEY", "elevenlabs")
    assert str(raised.value) == (
        "elevenlabs needs ELEVENLABS_API_KEY, which is not set "
        "(environment, Key Vault; Key Vault unreachable)"
    )
    assert "Cannot read HF_API_TOKEN: Key Vault unreachable" in caplog.text


def test_secret_values_never_show_in_reprs() -> None:
    store = SecretStore([MappingSource("environment", {"HF_API_TOKEN": "hf_very_secret"})], 300)
    store.get("HF_API_TOKEN")
    assert "hf_very_secret" not in repr(store)
    assert "hf_very_secret" not in repr(store.sources)


def test_a_whole_run_logs_no_secret(identity, vault, certificates, caplog, stub_mp3) -> None:
    caplog.set_level(logging.DEBUG)  # everything, the SDKs' and urllib3's own lines included
    for handler in logging.getLogger().handlers:
        handler.addFilter(redact)
    with (
        StubServer(chat_completion(STUB_REPLY)) as chat,
        StubServer(elevenlabs_speech(stub_mp3)) as eleven,
    ):
        settings = Settings(
            hf_base_url=f"{chat.url}/v1",
            elevenlabs_base_url=eleven.url,
            key_vault_url=vault.url,
            azure_client_id=CLIENT_ID,
        )
        store = SecretStore([vault_source(vault, certificates)], ttl_s=300)
        result = talk(TalkRequest(text="Hello!"), settings, store)
    assert result.providers == {"stt": None, "llm": "huggingface", "tts": "elevenlabs"}
    logged = caplog.text + "".join(repr(r.__dict__) for r in caplog.records)
    for secret in ("hf_from_key_vault_v1", "sk_from_key_vault", ACCESS_TOKEN):
        assert secret not in logged


# --- the command ----------------------------------------------------------------------------


def test_the_command_uses_the_cloud_providers_when_keys_are_set(tmp_path: Path, stub_mp3) -> None:
    with (
        StubServer(chat_completion(STUB_REPLY)) as chat,
        StubServer(elevenlabs_speech(stub_mp3)) as eleven,
    ):
        env = {
            "HF_BASE_URL": f"{chat.url}/v1",
            "HF_API_TOKEN": "x",
            "ELEVENLABS_BASE_URL": eleven.url,
            "ELEVENLABS_API_KEY": "y",
        }
        done = run_cli(str(SAMPLE), "--json", cwd=tmp_path, **env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["providers"] == {
        "stt": "faster-whisper",
        "llm": "huggingface",
        "tts": "elevenlabs",
    }
    assert result["text"] == STUB_REPLY
    assert (tmp_path / "reply.mp3").read_bytes() == stub_mp3
    assert chat.requests[0].body["messages"][1]["content"].startswith("What is a good way")


def test_without_keys_the_command_uses_the_embedded_providers(tmp_path: Path) -> None:
    done = run_cli("--text", "Hi!", "--json", "--verbose", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["providers"] == {"stt": None, "llm": "local", "tts": "piper"}
    assert "LLM provider: local (HF_API_TOKEN not set)" in done.stderr
    assert "TTS provider: piper (ELEVENLABS_API_KEY not set)" in done.stderr
    assert "STT provider: faster-whisper" in done.stderr


def test_non_interactive_run_warns_about_a_missing_key(tmp_path: Path) -> None:
    done = run_cli("--text", "Hi", cwd=tmp_path, LLM_PROVIDER="huggingface")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert "WARNING HF_API_TOKEN is not set: the huggingface provider cannot be used" in lines[0]
    assert lines[-1].startswith("error: huggingface needs HF_API_TOKEN, which is not set")


def test_in_a_terminal_a_missing_key_is_asked_for_and_saved(tmp_path: Path, stub_mp3) -> None:
    with StubServer(elevenlabs_speech(stub_mp3)) as eleven:
        (tmp_path / ".env").touch()  # where the key is saved for next time
        env = cli_environment(
            TTS_PROVIDER="elevenlabs",
            ELEVENLABS_BASE_URL=eleven.url,
            TALK_ENV_FILE=str(tmp_path / ".env"),
        )
        pid, fd = pty.fork()
        if pid == 0:  # the child: a terminal session of its own
            os.chdir(tmp_path)
            os.execve(sys.executable, [sys.executable, "-m", "talk", "--text", "Hi"], env)
        screen = _answer_prompts(
            fd, [(b"input hidden): ", b"sk_typed_in_terminal\n"), (b"[y/N] ", b"y\n")]
        )
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, screen
    assert b"sk_typed_in_terminal" not in screen  # hidden input
    assert (tmp_path / ".env").read_text().strip() == "ELEVENLABS_API_KEY='sk_typed_in_terminal'"
    assert eleven.requests[0].headers["xi-api-key"] == "sk_typed_in_terminal"


def _answer_prompts(fd: int, prompts: list[tuple[bytes, bytes]], timeout_s: float = 60) -> bytes:
    screen = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if prompts and screen.endswith(prompts[0][0]):
            os.write(fd, prompts.pop(0)[1])
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
    return screen
