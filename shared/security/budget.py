"""Daily spending budgets for the paid providers, counted in Table Storage.

`TTS_DAILY_CHARACTER_BUDGET` caps what the paid voice speaks, `LLM_DAILY_TOKEN_BUDGET`
what the remote model uses and `STT_DAILY_SECONDS_BUDGET` what the remote STT hears, per
UTC day and across every instance. A budget is checked before the provider is called and
charged after it answered, so a day can overshoot by the requests in flight when it runs
out, never by more. A warning is logged when a day's
use crosses 80%, once across every instance.

With `BUDGET_SHARE_PER_CALLER` below 1, each spender (a client address in key mode, a
signed-in caller) may use only that fraction of a day's budget, counted on a row of its
own, so one address cannot spend the day for everyone.

Every paid call charges the same day's budget, so each budget is counted over `SHARDS`
rows: a charge adds to one at random (another, if that one stays contended), a check
sums them in one query. On one row, a burst of concurrent charges outlasted the
optimistic-concurrency retries and was not counted.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.config import Settings
from shared.errors import RetryLater
from shared.lazy import load_once
from shared.storage import table_service, unavailable
from shared.storage.counters import CounterContended, Counters
from shared.telemetry import metrics

if TYPE_CHECKING:
    from azure.data.tables import TableClient

log = logging.getLogger(__name__)

TABLE = "budgets"
WARN_AT = 0.8
SHARDS = 8
TTS_CHARACTERS = "tts-characters"
LLM_TOKENS = "llm-tokens"
STT_SECONDS = "stt-seconds"


class BudgetExhausted(RetryLater):
    status = 503
    code = "budget_exhausted"


@dataclass(frozen=True)
class Share:
    """One spender's part of each daily budget: `fraction` of it, counted under the
    spender's hashed subject (a key-mode address, a signed-in caller)."""

    spender: str
    fraction: float

    def row(self, name: str) -> str:
        # "@" sorts apart from the shards ("name.N") and the flag ("name!warned").
        return f"{name}@{self.spender}"


class Budgets:
    def __init__(
        self,
        table: TableClient,
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._counters = Counters(table)
        self._clock = clock
        self._warned: dict[str, str] = {}  # budget name: the day it passed 80%
        self._read: dict[str, tuple[str, int]] = {}  # budget name: (day, use) `check` read

    def check(self, name: str, limit: int, share: Share | None = None) -> None:
        """BudgetExhausted when today's `name` has reached `limit` (0: no limit), or the
        spender of `share` has reached its part of it."""
        if limit <= 0:
            return
        from azure.core.exceptions import AzureError

        now = self._clock()
        try:
            used = self._counters.total(_day(now), f"{name}.")
            own = self._counters.total(_day(now), share.row(name)) if share else 0
        except AzureError as error:
            raise unavailable("budgets", error) from None
        self._read[name] = (_day(now), used)
        if used >= limit or (share and own >= share.fraction * limit):
            metrics.budget_spent(name)
            whose = "today's" if used >= limit else "your share of today's"
            raise BudgetExhausted(
                f"{whose} {name.replace('-', ' ')} budget is spent; retry after midnight UTC",
                _seconds_to_midnight(now),
            )

    def charge(self, name: str, limit: int, amount: int, share: Share | None = None) -> None:
        """Add what a call used to today's `name` (nothing when there is no limit), and to
        the spender's part of it."""
        if limit <= 0 or amount <= 0:
            return
        from azure.core.exceptions import AzureError

        day = _day(self._clock())
        try:
            self._add_to_some_shard(day, name, amount)
            if share:
                self._counters.add(day, share.row(name), amount)
        except (AzureError, CounterContended) as error:
            # The call is made and answered: a charge that could not be written is logged,
            # not turned into a failure of a request that already succeeded.
            log.warning("Budget %s: %s not charged (%s)", name, amount, type(error).__name__)
            return
        if self._warned.get(name) != day and self._may_pass_80_percent(day, name, limit, amount):
            try:
                self._warn_at_80_percent(day, name, limit)
            except AzureError as error:
                log.warning("Budget %s: use not read (%s)", name, type(error).__name__)

    def _add_to_some_shard(self, day: str, name: str, amount: int) -> None:
        # A shard still contended after its retries is left for another, in random order.
        *others, last = random.sample(range(SHARDS), SHARDS)
        for shard in others:
            try:
                self._counters.add(day, f"{name}.{shard}", amount)
                return
            except CounterContended:
                continue
        self._counters.add(day, f"{name}.{last}", amount)

    def _may_pass_80_percent(self, day: str, name: str, limit: int, amount: int) -> bool:
        # The use `check` read before the call, plus this charge, short of 80%: the total
        # is not read again. Other instances' charges since then are missed until the next
        # check here reads them: the warning can come one request late, never not at all.
        read_day, read = self._read.get(name, ("", 0))
        return read_day != day or read + amount >= WARN_AT * limit

    def _warn_at_80_percent(self, day: str, name: str, limit: int) -> None:
        total = self._counters.total(day, f"{name}.")
        if total < WARN_AT * limit:
            return
        self._warned[name] = day  # past 80% today: this instance stops asking
        # The flag row sorts before the shards ("!" < "."), so no total counts it.
        if self._counters.mark(day, f"{name}!warned"):
            log.warning("Budget %s: %d of %d used today (80%%)", name, total, limit)

    def sweep(self, keep_days: int = 2) -> int:
        """Delete the counts of days before the last `keep_days` (a spender's share row of
        today stays to the end of its day, even for an erased caller: erasing oneself
        must not renew one's share)."""
        from azure.core.exceptions import ResourceNotFoundError

        oldest = _day(self._clock() - dt.timedelta(days=keep_days - 1))
        try:
            rows = list(
                self._counters.table.query_entities(
                    "PartitionKey lt @oldest",
                    parameters={"oldest": oldest},
                    select=["PartitionKey", "RowKey"],
                )
            )
        except ResourceNotFoundError:
            return 0
        for row in rows:
            self._counters.table.delete_entity(row["PartitionKey"], row["RowKey"])
        return len(rows)


def _day(now: dt.datetime) -> str:
    return now.strftime("day-%Y%m%d")


def _seconds_to_midnight(now: dt.datetime) -> int:
    midnight = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((midnight - now).total_seconds()) + 1)


def share_of(spender: str | None, settings: Settings) -> Share | None:
    """The part of each budget `spender` may use, or None (no spender, no share)."""
    fraction = settings.budget_share_per_caller
    return Share(spender, fraction) if spender and fraction < 1 else None


@load_once
def budgets(settings: Settings) -> Budgets:
    return Budgets(table_service(settings).get_table_client(TABLE))
