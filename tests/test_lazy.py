from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from shared.lazy import load_once


def test_concurrent_first_calls_share_one_load() -> None:
    calls: list[str] = []

    @load_once
    def load(name: str) -> object:
        calls.append(name)
        time.sleep(0.05)
        return object()

    with ThreadPoolExecutor(8) as pool:
        values = list(pool.map(lambda _: load("a"), range(16)))
    assert calls == ["a"]
    assert len({id(v) for v in values}) == 1
    assert load.load_count == 1


def test_different_keys_load_in_parallel() -> None:
    inside = threading.Barrier(2, timeout=5)

    @load_once
    def load(name: str) -> str:
        inside.wait()  # both loads must be in flight at once to pass this
        return name

    with ThreadPoolExecutor(2) as pool:
        assert sorted(pool.map(load, ["a", "b"])) == ["a", "b"]
    assert load.load_count == 2


def test_a_failed_load_is_retried_next_time() -> None:
    attempts = []

    @load_once
    def load() -> int:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("disk hiccup")
        return 42

    with pytest.raises(RuntimeError):
        load()
    assert load() == 42
    assert load.load_count == 1
