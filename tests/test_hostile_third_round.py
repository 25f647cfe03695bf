"""Attacks, third round: each finding of the third independent attack, replayed as the
attack against the real HTTP functions, Azurite and the Durable stand-in. Every test here
failed on the code before the fixes."""

from __future__ import annotations

import hashlib
import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator

import azure.functions as func
import numpy as np
import pytest

from shared import accept
from shared.config import ConfigError, Settings, get_settings
from shared.pipeline import transcribe
from shared.security.identity import owner_of
from shared.security.ratelimit import TABLE, RateLimiter, address_subject, hashed, subject_salt
from shared.storage import blob_store, table_service
from talk.api import talk_forget_me
from tests.conftest import (
    QUESTIONS,
    app_recording,
    cli_environment,
    phone_upload,
    reset_app_caches,
    run_async,
    spoken,
)
from tests.oidc import SCOPE
from tests.stubs import StubServer, chat_completion, elevenlabs_speech
from tests.test_conversations import _conversation
from tests.test_functions import android_upload, body_of, get_result, post
from tests.test_isolation import bearer, mid_minute  # noqa: F401 (a fixture)
from tests.test_telemetry import _fresh_day, paid  # noqa: F401 (a fixture)
from tools.devhost.functions import FunctionsHttpHost
from tools.phone_audio import encode

JSON = "application/json"
FORGET_ME = talk_forget_me.build().get_user_function()
_phones = itertools.count(1)


def new_phone() -> dict[str, str]:
    """A client address no other test used: counters of the shared Azurite start at 0."""
    number = next(_phones)
    return {"X-Forwarded-For": f"10.22.{number // 250}.{number % 250}:51234"}


def forget_me(host, **headers: str) -> func.HttpResponse:
    request = func.HttpRequest(
        method="DELETE", url="http://localhost/talk/me", headers=headers, params={}, body=b""
    )
    return run_async(FORGET_ME(req=request, client=host.client_binding()))


def owner_blobs(owner: str) -> list[str]:
    return blob_store(get_settings()).names(f"{owner}/")


# --- 1. one call must not erase everyone ------------------------------------------------


@pytest.mark.parametrize("name", ["_", "..", "A" * 32, "new", "0" * 31])
def test_no_conversation_route_reaches_requests_without_one(chat, host, name: str) -> None:
    """`_` is the folder of every key-mode request without a conversation: `DELETE
    /talk/conversations/_` erased them all."""
    answered = post(host, b'{"text": "Keep this."}', JSON)
    rid = body_of(answered)["request_id"]
    for method in ("DELETE", "GET"):
        refused = _conversation(host, method, name)
        assert refused.status_code == 404
        assert body_of(refused)["error"] == "unknown conversation"
    assert get_result(host, rid).status_code == 200  # still there
    assert rid in host.instances


# --- 2. every route is limited ------------------------------------------------------------


@pytest.mark.usefixtures("mid_minute")
def test_reads_are_counted_per_address(chat, host, app_settings) -> None:
    app_settings.setenv("RATE_LIMIT_READS_PER_ADDRESS_PER_MINUTE", "3")
    reset_app_caches()
    phone = new_phone()
    rid = body_of(post(host, b'{"text": "Hello"}', JSON, **phone))["request_id"]
    statuses = [get_result(host, rid, **phone).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    conversation = _conversation(host, "GET", "0" * 32, **phone)
    assert conversation.status_code == 429  # a read too, from the same address
    assert "Retry-After" in conversation.headers
    # Another address reads on.
    assert get_result(host, rid, **new_phone()).status_code == 200


@pytest.mark.usefixtures("mid_minute")
def test_deletes_are_counted_as_writes(chat, host, app_settings) -> None:
    app_settings.setenv("RATE_LIMIT_PER_ADDRESS_PER_MINUTE", "3")
    reset_app_caches()
    phone = new_phone()
    statuses = [_conversation(host, "DELETE", "f" * 32, **phone).status_code for _ in range(4)]
    assert statuses == [404, 404, 404, 429]


def test_a_day_from_one_address_is_capped(chat, host, app_settings) -> None:
    app_settings.setenv("RATE_LIMIT_PER_ADDRESS_PER_DAY", "2")
    reset_app_caches()
    phone = new_phone()
    answers = [post(host, b'{"text": "Q%d"}' % i, JSON, **phone) for i in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert "per day" in body_of(answers[2])["error"]


# --- 3. erasure wins its races --------------------------------------------------------------


@pytest.fixture
def alice(chat, issuer, app_settings) -> Iterator[dict[str, str]]:
    yield bearer(issuer, "alice")


def hold_between(monkeypatch, before_store, after_store) -> None:
    """Run `before_store` just before the request stores itself and `after_store` just
    after: the request held between its steps, without timing."""
    store_request = accept.store_request

    async def held(*args, **kwargs):
        await before_store()
        await store_request(*args, **kwargs)
        await after_store()

    monkeypatch.setattr(accept, "store_request", held)


async def _nothing() -> None:
    return None


def erasing(host, caller: dict[str, str], answers: list[int]):
    """`DELETE /talk/me` of `caller`, to run while a request is held; its status noted."""

    async def erase_now() -> None:
        request = func.HttpRequest(
            method="DELETE", url="http://localhost/talk/me", headers=caller, params={}, body=b""
        )
        answers.append((await FORGET_ME(req=request, client=host.client_binding())).status_code)

    return erase_now


def test_an_erasure_between_reading_the_history_and_storing_wins(
    host,
    alice,
    issuer,
    monkeypatch,
) -> None:
    secret = b'{"text": "My locker code is 4711.", "conversation_id": "new"}'
    conversation_id = body_of(post(host, secret, JSON, **alice))["conversation_id"]
    owner = owner_of(f"{issuer.url}\nalice")
    erased: list[int] = []
    erase_now = erasing(host, alice, erased)
    hold_between(monkeypatch, erase_now, _nothing)
    started = len(host.started)
    question = json.dumps({"text": "What was it?", "conversation_id": conversation_id})
    lost = post(host, question.encode(), JSON, **alice)
    assert erased == [204]
    assert lost.status_code == 409
    assert body_of(lost)["code"] == "erased"
    assert len(host.started) == started  # no orchestration with the erased turns
    assert owner_blobs(owner) == []


def test_an_erasure_between_storing_and_starting_waits_then_wins(
    host,
    alice,
    issuer,
    monkeypatch,
) -> None:
    owner = owner_of(f"{issuer.url}\nalice")
    post(host, b'{"text": "My locker code is 4711."}', JSON, **alice)
    erased: list[int] = []
    erase_now = erasing(host, alice, erased)
    hold_between(monkeypatch, _nothing, erase_now)
    started = len(host.started)
    upload = phone_upload(QUESTIONS[0], "m4a")
    lost = post(host, *android_upload(upload), **alice)
    # The erasure found a request about to start: it asked to be retried, and the request,
    # finding the erasure begun, removed itself.
    assert erased == [409]
    assert (lost.status_code, body_of(lost)["code"]) == (409, "erased")
    assert len(host.started) == started
    monkeypatch.undo()
    assert forget_me(host, **alice).status_code == 204
    assert owner_blobs(owner) == []


def test_an_erasure_during_a_turn_stops_its_writes(
    host,
    issuer,
    app_settings,
    stub_mp3,
) -> None:
    """The turn is in its reply when the erasure begins: the erasure waits for it (409),
    and the turn writes no reply and no turn after that."""
    entered, release = threading.Event(), threading.Event()

    def slow_reply(request):
        entered.set()
        release.wait(30)
        return chat_completion("Your code is safe.")(request)

    with StubServer(slow_reply) as chat:
        app_settings.setenv("LLM_PROVIDER", "openai")
        app_settings.setenv("LLM_BASE_URL", f"{chat.url}/v1")
        app_settings.setenv("LLM_MODEL", "stub")
        reset_app_caches()
        alice = bearer(issuer, "alice")
        owner = owner_of(f"{issuer.url}\nalice")
        answers: list[func.HttpResponse] = []
        turn = threading.Thread(
            target=lambda: answers.append(post(host, b'{"text": "Remember 4711"}', JSON, **alice))
        )
        turn.start()
        assert entered.wait(30)
        assert forget_me(host, **alice).status_code == 409  # a turn is being answered
        release.set()
        turn.join(60)
    assert (answers[0].status_code, body_of(answers[0])["code"]) == (409, "erased")
    assert not [name for name in owner_blobs(owner) if "/reply-" in name]
    assert forget_me(host, **alice).status_code == 204
    assert owner_blobs(owner) == []


# --- 4. no input buys unbounded CPU ---------------------------------------------------------


def one_phrase_repeated(seconds: float) -> bytes:
    pcm, rate = spoken(QUESTIONS[0])
    phrase = np.concatenate([pcm, np.zeros(rate // 4, dtype=np.int16)])
    repeats = int(np.ceil(seconds * rate / len(phrase)))
    return encode(np.tile(phrase, repeats)[: int(seconds * rate)], rate, "m4a")


def test_a_long_looping_upload_stops_at_its_second_window(settings, monkeypatch) -> None:
    """112 s of one phrase ran Whisper's whole fallback ladder (6 temperatures, 5 samples)
    on every 30 s window before the loop check refused it: 63-75 CPU-seconds."""
    decodes: list[int] = []
    from faster_whisper import transcribe as fw

    original = fw.WhisperModel.generate_with_fallback

    def counting(self, *args, **kwargs):
        decodes.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(fw.WhisperModel, "generate_with_fallback", counting)
    with pytest.raises(Exception) as refused:
        transcribe(one_phrase_repeated(112), request_id="loop", settings=settings)
    assert getattr(refused.value, "code", None) == "unintelligible"
    # Windows decoded, of four. The work ends at the second window that loops (the first
    # might be a laugh), or at once when the transcript so far loops as a whole; three when a
    # hotter sample breaks one window's loop (sampling is random).
    assert 1 <= len(decodes) <= 3


def test_a_transcription_past_its_cpu_budget_is_refused(settings) -> None:
    tight = Settings(**{**settings.__dict__, "max_stt_cpu_seconds": 0.01})
    with pytest.raises(Exception) as refused:
        transcribe(app_recording(60.0), request_id="budget", settings=tight)
    assert getattr(refused.value, "code", None) == "stt_budget_spent"
    # The clock counts every request's decodes: a busy instance, so retry, not "say it again".
    assert (refused.value.status, refused.value.retry_after_s) == (503, 5)


# --- 5. the reply cache shares nothing between users ----------------------------------------


def test_key_mode_refuses_a_reply_cache_shared_by_every_user() -> None:
    with pytest.raises(ConfigError, match="LLM_CACHE=on needs AUTH_MODE=jwt"):
        Settings.from_env({"LLM_CACHE": "on"})


def test_key_mode_answers_say_nothing_of_other_users_speech(paid, host) -> None:  # noqa: F811
    _, voice = paid
    first = post(host, b'{"text": "Bye"}', JSON, **new_phone())
    other = post(host, b'{"text": "Bye"}', JSON, **new_phone())
    assert len(voice.requests) == 1  # the second was spoken from the shared cache ...
    assert body_of(first)["cache"] == body_of(other)["cache"] == []  # ... and says nothing
    assert other.headers["X-Cache"] == "none"


# --- 6. bearer tokens are checked for what they were issued for -----------------------------


@pytest.mark.parametrize(
    "claims",
    [
        {"scp": "Admin.Read"},  # granted another of the API's scopes
        {"scp": None, "roles": ["Reports.Read"], "azp": "other-client"},  # app-only, another app
    ],
    ids=["another-scope", "app-only-token"],
)
def test_a_token_not_issued_for_talking_is_401(chat, issuer, host, claims) -> None:
    token = issuer.token("mallory", **claims)
    refused = post(host, b'{"text": "Hi"}', JSON, Authorization=f"Bearer {token}")
    assert refused.status_code == 401


def test_only_the_allowed_clients_tokens_are_taken(chat, issuer, host, app_settings) -> None:
    app_settings.setenv("AUTH_ALLOWED_CLIENTS", "mobile-app, ios-app")
    reset_app_caches()
    mine = issuer.token("alice", azp="mobile-app")
    theirs = issuer.token("alice", azp="some-other-app")
    assert post(host, b'{"text": "Hi"}', JSON, Authorization=f"Bearer {mine}").status_code == 200
    assert post(host, b'{"text": "Hi"}', JSON, Authorization=f"Bearer {theirs}").status_code == 401


def test_tid_is_the_issuers_tenant_not_any_path_segment(chat, issuer, host) -> None:
    """The issuer is `.../<tenant>/v2.0`: a `tid` of `v2.0` matched a path segment of it
    and made `oid` (which an issuer may let users set) the identity."""
    claims = {"tid": "v2.0", "oid": "the-victims-object-id"}
    victim = {"Authorization": f"Bearer {issuer.token('victim', **claims)}"}
    mallory = {"Authorization": f"Bearer {issuer.token('mallory', **claims)}"}
    rid = body_of(post(host, b'{"text": "Private"}', JSON, **victim))["request_id"]
    assert get_result(host, rid, **mallory).status_code == 404
    assert get_result(host, rid, **victim).status_code == 200


def test_jwt_mode_without_a_required_scope_or_role_is_a_config_error() -> None:
    env = {"AUTH_MODE": "jwt", "AUTH_ISSUER": "https://idp.example/t/v2.0", "AUTH_AUDIENCE": "a"}
    with pytest.raises(ConfigError, match="AUTH_REQUIRED_SCOPE or AUTH_REQUIRED_ROLE"):
        Settings.from_env(env)
    Settings.from_env({**env, "AUTH_REQUIRED_SCOPE": SCOPE})


# --- 7. IPv4 written as IPv6 --------------------------------------------------------------


@pytest.mark.usefixtures("mid_minute")
def test_ipv4_mapped_addresses_are_limited_as_themselves(chat, host, app_settings) -> None:
    assert address_subject("::ffff:198.51.100.7") == address_subject("198.51.100.7")
    app_settings.setenv("RATE_LIMIT_PER_ADDRESS_PER_MINUTE", "1")
    reset_app_caches()
    first = post(host, b'{"text": "Hi"}', JSON, **{"X-Forwarded-For": "[::ffff:10.33.0.1]:1"})
    other = post(host, b'{"text": "Yo"}', JSON, **{"X-Forwarded-For": "[::ffff:10.33.0.2]:1"})
    assert (first.status_code, other.status_code) == (200, 200)  # not one ::/64 bucket


# --- 8. make serve --------------------------------------------------------------------------


def test_the_durable_stand_in_answers_no_one_without_its_key(chat, host) -> None:
    import requests

    rid = body_of(post(host, b'{"text": "Hi"}', JSON))["request_id"]
    base = host._server.url
    for path in (f"/runtime/webhooks/durabletask/instances/{rid}", f"/x/instances/{rid}"):
        assert requests.get(f"{base}{path}", timeout=5).status_code == 401
        assert requests.delete(f"{base}{path}", timeout=5).status_code == 401
    assert rid in host.instances


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: -5\r\n\r\n" + b"x" * 2000,
        b"Content-Length: +5\r\n\r\nxxxxx",
        b"Content-Length: 0x10\r\n\r\n" + b"x" * 16,
        b"Transfer-Encoding: chunked\r\n\r\n-10\r\n" + b"x" * 2000 + b"\r\n0\r\n\r\n",
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\nx\r\n0\r\n\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nxxxxx\r\n0\r\n\r\n",
        b"Transfer-Encoding: chunked\r\n\r\n1;" + b"e" * 5000 + b"\r\nx\r\n0\r\n\r\n",
        b"Transfer-Encoding: chunked\r\n\r\n1\r\nxyz\r\n0\r\n\r\n",
    ],
    ids=[
        "negative",
        "plus-sign",
        "hex-length",
        "negative-chunk",
        "not-hex-chunk",
        "another-encoding",
        "endless-chunk-line",
        "chunk-longer-than-its-size",
    ],
)
def test_make_serve_refuses_lengths_that_are_not_lengths(host, framing: bytes) -> None:
    with FunctionsHttpHost(host, key="k", master_key="m", body_limit=1000) as front:
        port = front.server.server_address[1]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /talk?code=k HTTP/1.1\r\nHost: x\r\n" + framing)
            answer = sock.recv(200)
    assert answer.startswith(b"HTTP/1.1 400")
    assert not host.started


# --- 9. python -m talk reads no settings from the folder it runs in ---------------------------


def test_a_planted_env_file_cannot_send_a_key_elsewhere(tmp_path, stub_mp3) -> None:
    import subprocess
    import sys

    with StubServer(elevenlabs_speech(stub_mp3)) as thief:
        (tmp_path / ".env").write_text(f"ELEVENLABS_BASE_URL={thief.url}\n")
        env = cli_environment(
            ELEVENLABS_API_KEY="sk_the_users_own",
            LLM_PROVIDER="local",
            HTTP_RETRIES="0",
            HTTP_CONNECT_TIMEOUT_SECONDS="1",
        )
        env.pop("TALK_ENV_FILE")  # as a user runs it
        subprocess.run(
            [sys.executable, "-m", "talk", "--text", "Hi"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            timeout=120,
        )
    assert thief.requests == []


# --- 10. fairness, polls, traces, erased counters ----------------------------------------------


def test_one_address_cannot_spend_the_days_voice_for_everyone(paid, host, app_settings):  # noqa: F811
    _, voice = paid
    app_settings.setenv("TTS_CACHE", "off")
    app_settings.setenv("TTS_DAILY_CHARACTER_BUDGET", "100")
    app_settings.setenv("BUDGET_SHARE_PER_CALLER", "0.2")  # 20 characters each
    reset_app_caches()
    _fresh_day()
    phone = new_phone()
    greedy = [post(host, b'{"text": "Q%d"}' % i, JSON, **phone) for i in range(3)]
    other = post(host, b'{"text": "Hello"}', JSON, **new_phone())
    assert [a.status_code for a in greedy] == [200, 503, 503]
    assert "your share" in body_of(greedy[1])["error"]
    assert other.status_code == 200
    assert len(voice.requests) == 2


def test_addresses_are_stored_under_a_salt_of_the_deployments_own(chat, host) -> None:
    phone = new_phone()
    post(host, b'{"text": "Hi"}', JSON, **phone)
    table = table_service(get_settings()).get_table_client(TABLE)
    keys = {key for row in table.list_entities() for key in (row["PartitionKey"], row["RowKey"])}
    subject = address_subject(phone["X-Forwarded-For"].split(":")[0])
    unsalted = hashlib.sha256(subject.encode()).hexdigest()[:32]
    assert unsalted not in keys  # could be found by hashing every IPv4 address
    assert hashed(subject, subject_salt(get_settings())) in keys


def _counters_of(subject: str) -> list[str]:
    table = table_service(get_settings()).get_table_client(TABLE)
    partition = hashed(subject, subject_salt(get_settings()))
    query = "PartitionKey eq @p"
    return [row["RowKey"] for row in table.query_entities(query, parameters={"p": partition})]


def test_erasing_a_caller_erases_what_counted_them(host, alice, issuer, monkeypatch) -> None:
    post(host, b'{"text": "Hi"}', JSON, **alice)
    owner = owner_of(f"{issuer.url}\nalice")
    counted = _counters_of(f"caller:{owner}")
    assert counted
    # Two days on, every window that counted those requests has ended: they all go (the
    # erasure's own request counts in windows still open).
    later = time.time() + 2 * 86_400
    monkeypatch.setitem(RateLimiter.__init__.__kwdefaults__, "clock", lambda: later)
    reset_app_caches()
    assert forget_me(host, **alice).status_code == 204
    assert not set(counted) & set(_counters_of(f"caller:{owner}"))


@pytest.mark.usefixtures("mid_minute")
def test_erasing_oneself_does_not_renew_ones_limits(host, alice, app_settings) -> None:
    app_settings.setenv("RATE_LIMIT_PER_MINUTE", "3")
    reset_app_caches()
    assert post(host, b'{"text": "One"}', JSON, **alice).status_code == 200
    assert post(host, b'{"text": "Two"}', JSON, **alice).status_code == 200
    assert forget_me(host, **alice).status_code == 204  # the third write of the minute
    assert post(host, b'{"text": "Four"}', JSON, **alice).status_code == 429


def test_storage_addresses_in_traces_name_no_blob_or_entity(app_settings, host) -> None:
    from shared.telemetry.setup import configure_in_memory

    spans, _ = configure_in_memory()
    spans.clear()
    question = b'{"text": "Hi", "conversation_id": "new"}'
    answer = body_of(post(host, question, JSON))
    rid, conversation_id = answer["request_id"], answer["conversation_id"]
    recorded = json.dumps(
        [
            value
            for span in spans.get_finished_spans()
            for name, value in (span.attributes or {}).items()
            if name.startswith(("url.", "http.url", "http.target"))
        ]
    )
    assert "talk-audio" in recorded  # storage calls are traced, by container ...
    assert rid not in recorded and conversation_id not in recorded  # ... and no further
    assert "PartitionKey" not in recorded


# --- from the review of this round -----------------------------------------------------------


def test_a_prefer_header_of_odd_digits_is_no_500(chat, host) -> None:
    answered = post(host, b'{"text": "Hi"}', JSON, Prefer="respond-async, wait=\u00b2")
    assert answered.status_code in (200, 202)


def test_a_megabyte_preamble_is_refused_before_it_is_searched() -> None:
    from shared.talk_input import parse_talk_input

    body = b"-" * 5_000_000 + b"\r\n--" + b"-" * 200 + b"\r\nContent-Disposition: form-data; "
    body += b'name="text"\r\n\r\nhi\r\n--' + b"-" * 200 + b"--\r\n"
    with pytest.raises(Exception) as refused:
        parse_talk_input(f"multipart/form-data; boundary={'-' * 200}", body, Settings())
    assert refused.value.status == 400


@pytest.mark.parametrize(
    ("url", "cut"),
    [
        (
            "https://st.blob.core.windows.net/talk-audio/u1/c/r/input.m4a?comp=x",
            "https://st.blob.core.windows.net/talk-audio",
        ),
        (
            "https://st.z12.blob.storage.azure.net/talk-audio/u1/r",
            "https://st.z12.blob.storage.azure.net/talk-audio",
        ),
        (
            "https://st.table.core.usgovcloudapi.net/conversations(PartitionKey='u1-c')",
            "https://st.table.core.usgovcloudapi.net/conversations",
        ),
        (
            "https://st.dfs.core.chinacloudapi.cn/fs/dir/file",
            "https://st.dfs.core.chinacloudapi.cn/fs",
        ),
        (
            "http://devstoreaccount1.blob.localhost:10000/talk-audio/u1/r",
            "http://devstoreaccount1.blob.localhost:10000/talk-audio",
        ),
        (
            "http://127.0.0.1:10000/otheraccount/talk-audio/u1/r",
            "http://127.0.0.1:10000/otheraccount/talk-audio",
        ),
        ("https://router.huggingface.co/v1/chat/completions", None),
        ("https://kv.vault.azure.net/secrets/hf-api-token", None),
    ],
)
def test_storage_urls_are_cut_wherever_the_account_lives(url: str, cut: str | None) -> None:
    from shared.telemetry.urls import storage_resource

    assert storage_resource(url) == cut


def test_entra_tenants_are_guids_found_in_any_entra_issuer() -> None:
    from shared.security.tokens import TokenPolicy, TokenVerifier

    tenant = "8c1d9e2a-5b7f-4e3a-9d6c-2f0a1b3c4d5e"
    b2c = TokenVerifier(
        f"https://x.b2clogin.com/tfp/{tenant}/b2c_1_signin/v2.0/", "a", TokenPolicy("s")
    )
    keycloak = TokenVerifier("https://id.example/realms/talk", "a", TokenPolicy("s"))
    assert (b2c._tenant, keycloak._tenant) == (tenant, None)


def test_a_scope_list_counts_as_scopes() -> None:
    from shared.security.tokens import TokenPolicy

    assert TokenPolicy("Talk.Use").allows({"scp": ["openid", "Talk.Use"]})
    assert not TokenPolicy("Talk.Use").allows({"scp": ["openid"]})


def test_a_settings_file_that_is_not_there_is_an_error(tmp_path, monkeypatch) -> None:
    from shared.config import ENV_FILE, read_settings

    monkeypatch.setenv(ENV_FILE, str(tmp_path / "typo.env"))
    with pytest.raises(ConfigError, match="does not exist"):
        read_settings()
