"""`multipart/form-data` bodies, limited by what each part holds, never by how it is read.

Werkzeug's form parser checks its read buffer, which can hold file data as well as
fields, against the form-memory limit while it reads 64 KiB at a time, so whether an
upload passed depended on where its bytes happened to put a line break. Here the
decoder (Werkzeug's sans-IO one, without that limit) is fed the body and the limits are
counted per part: the one large part by its own limit, every other part together by the
limit for text.
"""

from __future__ import annotations

from dataclasses import dataclass

from werkzeug.datastructures import Headers
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import (
    Data,
    Epilogue,
    Field,
    File,
    MultipartDecoder,
    NeedData,
    State,
)

# Fed in slices so the decoder's buffer stays small whatever the body's size, and a
# part's headers are refused once they outgrow any real client's (a few hundred bytes)
# before they are parsed.
_SLICE_BYTES = 64 * 1024
MAX_HEADER_BYTES = 16 * 1024


class TooManyParts(ValueError):
    pass


class HeadersTooLarge(ValueError):
    pass


class PartsTooLarge(ValueError):
    """Parts over their limit: `large` names the large part, otherwise the other parts."""

    def __init__(self, large: bool) -> None:
        super().__init__("large part" if large else "other parts")
        self.large = large


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None
    headers: Headers
    data: bytes

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    def text(self) -> str:
        """The part as text, in the charset it names (a small safe list), else UTF-8."""
        named = parse_options_header(self.content_type or "")[1].get("charset", "").lower()
        charset = named if named in {"ascii", "us-ascii", "utf-8", "iso-8859-1"} else "utf-8"
        return self.data.decode(charset, "replace")


def parse_multipart(
    body: bytes,
    boundary: str,
    *,
    large_part: str,
    large_limit: int,
    others_limit: int,
    max_parts: int,
) -> list[Part]:
    """The parts of `body`, in order. Parts named `large_part` may each hold up to
    `large_limit` bytes; all other parts together up to `others_limit`. Raises ValueError
    for a malformed body, and PartsTooLarge, TooManyParts or HeadersTooLarge (a kind of
    ValueError too) past a limit, before reading on."""
    decoder = MultipartDecoder(boundary.encode("ascii"), max_parts=max_parts)
    parts: list[Part] = []
    current: Field | File | None = None
    chunks: list[bytes] = []
    size = others = 0
    slices = [body[i : i + _SLICE_BYTES] for i in range(0, len(body), _SLICE_BYTES)]
    try:
        for piece in [*slices, None]:
            decoder.receive_data(piece)
            # With the last (None) piece, a form that is not complete raises ValueError.
            while not isinstance(event := decoder.next_event(), NeedData):
                if isinstance(event, Epilogue):
                    return parts
                if isinstance(event, Field | File):
                    current, chunks, size = event, [], 0
                elif isinstance(event, Data) and current is not None:
                    large = current.name == large_part
                    size += len(event.data)
                    others += 0 if large else len(event.data)
                    if (large and size > large_limit) or others > others_limit:
                        raise PartsTooLarge(large)
                    chunks.append(event.data)
                    if not event.more_data:
                        filename = current.filename if isinstance(current, File) else None
                        data = b"".join(chunks)
                        parts.append(Part(current.name, filename, current.headers, data))
                        current = None
            # Headers, or what comes before the first boundary, searched again with every
            # slice: bounded, since no real client sends more than a few hundred bytes.
            waiting = decoder.state in (State.PREAMBLE, State.PART)
            if waiting and len(decoder.buffer) > MAX_HEADER_BYTES:
                raise HeadersTooLarge(f"a part's headers are over {MAX_HEADER_BYTES} bytes")
    except RequestEntityTooLarge:  # the decoder is given only the limit on parts
        raise TooManyParts(f"more than {max_parts} parts") from None
    raise ValueError("the form has no end")
