"""Daily spending budgets for the paid providers, counted in Table Storage.

`TTS_DAILY_CHARACTER_BUDGET` caps what the paid voice speaks and `LLM_DAILY_TOKEN_BUDGET`
what the remote model uses, per UTC day and across every instance. A budget is checked
before the provider is called and charged after it answered, so a day can overshoot by
the requests in flight when it runs out, never by more. A warning is logged when a day's
use crosses 80%.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
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
TTS_CHARACTERS = "tts-characters"
LLM_TOKENS = "llm-tokens"


class BudgetExhausted(RetryLater):
    status = 503
    code = "budget_exhausted"


class Budgets:
    def __init__(
        self,
        table: TableClient,
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._counters = Counters(table)
        self._clock = clock

    def check(self, name: str, limit: int) -> None:
        """BudgetExhausted when today's `name` has reached `limit` (0: no limit)."""
        if limit <= 0:
            return
        from azure.core.exceptions import AzureError

        now = self._clock()
        try:
            used = self._counters.value(_day(now), name)
        except AzureError as error:
            raise unavailable("budgets", error) from None
        if used >= limit:
            metrics.budget_spent(name)
            retry_after = _seconds_to_midnight(now)
            raise BudgetExhausted(
                f"today's {name.replace('-', ' ')} budget is spent; retry after midnight UTC",
                retry_after,
            )

    def charge(self, name: str, limit: int, amount: int) -> None:
        """Add what a call used to today's `name` (nothing when there is no limit)."""
        if limit <= 0 or amount <= 0:
            return
        from azure.core.exceptions import AzureError

        try:
            total = self._counters.add(_day(self._clock()), name, amount)
        except (AzureError, CounterContended) as error:
            # The call is made and answered: a charge that could not be written is logged,
            # not turned into a failure of a request that already succeeded.
            log.warning("Budget %s: %s not charged (%s)", name, amount, type(error).__name__)
            return
        if total - amount < WARN_AT * limit <= total:
            log.warning("Budget %s: %d of %d used today (80%%)", name, total, limit)


def _day(now: dt.datetime) -> str:
    return now.strftime("day-%Y%m%d")


def _seconds_to_midnight(now: dt.datetime) -> int:
    midnight = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((midnight - now).total_seconds()) + 1)


@load_once
def budgets(settings: Settings) -> Budgets:
    return Budgets(table_service(settings).get_table_client(TABLE))
