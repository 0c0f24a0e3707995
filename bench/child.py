"""Run one measurement in a fresh child process, for an RSS figure of its own.

The benchmark's parent process also produced the events and ran the bare
consumer; running our side in a spawned child keeps those out of its peak RSS,
and gives it its own embedded chDB (chDB opens one data folder per process).
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable, Coroutine
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from bench.rss import peak_rss_mb_self

T = TypeVar("T")


def _run(work: Callable[..., Coroutine[Any, Any, T]], args: tuple[Any, ...]) -> tuple[T, float]:
    result = asyncio.run(work(*args))
    return result, peak_rss_mb_self()


async def in_child(work: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> tuple[T, float]:
    """``await work(*args)`` in a spawned process; its result and the child's peak RSS (MB).

    ``work`` must be a module-level coroutine function and ``args`` picklable.
    """
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return await asyncio.get_running_loop().run_in_executor(pool, _run, work, args)
