"""Per-caller and per-address request limits, counted in Table Storage.

Every instance of the app counts in the same table, so a limit holds however far the app
scales out. Each limit is a fixed window (a minute, a day): one entity per window and
subject, incremented under optimistic concurrency (the entity's ETag), so two instances
counting at once cannot lose an increment. A counter still contended after a few jittered
retries refuses the request (429) rather than letting it through uncounted: a burst aimed
at one counter cannot slip past it. Subjects are stored as an HMAC under a salt of this
deployment's own (made once, kept in the table), so an address cannot be found from its
row by trying every address. Old windows are deleted by the daily clean-up (`sweep`), an
erased caller's at once (`forget_caller`).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.config import Settings
from shared.errors import RetryLater
from shared.lazy import load_once
from shared.security.identity import Caller
from shared.storage import table_service, unavailable
from shared.storage.counters import CounterContended, CounterFull, Counters

if TYPE_CHECKING:
    from azure.data.tables import TableClient

log = logging.getLogger(__name__)

TABLE = "ratelimits"


class RateLimited(RetryLater):
    status = 429
    code = "rate_limited"


@dataclass(frozen=True)
class Limit:
    name: str  # shown to the client: "per minute"
    window_s: int
    allowed: int


class RateLimiter:
    def __init__(
        self, table: TableClient, *, salt: bytes = b"", clock: Callable[[], float] = time.time
    ) -> None:
        self._counters = Counters(table)
        self._salt = salt
        self._clock = clock

    def admit(self, subject: str, limits: list[Limit]) -> None:
        """Count one request of `subject` against each limit; RateLimited when one is spent."""
        for limit in limits:
            if limit.allowed > 0:
                self._count(subject, limit)

    def _count(self, subject: str, limit: Limit) -> None:
        from azure.core.exceptions import AzureError

        now = self._clock()
        window = int(now // limit.window_s)
        # A partition per subject: its windows are one query away (`forget`), and no one
        # partition holds every caller of the current minute.
        partition, row = hashed(subject, self._salt), _window_key(limit.window_s, window)
        try:
            self._counters.add(partition, row, 1, below=limit.allowed)
        except CounterFull:
            retry_after = max(1, int((window + 1) * limit.window_s - now) + 1)
            raise RateLimited(
                f"too many requests ({limit.allowed} {limit.name}); retry in {retry_after} s",
                retry_after,
            ) from None
        except CounterContended:
            log.warning("Rate limit counter %s stayed contended: refusing", partition)
            raise RateLimited("too many requests at once; retry in 1 s", 1) from None
        except AzureError as error:
            raise unavailable("rate limits", error) from None

    def sweep(self, older_than_s: float) -> int:
        """Delete the counters of windows that ended `older_than_s` ago; how many."""
        from azure.core.exceptions import ResourceNotFoundError

        cutoff = self._clock() - older_than_s
        try:
            entities = list(self._counters.table.list_entities(select=["PartitionKey", "RowKey"]))
        except ResourceNotFoundError:
            return 0
        return self._delete([e for e in entities if _ended_before(e, cutoff)])

    def forget(self, subjects: list[str]) -> int:
        """Delete the counters of these subjects (an erased caller's) whose windows have
        ended. Those still open stay until the clean-up deletes them: erasing oneself must
        not be a way around one's own limits."""
        from azure.core.exceptions import ResourceNotFoundError

        now = self._clock()
        doomed = []
        for subject in subjects:
            try:
                rows = self._counters.table.query_entities(
                    "PartitionKey eq @subject",
                    parameters={"subject": hashed(subject, self._salt)},
                    select=["PartitionKey", "RowKey"],
                )
                doomed += [row for row in rows if _ended_before(row, now)]
            except ResourceNotFoundError:  # no table yet
                return 0
        return self._delete(doomed)

    def _delete(self, entities: list[dict[str, str]]) -> int:
        for entity in entities:
            self._counters.table.delete_entity(entity["PartitionKey"], entity["RowKey"])
        return len(entities)


def _window_key(window_s: int, window: int) -> str:
    return f"{window_s}-{window:012d}"


def _ended_before(entity: dict[str, str], cutoff: float) -> bool:
    """Whether a counter's window ended before `cutoff`. Counters from before the salt keep
    the window in the partition, and go the same way; the salt's row never does."""
    for key in (entity["RowKey"], entity["PartitionKey"]):
        window_s, _, window = key.partition("-")
        if window_s.isdigit() and window.isdigit():
            return (int(window) + 1) * int(window_s) < cutoff
    return False


def hashed(subject: str, salt: bytes) -> str:
    """How a subject is stored: keyed by this deployment's own salt, so an address cannot
    be found from its row by hashing every address there is."""
    return hmac.new(salt, subject.encode(), hashlib.sha256).hexdigest()[:32]


@load_once
def subject_salt(settings: Settings) -> bytes:
    """This deployment's salt, made by whichever instance needs it first."""
    from azure.core.exceptions import AzureError

    table = table_service(settings).get_table_client(TABLE)
    try:
        agreed = Counters(table).agreed("config", "subject-salt", secrets.token_hex(32))
    except AzureError as error:
        raise unavailable("rate limits", error) from None
    return bytes.fromhex(agreed)


def spender(caller: Caller, settings: Settings) -> str:
    """The caller as its share of the daily budgets counts it, hashed: a signed-in caller,
    or in key mode the client address (as its rate limit counts it)."""
    subject = (
        f"caller:{caller.owner}" if caller.authenticated else address_subject(caller.address or "")
    )
    return hashed(subject, subject_salt(settings))


def forget_caller(owner: str, settings: Settings) -> int:
    """Delete an erased caller's rate-limit counters."""
    subjects = [f"caller:{owner}", f"read-caller:{owner}"]
    return rate_limiter(settings).forget(subjects)


def address_subject(address: str) -> str:
    """What one client address counts as: an IPv6 address by its /64 (one customer's
    network can hold 2^64 of them), an IPv4 address written as IPv6 (`::ffff:a.b.c.d`)
    as that IPv4 address, not as the one /64 all of IPv4 would share."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return f"address:{address}"
    if parsed.version == 6 and parsed.ipv4_mapped:
        parsed = parsed.ipv4_mapped
    if parsed.version == 6:
        return f"address:{ipaddress.ip_network(f'{parsed}/64', strict=False)}"
    return f"address:{parsed}"


class Access(enum.Enum):
    """What a route does: writes (a turn, an erasure) cost far more than reads (a reply or
    a conversation fetched, a status polled), and are counted apart."""

    WRITE = "write"
    READ = "read"


def limits_for(
    caller: Caller, settings: Settings, access: Access = Access.WRITE
) -> list[tuple[str, list[Limit]]]:
    """(subject, limits) pairs that apply to a caller's request: the client address's
    ceiling in either mode, and a signed-in caller's own allowance."""
    reads = access is Access.READ
    prefix = "read-" if reads else ""
    pairs = []
    if caller.address:
        per_address = (
            [
                Limit(
                    "reads per minute from one address",
                    60,
                    settings.rate_limit_reads_per_address_per_minute,
                )
            ]
            if reads
            else [
                Limit(
                    "per minute from one address", 60, settings.rate_limit_per_address_per_minute
                ),
                Limit("per day from one address", 86_400, settings.rate_limit_per_address_per_day),
            ]
        )
        pairs.append((prefix + address_subject(caller.address), per_address))
    elif settings.rate_limit_per_address_per_minute:
        _warn_no_address()
    if caller.authenticated:
        own = (
            [Limit("reads per minute", 60, settings.rate_limit_reads_per_minute)]
            if reads
            else [
                Limit("per minute", 60, settings.rate_limit_per_minute),
                Limit("per day", 86_400, settings.rate_limit_per_day),
            ]
        )
        pairs.append((f"{prefix}caller:{caller.owner}", own))
    return pairs


@functools.cache
def _warn_no_address() -> None:
    # Azure's front end always sends X-Forwarded-For; without it no address can be
    # limited, and one shared bucket would throttle every caller at once.
    log.warning("No X-Forwarded-For on a request: the per-address rate limit cannot apply")


def admit(caller: Caller, settings: Settings, access: Access = Access.WRITE) -> None:
    """Count a request against the caller's limits for its kind (RateLimited when spent)."""
    pairs = limits_for(caller, settings, access)
    if not any(limit.allowed for _, limits in pairs for limit in limits):
        return
    limiter = rate_limiter(settings)
    for subject, limits in pairs:
        limiter.admit(subject, limits)


@load_once
def rate_limiter(settings: Settings) -> RateLimiter:
    table = table_service(settings).get_table_client(TABLE)
    return RateLimiter(table, salt=subject_salt(settings))
