"""Models load once per process, on first use, behind a lock.

`load_once` is `functools.cache` for expensive loaders: concurrent first calls with the
same arguments wait for a single load instead of each loading the model, while loads
for different arguments (different models) may run in parallel.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Hashable
from typing import Generic, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class OnceLoader(Generic[P, T]):
    def __init__(self, loader: Callable[P, T]) -> None:
        functools.update_wrapper(self, loader)
        self._loader = loader
        self._values: dict[Hashable, T] = {}
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()
        self.load_count = 0

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T:
        key = (args, tuple(sorted(kwargs.items())))
        try:
            return self._values[key]
        except KeyError:
            pass
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._values:
                self._values[key] = self._loader(*args, **kwargs)
                self.load_count += 1
            return self._values[key]

    @property
    def loaded(self) -> bool:
        return bool(self._values)

    def clear(self) -> None:
        with self._guard:
            self._values.clear()
            self._locks.clear()
            self.load_count = 0


def load_once(loader: Callable[P, T]) -> OnceLoader[P, T]:
    return OnceLoader(loader)
