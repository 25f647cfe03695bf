"""A trace as an indented tree of spans with their timings (`python -m talk --trace`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

SHOWN = ("talk.provider", "talk.cache_hit", "talk.error_code", "http.response.status_code")


def span_tree(spans: Sequence[ReadableSpan]) -> str:
    by_id = {span.context.span_id: span for span in spans if span.context}
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in spans:
        parent = span.parent.span_id if span.parent else None
        children.setdefault(parent if parent in by_id else None, []).append(span)
    lines: list[str] = []

    def add(span: ReadableSpan, depth: int) -> None:
        milliseconds = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
        attributes = span.attributes or {}
        notes = [f"{key.split('.')[-1]}={attributes[key]}" for key in SHOWN if key in attributes]
        url = attributes.get("url.full") or attributes.get("http.url")
        if url:
            notes.append(str(url).split("?", 1)[0])
        label = f"{'  ' * depth}{span.name}"
        lines.append(f"{label:<44} {milliseconds:>9.1f} ms  {' '.join(notes)}".rstrip())
        for child in sorted(children.get(span.context.span_id, []), key=_start):
            add(child, depth + 1)

    for root in sorted(children.get(None, []), key=_start):
        add(root, 0)
    return "\n".join(lines)


def _start(span: ReadableSpan) -> int:
    return span.start_time or 0
