"""How the clients in use frame a `multipart/form-data` upload of one `audio` part (and
text fields), byte for byte, each written from that client's own source.

Each client's `frame` returns `(the request's Content-Type, the body)`. All share one skeleton,
`--B CRLF headers CRLF CRLF data CRLF` per part and `--B-- CRLF` at the end, and differ in
the boundary, the part headers and how parameters are escaped. The sources, read at:
- OkHttp 4.12.0 (the Android app): square/okhttp `okhttp/src/main/kotlin/okhttp3/
  MultipartBody.kt` (writeOrCountBytes 121-166: a `Content-Length` in every part;
  createFormData 207-227; Builder's UUID boundary 231), `RequestBody.kt` 160-170.
- requests 2.34.2 / urllib3 2.7.0: `requests/models.py` _encode_files 184-252 (fields
  before files), `urllib3/filepost.py` 22-87, `urllib3/fields.py` 79-114 and 291-308.
- curl 8.21.0: `lib/mime.c` 1212-1215 (24 dashes, 22 random letters and digits),
  1722-1806 (Content-Disposition, then Content-Type), 216-221 (percent escapes).
- Chromium: blink `core/html/forms/form_data.cc` EncodeMultiPartFormData and
  `platform/network/form_data_encoder.cc` (----WebKitFormBoundary + 16 characters).
- Firefox: `dom/html/HTMLFormSubmission.cpp` FSMultipartFormData (----geckoformboundary).
- Ktor 3.5.2: `ktor-client-core/.../request/forms/FormDataContent.kt` 49-161 (a
  `Content-Length` in every part, 32 random ints in hex cut to 70 as the boundary) and
  `formDsl.kt` 44-57; 3.4 and older leave `name=audio` unquoted.
- Alamofire 5.12.0 (iOS): `Source/Features/MultipartFormData.swift` 57-98 and 373-522
  (no escaping, no Content-Length); and URLSession bodies built by hand as sample code
  does (`Boundary-<UUID>`).
"""

from __future__ import annotations

import os
import random
import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass

_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_TOKEN_UNSAFE = set('()<>@,;:\\"/[]?={} \t\n\r')


def percent_quoted(value: str) -> str:
    """WHATWG's escaping, which OkHttp, urllib3, curl and browsers follow."""
    return '"' + value.translate({10: "%0A", 13: "%0D", 34: "%22"}) + '"'


def raw_quoted(value: str) -> str:
    """Alamofire and hand-built bodies: quoted, not escaped."""
    return f'"{value}"'


def backslash_quoted(value: str) -> str:
    """Ktor 3.5: always quoted, backslash escapes."""
    escapes = {92: "\\\\", 10: "\\n", 13: "\\r", 9: "\\t", 34: '\\"'}
    return '"' + value.translate(escapes) + '"'


def token_or_quoted(value: str) -> str:
    """Ktor 3.4 and older: a bare token where it is one (`name=audio`)."""
    unsafe = not value or any(c in _TOKEN_UNSAFE for c in value)
    return backslash_quoted(value) if unsafe else value


def crlf(value: str) -> str:
    """Browsers send every line break in a value as CRLF."""
    return re.sub(r"\r\n|\r|\n", "\r\n", value)


@dataclass(frozen=True)
class Client:
    boundary: Callable[[], str]
    quote: Callable[[str], str] = percent_quoted
    value: Callable[[str], str] = str
    part_lengths: bool = False  # a Content-Length header in every part

    def frame(
        self,
        audio: bytes,
        filename: str,
        content_type: str,
        fields: dict[str, str] | None = None,
        *,
        fields_first: bool = True,
    ) -> tuple[str, bytes]:
        boundary = self.boundary()
        texts = [
            self._part(f"name={self.quote(name)}", self.value(text).encode(), None)
            for name, text in (fields or {}).items()
        ]
        disposition = f"name={self.quote('audio')}; filename={self.quote(filename)}"
        upload = self._part(disposition, audio, content_type)
        parts = [*texts, upload] if fields_first else [upload, *texts]
        body = b"".join(f"--{boundary}\r\n".encode() + part + b"\r\n" for part in parts)
        return f"multipart/form-data; boundary={boundary}", body + f"--{boundary}--\r\n".encode()

    def _part(self, disposition: str, data: bytes, content_type: str | None) -> bytes:
        headers = [f"Content-Disposition: form-data; {disposition}"]
        if content_type:
            headers.append(f"Content-Type: {content_type}")
        if self.part_lengths:
            headers.append(f"Content-Length: {len(data)}")
        return "".join(f"{header}\r\n" for header in headers).encode() + b"\r\n" + data


def _kotlin_random_hex() -> str:
    """Ktor: 32 `Random.nextInt().toString(16)` (negative ones keep their '-'), cut to 70."""
    return "".join(format(random.randint(-(2**31), 2**31 - 1), "x") for _ in range(32))[:70]


CLIENTS = {
    # OkHttp 4.12, the Android app; 5.x no longer writes a part's Content-Length.
    "okhttp": Client(lambda: str(uuid.uuid4()), part_lengths=True),
    "okhttp5": Client(lambda: str(uuid.uuid4())),
    # requests over urllib3 (always the text fields first).
    "requests": Client(lambda: os.urandom(16).hex()),
    # curl 8.4 and later: -F voice=Kim -F "audio=@file;type=audio/mp4".
    "curl": Client(lambda: "-" * 24 + "".join(secrets.choice(_ALNUM) for _ in range(22))),
    "chrome": Client(
        lambda: "----WebKitFormBoundary" + "".join(secrets.choice(_ALNUM) for _ in range(16)),
        value=crlf,
    ),
    "firefox": Client(
        lambda: "----geckoformboundary" + "".join(format(secrets.randbits(64), "x") for _ in "ab"),
        value=crlf,
    ),
    "ktor": Client(_kotlin_random_hex, quote=backslash_quoted, part_lengths=True),
    "ktor-3.4": Client(_kotlin_random_hex, quote=token_or_quoted, part_lengths=True),
    "alamofire": Client(
        lambda: f"alamofire.boundary.{secrets.randbits(32):08x}{secrets.randbits(32):08x}",
        quote=raw_quoted,
    ),
    "urlsession": Client(lambda: f"Boundary-{str(uuid.uuid4()).upper()}", quote=raw_quoted),
}
okhttp = CLIENTS["okhttp"].frame  # the Android app's
