"""Counters in Table Storage that every instance adds to: the rate limits and the daily
budgets hold however far the app scales out.

One entity per counter, changed under optimistic concurrency (its ETag), so two instances
adding at once cannot lose an addition. A counter that every request adds to (a daily
budget) is split over rows that share a prefix (`add` to any one, `total` sums them), so
writers rarely meet on one entity. Storage failures are the caller's to word (`AzureError`
passes through).
"""

from __future__ import annotations

import contextlib
import random
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from azure.data.tables import TableClient

ATTEMPTS = 10  # optimistic-concurrency rounds under contention
BACKOFF_S = 0.02  # up to this much, at random, between rounds


class CounterFull(Exception):
    """The counter had reached the bound it was to stay below."""

    def __init__(self, count: int) -> None:
        super().__init__(f"counter at {count}")


class CounterContended(Exception):
    """Other instances kept changing the counter: nothing was added."""


class Counters:
    def __init__(self, table: TableClient) -> None:
        self.table = table

    def total(self, partition: str, prefix: str) -> int:
        """The sum of the counters in `partition` whose row starts with `prefix`."""
        from azure.core.exceptions import ResourceNotFoundError

        # Row keys are ordered: the prefix's rows are those from it up to its last
        # character's successor.
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        try:
            rows = self.table.query_entities(
                "PartitionKey eq @partition and RowKey ge @start and RowKey lt @end",
                parameters={"partition": partition, "start": prefix, "end": end},
                select=["count"],
            )
            return sum(int(row.get("count", 0)) for row in rows)
        except ResourceNotFoundError:  # no table yet
            return 0

    def agreed(self, partition: str, row: str, proposal: str) -> str:
        """A value every instance agrees on: the first one written, `proposal` if none was."""
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        try:
            return str(self.table.get_entity(partition, row)["value"])
        except ResourceNotFoundError:
            pass
        try:
            self._create({"PartitionKey": partition, "RowKey": row, "value": proposal})
        except ResourceExistsError:  # another instance wrote first
            return str(self.table.get_entity(partition, row)["value"])
        return proposal

    def mark(self, partition: str, row: str) -> bool:
        """Set a flag once across every instance: True for the one call that set it."""
        from azure.core.exceptions import ResourceExistsError

        try:
            self._create({"PartitionKey": partition, "RowKey": row})
        except ResourceExistsError:
            return False
        return True

    def add(self, partition: str, row: str, amount: int, *, below: int | None = None) -> int:
        """Add `amount`; with `below`, only while the count is under it (`CounterFull`
        otherwise). The new count."""
        from azure.core import MatchConditions
        from azure.core.exceptions import (
            ResourceExistsError,
            ResourceModifiedError,
            ResourceNotFoundError,
        )
        from azure.data.tables import UpdateMode

        for _ in range(ATTEMPTS):
            try:
                entity = self.table.get_entity(partition, row)
            except ResourceNotFoundError:
                if below is not None and below <= 0:
                    raise CounterFull(0) from None
                try:
                    self._create({"PartitionKey": partition, "RowKey": row, "count": amount})
                    return amount
                except ResourceExistsError:
                    continue  # another instance counted first: read it again
            count = int(entity.get("count", 0))
            if below is not None and count >= below:
                raise CounterFull(count)
            entity["count"] = count + amount
            try:
                self.table.update_entity(
                    entity,
                    mode=UpdateMode.REPLACE,
                    etag=entity.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
                return count + amount
            except (ResourceModifiedError, ResourceNotFoundError):
                time.sleep(random.uniform(0, BACKOFF_S))
        raise CounterContended(partition)

    def _create(self, entity: dict[str, object]) -> None:
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        try:
            self.table.create_entity(entity)
        except ResourceNotFoundError:
            # The table is missing (first use). Every caller that finds it so creates it:
            # remembering "created" per client let a thread that had seen it missing just
            # before another created it give up, and lose its addition.
            with contextlib.suppress(ResourceExistsError):
                self.table.create_table()
            self.table.create_entity(entity)
