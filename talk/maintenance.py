"""The daily clean-up: what the app keeps, it keeps only as long as the README says.

- Durable histories (each request's input, transcript and reply) are purged once their
  answer can no longer be collected: after `AUDIO_RETENTION_DAYS`, when the storage
  lifecycle rule deletes the request's audio and reply too.
- Conversations `CONVERSATION_TTL_HOURS` past their last turn are deleted, read or not.
- Rate-limit counters of windows that ended more than a day ago are deleted.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import azure.durable_functions as df
import azure.functions as func

from shared.config import get_settings
from shared.security.budget import budgets
from shared.security.ratelimit import rate_limiter
from shared.storage.conversations import conversation_store

bp = df.Blueprint()
log = logging.getLogger("talk")

SCHEDULE = "0 30 3 * * *"  # 03:30 UTC daily
_EPOCH = datetime(2020, 1, 1, tzinfo=UTC)


@bp.timer_trigger(schedule=SCHEDULE, arg_name="timer", run_on_startup=False)
@bp.durable_client_input(client_name="client")
async def daily_cleanup(timer: func.TimerRequest, client: df.DurableOrchestrationClient) -> None:
    settings = get_settings()
    cutoff = datetime.now(UTC) - timedelta(days=settings.audio_retention_days)
    # Whatever their status: a request cannot still be running days later (functionTimeout
    # is minutes), so one that says so is stuck and its history is kept no longer either.
    purged = await client.purge_instance_history_by(
        created_time_from=_EPOCH, created_time_to=cutoff
    )
    conversations = await asyncio.to_thread(conversation_store(settings).sweep)
    counters = await asyncio.to_thread(rate_limiter(settings).sweep, 86_400)
    spent = await asyncio.to_thread(budgets(settings).sweep)
    log.info(
        "Daily clean-up: %d request histories, %d expired conversations, "
        "%d rate-limit counters, %d budget counts deleted",
        purged.instances_deleted,
        conversations,
        counters,
        spent,
    )
