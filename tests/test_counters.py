"""Counters in Table Storage: the first additions, which also create the table, are all
counted, however many threads and instances make them at once."""

from __future__ import annotations

import threading
import uuid

from shared.config import Settings
from shared.storage import table_service
from shared.storage.counters import Counters


def test_the_first_additions_to_a_new_table_are_all_counted(azurite) -> None:
    service = table_service(Settings(storage_connection=azurite))
    for _ in range(5):  # the race is at table creation: start from no table, again and again
        table = f"counters{uuid.uuid4().hex[:12]}"
        instances = [Counters(service.get_table_client(table)) for _ in range(2)]

        def add(counters: Counters, row: str) -> None:
            for _ in range(3):
                counters.add("day", row, 1)

        workers = [
            threading.Thread(target=add, args=(instances[i % 2], f"row.{i}")) for i in range(16)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert instances[0].total("day", "row.") == 48
        assert instances[1].mark("day", "row!flag") and not instances[0].mark("day", "row!flag")
        assert instances[0].total("day", "row.") == 48  # a flag is not a count
