"""Parse and validate a `/talk` request body, before any work is done.

The contract is the original backend's: multipart with an `audio` file part and optional
`text`/`prompt`, `voice`, `language`, `system_prompt` fields; the same fields as JSON; and,
new, a raw body with an `audio/*` content type.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from typing import Any

from werkzeug.formparser import FormDataParser
from werkzeug.http import parse_options_header

from shared.config import Settings
from shared.errors import AudioTooLarge, BadInput, NoInput, TextTooLong
from shared.multipart import (
    HeadersTooLarge,
    Part,
    PartsTooLarge,
    TooManyParts,
    parse_multipart,
)
from shared.storage.conversations import validate_conversation_id
from shared.stt import is_known_language
from shared.tts.elevenlabs import is_voice_id

# Extensions a stored upload may get; anything else is stored as `.bin`.
_EXTENSIONS = {
    "m4a",
    "mp4",
    "3gp",
    "amr",
    "aac",
    "ogg",
    "oga",
    "opus",
    "webm",
    "mp3",
    "flac",
    "wav",
}
_CONTENT_TYPE_EXTENSIONS = {
    "audio/mp4": "m4a",
    "audio/m4a": "m4a",
    "audio/x-m4a": "m4a",
    "audio/aac": "aac",
    "audio/3gpp": "3gp",
    "audio/amr": "amr",
    "audio/ogg": "ogg",
    "audio/opus": "opus",
    "audio/webm": "webm",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/flac": "flac",
    "audio/x-flac": "flac",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
}
_LANGUAGE = re.compile(r"^[a-z]{2,3}$")
_FIELDS = ("text", "prompt", "voice", "language", "system_prompt", "conversation_id")
MAX_FIELD_CHARS = 200  # voice, language: short names
MAX_FORM_PARTS = 16
MAX_BOUNDARY_CHARS = 200


class UnsupportedMediaType(BadInput):
    status = 415
    code = "unsupported_media_type"


@dataclass(frozen=True)
class TalkInput:
    audio: bytes | None
    audio_extension: str
    text: str | None
    voice: str | None
    language: str | None
    system_prompt: str | None
    conversation_id: str | None = None

    def fields(self) -> dict[str, str | None]:
        """Everything besides the audio, for telling two requests apart."""
        return {
            "text": self.text,
            "voice": self.voice,
            "language": self.language,
            "system_prompt": self.system_prompt,
            "conversation_id": self.conversation_id,
        }


def body_limit(settings: Settings) -> int:
    """The largest body: the largest audio, text fields up to their limit and as much
    again for the framing (what infra/main.bicep gives the host as its limit too)."""
    return settings.max_audio_bytes + 2 * settings.max_text_body_bytes


def parse_talk_input(
    content_type: str | None,
    body: bytes,
    settings: Settings,
    conversation_header: str | None = None,
) -> TalkInput:
    """The validated request, or the typed error (415, 413, 400) that says what is wrong.

    `conversation_header` is `X-Conversation-Id`, an alternative to the body's field.
    """
    mimetype, options = parse_options_header(content_type or "")
    mimetype = mimetype.lower()
    if len(body) > body_limit(settings):
        raise AudioTooLarge(
            f"request is {len(body)} bytes; the audio limit is {settings.max_audio_bytes} bytes"
        )
    is_json = mimetype == "application/json" or mimetype.endswith("+json")
    if (is_json or mimetype == "application/x-www-form-urlencoded") and len(
        body
    ) > settings.max_text_body_bytes:
        # No audio can be in these: only text, capped before anything parses it.
        raise TextTooLong(
            f"a request without audio is {len(body)} bytes; "
            f"the limit is {settings.max_text_body_bytes} bytes"
        )
    if mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        fields, audio, extension = _parse_form(mimetype, options, body, settings)
    elif is_json:
        fields, audio, extension = _parse_json(body), None, ""
    elif mimetype.startswith("audio/") or mimetype == "application/octet-stream":
        fields, audio, extension = {}, body, _CONTENT_TYPE_EXTENSIONS.get(mimetype, "bin")
    else:
        shown = mimetype or "none"
        raise UnsupportedMediaType(
            f"content type {shown} is not supported: send multipart/form-data, "
            "application/json or audio/*"
        )
    if conversation_header is not None and not fields.get("conversation_id"):
        fields["conversation_id"] = conversation_header
    return _validated(fields, audio, extension, settings)


def _parse_form(
    mimetype: str, options: dict[str, str], body: bytes, settings: Settings
) -> tuple[dict[str, Any], bytes | None, str]:
    if mimetype == "application/x-www-form-urlencoded":  # text only, capped by the caller
        _, form, _ = FormDataParser().parse(io.BytesIO(body), mimetype, len(body), options)
        return {name: form.get(name) for name in _FIELDS if name in form}, None, ""
    boundary = options.get("boundary", "")
    # RFC 2046 allows 70 characters; some hand-built bodies use more.
    if not (0 < len(boundary) <= MAX_BOUNDARY_CHARS and boundary.isascii()):
        raise BadInput("the form body is malformed")
    try:
        parts = parse_multipart(
            body,
            boundary,
            large_part="audio",
            large_limit=settings.max_audio_bytes,
            others_limit=settings.max_text_body_bytes,
            max_parts=MAX_FORM_PARTS,
        )
    except PartsTooLarge as error:
        if error.large:
            raise AudioTooLarge(
                f"audio is over the limit of {settings.max_audio_bytes} bytes"
            ) from None
        raise TextTooLong(
            f"the form's text fields are over the limit of {settings.max_text_body_bytes} bytes"
        ) from None
    except TooManyParts:
        raise BadInput(f"the form has more than {MAX_FORM_PARTS} parts") from None
    except HeadersTooLarge:
        raise BadInput("a part of the form has headers too long to be real") from None
    except ValueError:
        raise BadInput("the form body is malformed") from None
    uploads = [part for part in parts if part.name == "audio"]
    if len(uploads) > 1:
        raise BadInput("send one audio part, not several")
    fields = {part.name: part.text() for part in parts if part.name in _FIELDS}
    if not uploads:
        return fields, None, ""
    [upload] = uploads
    if not _is_file(upload):  # an `audio` text field: a common client mistake
        raise BadInput("the audio part must be a file (with a filename)")
    return fields, upload.data, _extension(upload.filename, upload.content_type)


def _is_file(part: Part) -> bool:
    """A part with a file name, or (Ktor, hand-built bodies) a type that is not text."""
    mimetype = parse_options_header(part.content_type or "")[0].lower()
    return part.filename is not None or not (mimetype == "" or mimetype.startswith("text/"))


def _parse_json(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadInput("the JSON body is not valid UTF-8") from None
    except (ValueError, RecursionError):
        raise BadInput("the JSON body is malformed") from None
    if not isinstance(document, dict):
        raise BadInput("the JSON body must be an object")
    return {name: document.get(name) for name in _FIELDS if name in document}


def _validated(
    fields: dict[str, Any], audio: bytes | None, extension: str, settings: Settings
) -> TalkInput:
    for name, value in fields.items():
        if value is not None and not isinstance(value, str):
            raise BadInput(f"{name} must be a string")
        if value is not None and not _is_text(value):
            raise BadInput(f"{name} is not valid text")
    text = fields.get("text") if fields.get("text") is not None else fields.get("prompt")
    if text is not None and len(text) > settings.max_text_chars:
        raise TextTooLong(f"text is {len(text)} characters; the limit is {settings.max_text_chars}")
    if audio is not None and len(audio) > settings.max_audio_bytes:
        raise AudioTooLarge(f"audio is over the limit of {settings.max_audio_bytes} bytes")
    if audio is not None and not audio:
        raise NoInput("the audio part is empty")
    if audio is None and not (text and text.strip()):
        raise NoInput("send audio (multipart field `audio`) or text (`text` or `prompt`)")
    language = (fields.get("language") or "").strip().lower() or None
    if language is not None and not (_LANGUAGE.match(language) and is_known_language(language)):
        raise BadInput("language must be a language code Whisper knows, such as en or fi")
    voice = (fields.get("voice") or "").strip() or None
    if voice is not None and len(voice) > MAX_FIELD_CHARS:
        raise BadInput(f"voice must be at most {MAX_FIELD_CHARS} characters")
    if (
        voice is not None
        and settings.allow_voice_ids != "on"
        and is_voice_id(voice)
        and voice.lower() not in settings.voice_map()
    ):
        # The operator's account would speak in any voice it can reach, cloned ones too.
        raise BadInput("voice must be a persona name; voice ids are not accepted")
    system_prompt = fields.get("system_prompt") or None
    if system_prompt is not None and len(system_prompt) > settings.max_text_chars:
        raise TextTooLong(
            f"system_prompt is over the limit of {settings.max_text_chars} characters"
        )
    return TalkInput(
        audio=audio,
        audio_extension=extension if audio is not None else "",
        text=text,
        voice=voice,
        language=language,
        system_prompt=system_prompt,
        conversation_id=validate_conversation_id(fields.get("conversation_id")),
    )


def _is_text(value: str) -> bool:
    """Whether a string is text UTF-8 can carry: JSON may hold lone surrogates."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _extension(filename: str | None, mimetype: str | None) -> str:
    """A safe extension from what the client said; never the client's text itself."""
    if filename and "." in filename:
        candidate = filename.rsplit(".", 1)[1].lower()
        if candidate in _EXTENSIONS:
            return candidate
    return _CONTENT_TYPE_EXTENSIONS.get((mimetype or "").lower(), "bin")
