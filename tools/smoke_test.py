"""The deploy workflow's smoke test: readiness, then one spoken question through `/talk`.

`python -m tools.smoke_test URL` with the function key in `$TALK_FUNCTION_KEY` and the
host's master key in `$TALK_MASTER_KEY` (readiness is for operators only). It waits
(bounded) for `/health/ready`; when the app is ready it asks `samples/question.m4a`
exactly as the Android app does. When the only thing missing is the provider secrets (the
first deploy, before they are set in Key Vault) it skips `/talk` with a notice and exits 0;
anything else not ready, or a failed `/talk`, exits 1. Lines starting with `::` are GitHub
Actions annotations.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import requests

from shared.errors import TalkError
from talk.remote import ask_backend

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "question.m4a"


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
    return set(failing) == {"secrets"} and str(failing["secrets"]).startswith("missing")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.smoke_test")
    parser.add_argument("url")
    parser.add_argument("--attempts", type=int, default=20)
    parser.add_argument("--delay", type=float, default=15.0)
    args = parser.parse_args(argv)
    url = args.url.rstrip("/")
    key = os.environ.get("TALK_FUNCTION_KEY")
    master_key = os.environ.get("TALK_MASTER_KEY")
    status, body = readiness(url, master_key, attempts=args.attempts, delay_s=args.delay)
    if _only_secrets_missing(status, body):
        print(
            f"::notice::/talk not smoke-tested: the provider secrets are not set yet "
            f"({body['checks']['secrets']}). Set them in Key Vault (README: deploy order), "
            "then re-run this workflow.",
            flush=True,
        )
        return 0
    if status != 200:
        print(f"::error::the app is not ready ({status}): {body}", flush=True)
        return 1
    print(f"Ready: {body}", flush=True)
    try:
        result = ask_backend(url, key=key, audio_file=SAMPLE, text=None, voice=None, language=None)
    except TalkError as error:
        print(f"::error::/talk failed: {error}", flush=True)
        return 1
    print(
        f"/talk answered {result.request_id}: heard {result.transcript!r}, replied "
        f"{len(result.text)} characters and {len(result.mp3)} bytes of MP3",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
