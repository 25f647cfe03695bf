"""`python -m talk`: answer a spoken or written question with a spoken reply, in-process."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import dotenv
from opentelemetry.trace import SpanKind

from shared import telemetry
from shared.answer import TalkResult
from shared.config import ENV_FILE, Settings, env_file, get_settings
from shared.errors import BadInput, TalkError
from shared.pipeline import TalkRequest, talk
from shared.providers import default_secrets, log_active_providers, required_secrets
from shared.security.secrets import SecretStore, redact
from shared.storage.conversations import validate_conversation_id
from shared.telemetry.setup import configure_in_memory
from shared.telemetry.tree import span_tree

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from talk.remote import ask_backend

log = logging.getLogger("talk")

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m talk",
        description="Transcribe a question, generate a short reply, and speak it as MP3.",
    )
    parser.add_argument(
        "audio_file", nargs="?", type=Path, help="recorded question (any phone format)"
    )
    parser.add_argument("--text", help="ask in writing instead of with audio")
    parser.add_argument("--voice", help="voice persona (Kim, Milla, John, Lily) or voice id")
    parser.add_argument("--language", help="language of the speech, e.g. en or fi")
    parser.add_argument(
        "--conversation-id", help="remember this conversation's last turns (letters, digits, -, _)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("reply.mp3"), help="where to write the MP3"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log each stage at LOG_LEVEL on stderr"
    )
    parser.add_argument(
        "--trace", action="store_true", help="print the turn's spans, with timings, on stderr"
    )
    parser.add_argument(
        "--url", help="ask a deployed backend at this address instead of running in-process"
    )
    parser.add_argument(
        "--key",
        default=os.environ.get("TALK_FUNCTION_KEY"),
        help="function key for --url (default: $TALK_FUNCTION_KEY)",
    )
    parser.add_argument(
        "--env-file",
        type=Path,
        help="read settings from this file (.env format) instead of the project's "
        ".env and local.settings.json; never from the current folder",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    recorded = None
    if args.env_file:
        os.environ[ENV_FILE] = str(args.env_file.resolve())
    try:
        settings = get_settings()
        logging.basicConfig(
            level=settings.log_level.upper() if args.verbose else logging.WARNING,
            format="%(asctime)s %(levelname)s %(message)s",
            stream=sys.stderr,
        )
        redact.install()
        if args.trace:
            recorded = configure_in_memory()[0]
        else:
            telemetry.configure(settings)
        if args.url:
            result = ask_backend(
                args.url,
                key=args.key,
                audio_file=args.audio_file,
                text=args.text,
                voice=args.voice,
                language=args.language,
                conversation_id=args.conversation_id,
            )
        else:
            secrets = default_secrets(settings)
            _ask_for_missing_secrets(settings, secrets, interactive=sys.stdin.isatty())
            log_active_providers(settings, secrets)
            with telemetry.traced("talk", kind=SpanKind.SERVER):
                result = talk(_request(args), settings, secrets)
        args.out.write_bytes(result.mp3)
    except BadInput as error:
        print(f"error: {error.message}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    except (TalkError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        code = EXIT_FAILURE
    else:
        print(_as_json(result) if args.json else _as_text(result, args.out), flush=True)
        code = EXIT_OK
    _show_trace(recorded)
    return code


def _show_trace(recorded: InMemorySpanExporter | None) -> None:
    telemetry.flush()
    if recorded is not None and (spans := recorded.get_finished_spans()):
        print(span_tree(spans), file=sys.stderr)


def _ask_for_missing_secrets(settings: Settings, secrets: SecretStore, interactive: bool) -> None:
    """Prompt for keys that an explicitly chosen provider needs, as the operations guide says."""
    for name, provider in required_secrets(settings).items():
        if secrets.get(name):
            continue
        if not interactive:
            log.warning("%s is not set: the %s provider cannot be used", name, provider)
            continue
        value = getpass.getpass(f"{name} (for {provider}, input hidden): ").strip()
        if not value:
            continue
        os.environ[name] = value
        secrets.clear()
        saved_to = env_file()
        if input(f"Save it to {saved_to} for next time? [y/N] ").strip().lower() in ("y", "yes"):
            dotenv.set_key(saved_to, name, value)
            print(f"Saved to {saved_to} (keep it out of version control).", file=sys.stderr)


def _request(args: argparse.Namespace) -> TalkRequest:
    audio = None
    if args.audio_file is not None:
        try:
            audio = args.audio_file.read_bytes()
        except OSError as error:
            raise BadInput(f"cannot read {args.audio_file}: {error.strerror}") from None
    return TalkRequest(
        audio=audio,
        text=args.text,
        voice=args.voice,
        language=args.language,
        conversation_id=validate_conversation_id(args.conversation_id),
    )


def _as_json(result: TalkResult) -> str:
    return json.dumps(
        {
            "request_id": result.request_id,
            "transcript": result.transcript,
            "text": result.text,
            "language": result.language,
            "audio_bytes": len(result.mp3),
            "audio_format": "mp3",
            "timings_ms": result.timings_ms,
            "providers": result.providers,
            "cache": result.cache,
            **({"conversation_id": result.conversation_id} if result.conversation_id else {}),
        },
        ensure_ascii=False,
    )


def _as_text(result: TalkResult, out: Path) -> str:
    timings = "  ".join(f"{stage} {ms} ms" for stage, ms in result.timings_ms.items())
    lines = [
        f"You said:  {result.transcript}" if result.transcript is not None else None,
        f"Reply:     {result.text}",
        f"Timings:   {timings}",
        f"Wrote {out} ({len(result.mp3)} bytes of MP3)",
    ]
    return "\n".join(line for line in lines if line is not None)
