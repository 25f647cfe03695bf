"""One pooled HTTP session per provider, with timeouts and bounded, polite retries.

Connection reuse saves a TLS handshake per request, which a voice round trip feels.
Retries cover what a retry can fix (429, 5xx, timeouts, dropped connections), honour
`Retry-After`, and give up at once on other 4xx, on a `Retry-After` longer than the
caller can wait, and when the overall deadline would pass. A streamed answer is retried
the same way until a success's headers arrive, and never once its body is coming.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from shared.config import Settings
from shared.errors import ProviderError
from shared.security.secrets import redact
from shared.telemetry import metrics

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
POOL_SIZE = 16
# A 429 for too many requests in flight clears as soon as one of them ends: retried soon,
# with jitter, rather than backed off (waiting longer does not help).
CONCURRENCY_RETRY_S = 0.25


@dataclass(frozen=True)
class RetryPolicy:
    retries: int
    backoff_s: float
    max_retry_after_s: float
    connect_timeout_s: float
    read_timeout_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            retries=settings.http_retries,
            backoff_s=settings.http_backoff_seconds,
            max_retry_after_s=settings.http_max_retry_after_seconds,
            connect_timeout_s=settings.http_connect_timeout_seconds,
            read_timeout_s=settings.http_timeout_seconds,
        )

    @property
    def deadline_s(self) -> float:
        """The longest one call may take, retries and waits included."""
        per_try = self.connect_timeout_s + self.read_timeout_s
        waits = sum(min(self.backoff_s * 2**n, self.max_retry_after_s) for n in range(self.retries))
        return per_try * (self.retries + 1) + max(waits, self.max_retry_after_s)


class ProviderHttp:
    """POST JSON to one provider; auth headers are fetched per call so rotation applies."""

    def __init__(
        self,
        provider: str,
        base_url: str,
        auth_headers: Callable[[], Mapping[str, str]],
        policy: RetryPolicy,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self._auth_headers = auth_headers
        self._policy = policy
        self._sleep = sleep
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=POOL_SIZE, max_retries=0)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)

    def __repr__(self) -> str:
        return f"ProviderHttp({self.provider!r}, {self.base_url!r})"

    def post_json(
        self, path: str, body: Mapping[str, Any], *, params: Mapping[str, str] | None = None
    ) -> requests.Response:
        """The provider's answer to `body`, read whole; retried as the module says."""
        return self._post(path, body, params, {}, stream=False)

    def post_stream(
        self,
        path: str,
        body: Mapping[str, Any],
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """The provider's answer to `body`, returned as soon as a success's headers arrive,
        its body left to read as it is made (`iter_lines`, `iter_content`).

        Retried as `post_json` is until then, never after: the caller has what came. The
        read timeout applies to each wait for more of the body, however long it all takes.
        Reading it can raise `requests` errors; the caller closes it (`with response:`),
        which drops the connection and so stops the provider making the rest.
        """
        # A compressed stream is held back until a block fills: pieces come as they are.
        asked = {"Accept-Encoding": "identity", **(headers or {})}
        return self._post(path, body, params, asked, stream=True)

    def _post(
        self,
        path: str,
        body: Mapping[str, Any],
        params: Mapping[str, str] | None,
        headers: Mapping[str, str],
        *,
        stream: bool,
    ) -> requests.Response:
        policy = self._policy
        deadline = time.monotonic() + policy.deadline_s
        url = f"{self.base_url}/{path.lstrip('/')}"
        for attempt in range(policy.retries + 1):
            last = attempt == policy.retries
            try:
                response = self._session.post(
                    url,
                    json=body,
                    params=params,
                    headers={**headers, **self._auth_headers()},
                    timeout=(policy.connect_timeout_s, policy.read_timeout_s),
                    stream=stream,
                )
                if response.status_code >= 400:
                    _ = response.content  # a failure's reason, read whole (a stream's too)
            except requests.Timeout:
                failure = ProviderError(self.provider, "timed out", status=503)
                delay = policy.backoff_s * 2**attempt
            except requests.ConnectionError:
                failure = ProviderError(self.provider, "connection failed", status=503)
                delay = policy.backoff_s * 2**attempt
            except requests.RequestException as error:
                # Anything else (an invalid header, URL or body) will not change on a retry,
                # and its message may quote a header, and so a key: only its kind is kept.
                log.warning(
                    "%s: the request could not be sent (%s)", self.provider, type(error).__name__
                )
                raise ProviderError(self.provider, "the request could not be sent") from None
            else:
                if response.status_code < 400:
                    return response
                failure = _status_error(self.provider, response)
                if response.status_code not in RETRYABLE_STATUS:
                    raise failure
                retry_after = _retry_after_seconds(response)
                if response.status_code == 429:
                    reason = _throttle_reason(response)
                    metrics.throttled(self.provider, reason)
                    if reason == "too_many_concurrent_requests" and retry_after is None:
                        retry_after = CONCURRENCY_RETRY_S * random.uniform(0.5, 1.5)
                if retry_after is not None and retry_after > policy.max_retry_after_s:
                    raise ProviderError(
                        self.provider,
                        f"{failure.reason}; asked to retry after {retry_after:g} s",
                        status=503,
                    )
                delay = policy.backoff_s * 2**attempt if retry_after is None else retry_after
            if last or time.monotonic() + delay >= deadline:
                raise failure
            log.warning(
                "%s: %s, retry %d/%d in %.2fs",
                self.provider,
                failure.reason,
                attempt + 1,
                policy.retries,
                delay,
            )
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


def _status_error(provider: str, response: requests.Response) -> ProviderError:
    status = response.status_code
    reason = f"HTTP {status}"
    detail = redact(_short_detail(response))
    if detail:
        reason += f" ({detail})"
    # Rate limits and outages are the provider's temporary state: 503 tells clients to retry.
    return ProviderError(
        provider, reason, status=503 if status in (429, 503) else 502, upstream=status
    )


def _throttle_reason(response: requests.Response) -> str:
    """Why a 429: ElevenLabs says `detail.status` (`too_many_concurrent_requests`,
    `system_busy`); anything else is a rate limit."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return "rate_limited"
    status = detail.get("status") if isinstance(detail, dict) else None
    if status in ("too_many_concurrent_requests", "system_busy"):
        return status
    return "rate_limited"


def _short_detail(response: requests.Response) -> str:
    """A short, human reason from an error body, never the body itself."""
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError):
        return ""
    for path in (("error", "message"), ("detail", "message"), ("detail", "status"), ("error",)):
        value: Any = body
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str) and value:
            return value[:120]
    return ""


def _retry_after_seconds(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
