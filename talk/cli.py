"""`python -m talk`: answer a spoken or written question with a spoken reply, in-process."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import dotenv
from opentelemetry.trace import SpanKind

from shared import telemetry
from shared.answer import TalkResult
from shared.config import ENV_FILE, Settings, env_file, get_settings
from shared.errors import BadInput, NoInput, TalkError
from shared.llm import get_generator
from shared.pipeline import (
    TalkRequest,
    talk,
)
from shared.providers import default_secrets, log_active_providers, required_secrets
from shared.security.identity import SHARED_OWNER
from shared.security.secrets import SecretStore, redact
from shared.storage.conversations import validate_conversation_id
from shared.streaming import StreamedTurn
from shared.telemetry.setup import configure_in_memory
from shared.telemetry.tree import span_tree
from shared.tts import get_synthesizer
from talk.remote import (
    StreamEvent,
    StreamFailed,
    StreamResult,
    ask_backend,
    follow,
    stream_backend,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

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
        "--stream",
        action="store_true",
        help="hear the reply as it is made: print each sentence and write the MP3 to --out as "
        "it comes, then the time to the first audio; with --url, from POST /talk/stream",
    )
    parser.add_argument(
        "--url",
        help="ask a deployed backend at this address instead of running in-process; with "
        "--stream, the streaming app's own address (STREAM_FUNCTION_URL after azd up; make "
        "serve's 'Streaming app' line)",
    )
    parser.add_argument(
        "--key",
        default=os.environ.get("TALK_FUNCTION_KEY"),
        help="function key for --url, the streaming app's with --stream "
        "(default: $TALK_FUNCTION_KEY)",
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
        if args.stream:
            with _Shown(args.out, show=not args.json) as shown:
                streamed = _stream(args, settings, shown)
            output = _streamed_json(streamed) if args.json else _streamed_text(streamed, args.out)
        else:
            result = _answer(args, settings)
            args.out.write_bytes(result.mp3)
            output = _as_json(result) if args.json else _as_text(result, args.out)
    except StreamFailed as error:  # after the reply began
        print(f"error: {error.code}: {error.message}", file=sys.stderr)
        code = EXIT_FAILURE
    except BadInput as error:
        print(f"error: {error.message}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    except (TalkError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        code = EXIT_FAILURE
    else:
        print(output, flush=True)
        code = EXIT_OK
    _show_trace(recorded)
    return code


def _answer(args: argparse.Namespace, settings: Settings) -> TalkResult:
    if args.url:
        return ask_backend(args.url, **_asked(args))
    secrets = _local_secrets(settings)
    with telemetry.traced("talk", kind=SpanKind.SERVER):
        return talk(_request(args), settings, secrets)


def _asked(args: argparse.Namespace) -> dict[str, Any]:
    """What `--url` sends, to `/talk` and `/talk/stream` alike."""
    return {
        "key": args.key,
        "audio_file": args.audio_file,
        "text": args.text,
        "voice": args.voice,
        "language": args.language,
        "conversation_id": args.conversation_id,
    }


def _show_trace(recorded: InMemorySpanExporter | None) -> None:
    telemetry.flush()
    if recorded is not None and (spans := recorded.get_finished_spans()):
        print(span_tree(spans), file=sys.stderr)


def _local_secrets(settings: Settings) -> SecretStore:
    secrets = default_secrets(settings)
    _ask_for_missing_secrets(settings, secrets, interactive=sys.stdin.isatty())
    log_active_providers(settings, secrets)
    return secrets


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
    lines = [
        f"You said:  {result.transcript}" if result.transcript is not None else None,
        f"Reply:     {result.text}",
        _timings(result.timings_ms),
        _wrote(out, len(result.mp3)),
    ]
    return "\n".join(line for line in lines if line is not None)


def _timings(timings_ms: dict[str, int]) -> str:
    return "Timings:   " + "  ".join(f"{stage} {ms} ms" for stage, ms in timings_ms.items())


def _wrote(out: Path, size: int) -> str:
    return f"Wrote {out} ({size} bytes of MP3)"


# --- --stream ----------------------------------------------------------------------------


class _Shown:
    """A streamed reply as it arrives: its MP3 written to `out` a piece at a time (flushed,
    so a player can follow the file), and with `show`, what was heard and each sentence."""

    def __init__(self, out: Path, *, show: bool) -> None:
        self.out, self.show = out, show
        self.sentences = 0
        self._file: IO[bytes] | None = None

    def __call__(self, event: StreamEvent) -> None:
        if event.name == "audio":
            if self._file is None:  # opened once there is audio: an error leaves no file
                self._file = self.out.open("wb")
            self._file.write(event.mp3)
            self._file.flush()
        elif self.show and event.name == "meta" and event.data.get("transcript") is not None:
            print(f"You said:  {event.data['transcript']}", flush=True)
        elif self.show and event.name == "text":
            label = "" if self.sentences else "Reply:"
            print(f"{label:11}{event.data['text']}", flush=True)
            self.sentences += 1

    def __enter__(self) -> _Shown:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()


def _stream(
    args: argparse.Namespace, settings: Settings, on_event: Callable[[StreamEvent], None]
) -> StreamResult:
    if args.url:
        return stream_backend(args.url, **_asked(args), on_event=on_event)
    if args.conversation_id:
        raise BadInput("--stream keeps no conversation in-process: use it with --url")
    request = _request(args)
    if request.audio is None and not (request.text and request.text.strip()):
        raise NoInput("send audio or text")
    secrets = _local_secrets(settings)
    # Nothing is stored in-process, so nothing could be counted against a daily budget.
    _refuse_budget(
        get_generator(settings, secrets).billed and settings.llm_daily_token_budget,
        "LLM_DAILY_TOKEN_BUDGET",
    )
    _refuse_budget(
        get_synthesizer(settings, secrets).billed and settings.tts_daily_character_budget,
        "TTS_DAILY_CHARACTER_BUDGET",
    )
    _refuse_budget(
        settings.stt_provider == "huggingface" and settings.stt_daily_seconds_budget,
        "STT_DAILY_SECONDS_BUDGET",
    )
    job = {
        "request_id": request.request_id,
        "owner": SHARED_OWNER,
        "blob_prefix": "",
        "text": request.text,
        "voice": request.voice,
        "language": request.language,
        "system_prompt": request.system_prompt,
        "conversation": None,
    }
    started = time.perf_counter()
    turn = StreamedTurn(job, settings=settings, audio=request.audio, recorded=False)
    with telemetry.traced("talk", kind=SpanKind.SERVER):
        # A failure before the first event is raised as is.
        events = (StreamEvent(event.name, event.data) for event in turn.events())
        return follow(events, started, on_event)


def _refuse_budget(applies: object, budget: str) -> None:
    if applies:
        raise BadInput(
            f"--stream without --url counts nothing against {budget}: "
            "use --url, or run without the budget"
        )


def _streamed_json(streamed: StreamResult) -> str:
    return json.dumps(
        {**streamed.done, "first_audio_ms": streamed.first_audio_ms}, ensure_ascii=False
    )


def _streamed_text(streamed: StreamResult, out: Path) -> str:
    first = streamed.first_audio_ms
    heard = "no audio" if first is None else f"first audio after {first} ms"
    lines = [
        _timings(streamed.done.get("timings_ms", {})),
        f"{heard}; total {streamed.total_ms} ms",
        _wrote(out, streamed.done.get("audio_bytes", 0)),
    ]
    return "\n".join(lines)
