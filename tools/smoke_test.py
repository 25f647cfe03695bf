"""The deploy workflow's smoke test: readiness, then what a deploy can break, free of charge.

`python -m tools.smoke_test URL` with the function key in `$TALK_FUNCTION_KEY` and the
host's master key in `$TALK_MASTER_KEY`. It needs only `requests` (the workflow installs
nothing else). In order:

1. `GET /health/ready` (master key), waiting (bounded) while the app starts or its roles
   propagate. Provider secrets not set yet (the first deploy) are a notice, not a failure.
2. `POST /health/speech` (master key) with `samples/question.m4a`: the deployed app hears
   it with its own Whisper model and says it back with the embedded voice. This checks the
   package, its models, the decoder and the MP3 encoder with no paid call: no Hugging Face
   tokens, no ElevenLabs characters, no daily budget spent, nothing stored.
3. `GET /talk/<an id no request has>` (function key): `404` proves the function key, the
   caller's rate-limit counters in Table Storage and the Durable task hub all answer.

`--ask` adds one spoken question through `/talk` as the Android app asks it (a paid call
to each provider); a spent daily budget is then a notice, not a failure. Exits 1 on any
failure. Lines starting with `::` are GitHub Actions annotations.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import requests

from shared.errors import TalkError
from talk.remote import ask_backend

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "question.m4a"
# The first request after a deploy may load Whisper and the embedded voice (a cold start).
SELF_CHECK_TIMEOUT_S = 180


class SmokeFailed(Exception):
    """A check failed; its message is the annotation."""


def readiness(
    url: str, master_key: str | None, *, attempts: int, delay_s: float
) -> tuple[int, Any]:
    """The last readiness answer, waiting while the app starts or its roles propagate."""
    headers = {"x-functions-key": master_key} if master_key else {}
    status, body = 0, None
    for attempt in range(attempts):
        try:
            response = requests.get(f"{url}/health/ready", headers=headers, timeout=30)
            status, body = response.status_code, response.json()
        except (requests.RequestException, ValueError) as error:
            status, body = 0, {"error": type(error).__name__}
        if status == 200 or _only_secrets_missing(status, body):
            break
        if attempt + 1 < attempts:
            print(f"Not ready yet ({status}): {body}; retrying in {delay_s:g} s", flush=True)
            time.sleep(delay_s)
    return status, body


def _only_secrets_missing(status: int, body: Any) -> bool:
    if status != 503 or not isinstance(body, dict):
        return False
    checks = body.get("checks") or {}
    failing = {name: value for name, value in checks.items() if value != "ok"}
    # Only "missing: a, b": a Key Vault that refused or could not be reached adds its
    # problem after a semicolon, and that is a broken deploy, not a first one.
    return set(failing) == {"secrets"} and bool(
        re.fullmatch(r"missing: [^;]*", str(failing["secrets"]))
    )


def speak_back(url: str, master_key: str | None) -> str:
    headers = {"Content-Type": "audio/mp4"}
    if master_key:
        headers["x-functions-key"] = master_key
    status, answer = _call("POST", f"{url}/health/speech", headers, data=SAMPLE.read_bytes())
    try:
        if status == 200 and answer["audio_bytes"] > 0:
            timings = answer["timings_ms"]
            return (
                f"heard {answer['transcript']!r} ({answer['language']}) in {timings['stt']} ms, "
                f"said it back in {answer['audio_bytes']} bytes of MP3 in {timings['tts']} ms"
            )
    except (KeyError, TypeError):
        pass
    raise SmokeFailed(f"the self-check failed ({status}): {answer}")


def durable_answers(url: str, key: str | None) -> str:
    headers = {"Accept": "application/json", **({"x-functions-key": key} if key else {})}
    status, body = _call("GET", f"{url}/talk/{secrets.token_hex(16)}", headers)
    if status != 404 or "request_id" not in body:
        raise SmokeFailed(f"GET /talk/<id> should be 404 for an unknown id, got {status}: {body}")
    return "an unknown request id is 404 (function key, counters and Durable answer)"


def _call(method: str, url: str, headers: dict[str, str], **kwargs: Any) -> tuple[int, dict]:
    try:
        response = requests.request(
            method, url, headers=headers, timeout=(10, SELF_CHECK_TIMEOUT_S), **kwargs
        )
    except requests.RequestException as error:
        raise SmokeFailed(f"{method} {url.split('?')[0]}: {type(error).__name__}") from None
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text[:200]}
    return response.status_code, body if isinstance(body, dict) else {"body": body}


def ask(url: str, key: str | None) -> str:
    try:
        result = ask_backend(url, key=key, audio_file=SAMPLE, text=None, voice=None, language=None)
    except TalkError as error:
        if getattr(error, "code", None) == "budget_exhausted":
            print(f"::notice::/talk not asked: a daily budget is spent ({error})", flush=True)
            return "skipped: budget spent"
        raise SmokeFailed(f"/talk failed: {error}") from None
    return (
        f"/talk answered {result.request_id}: heard {result.transcript!r}, replied "
        f"{len(result.text)} characters and {len(result.mp3)} bytes of MP3"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.smoke_test")
    parser.add_argument("url")
    parser.add_argument("--attempts", type=int, default=20)
    parser.add_argument("--delay", type=float, default=15.0)
    parser.add_argument(
        "--ask", action="store_true", help="also ask /talk one question (paid provider calls)"
    )
    args = parser.parse_args(argv)
    url = args.url.rstrip("/")
    key = os.environ.get("TALK_FUNCTION_KEY")
    master_key = os.environ.get("TALK_MASTER_KEY")
    status, body = readiness(url, master_key, attempts=args.attempts, delay_s=args.delay)
    secrets_missing = _only_secrets_missing(status, body)
    if secrets_missing:
        print(
            f"::notice::The provider secrets are not set yet ({body['checks']['secrets']}): "
            "/talk answers 503 until they are set in Key Vault (docs/deploy.md, step 3).",
            flush=True,
        )
    elif status != 200:
        print(f"::error::the app is not ready ({status}): {body}", flush=True)
        return 1
    else:
        print(f"Ready: {body}", flush=True)
    checks = [("self-check", lambda: speak_back(url, master_key))]
    checks.append(("durable", lambda: durable_answers(url, key)))
    if args.ask and secrets_missing:
        print("::notice::--ask: /talk not asked, its secrets are not set", flush=True)
    elif args.ask:
        checks.append(("talk", lambda: ask(url, key)))
    for name, check in checks:
        try:
            print(f"{name}: {check()}", flush=True)
        except SmokeFailed as failed:
            print(f"::error::{name}: {failed}", flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
