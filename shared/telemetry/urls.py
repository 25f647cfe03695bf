"""Storage addresses in spans name the container or table, never what is in it.

The Azure SDK's and `requests`' spans record each call's URL. For Blob and Table Storage
that is a blob's path (`<owner>/<conversation>/<request id>/...`) or an entity's keys and
a query's filter: who asked what, in Application Insights' dependencies for as long as it
keeps them. This processor cuts such a URL to the account and the container or table
before any exporter sees the span.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from opentelemetry.sdk.trace import SpanProcessor

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

URL_ATTRIBUTES = ("url.full", "http.url", "http.target", "url.path", "url.query")
# Storage endpoints in every Azure cloud and DNS zone (`acct.blob.core.windows.net`,
# `acct.z12.blob.storage.azure.net`, `...core.usgovcloudapi.net`, Azurite's
# `devstoreaccount1.blob.localhost`) name the service in the host.
_SERVICES = {"blob", "table", "queue", "dfs", "file"}
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def storage_resource(url: str) -> str | None:
    """A storage URL cut to its container or table (no path below it, no query); None
    for any other URL."""
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    host = parts.hostname or ""
    if _SERVICES & set(host.split(".")[1:]):
        keep = 1
    elif host in _LOOPBACK and len(segments) >= 2:  # Azurite: the account is in the path
        keep = 2
    else:
        return None
    # A table's entity address is `table(PartitionKey='...',RowKey='...')`.
    kept = [segment.split("(", 1)[0] for segment in segments[:keep]]
    return urlunsplit((parts.scheme, parts.netloc, "/" + "/".join(kept), "", ""))


class StorageUrlRedactor(SpanProcessor):
    """Cuts storage URLs in finished spans; placed before the exporting processor, which
    is handed the same span object."""

    def on_end(self, span: ReadableSpan) -> None:
        attributes = dict(span.attributes or {})
        full = attributes.get("url.full", attributes.get("http.url"))
        cut = storage_resource(full) if isinstance(full, str) else None
        if cut is None:
            return
        path = urlsplit(cut).path
        cuts = {"url.full": cut, "http.url": cut, "http.target": path, "url.path": path}
        for name in URL_ATTRIBUTES:
            if name in attributes:
                attributes[name] = cuts.get(name, "")
        # Finished spans are read-only through the API; the exporter reads this one.
        span._attributes = attributes
