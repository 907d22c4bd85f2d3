"""Ordered parallel map with a bounded window, robust to a worker that dies.

Results come back in task order whatever the number of workers, so the shards written from
them are byte-identical for --workers 1, 2, ... Workers are *spawned* (not forked): the parent
may hold torch/OpenMP threads, and a fork of such a process can deadlock.

If a worker process dies (a decoder segfault on a malformed file), the pool breaks and every
pending task fails with it; those tasks are re-run one at a time in a fresh single-worker pool,
the one that kills its process again gets `on_crash(task)` as its result, and the run goes on.
"""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable, Iterator


def _one_by_one(fn: Callable, tasks: list, on_crash: Callable[[Any], Any], ctx) -> Iterator[Any]:
    """Run `tasks` one at a time in a single-worker pool, replacing it after each crash."""
    one = ProcessPoolExecutor(1, mp_context=ctx)
    try:
        for task in tasks:
            try:
                yield one.submit(fn, task).result()
            except BrokenProcessPool:
                one.shutdown(wait=True)
                one = ProcessPoolExecutor(1, mp_context=ctx)
                yield on_crash(task)
    finally:
        one.shutdown(wait=True, cancel_futures=True)


def ordered_map(
    fn: Callable[[Any], Any],
    tasks: Iterable[Any],
    workers: int,
    on_crash: Callable[[Any], Any],
) -> Iterator[Any]:
    """Yield fn(task) for each task, in order. workers <= 1 runs in this process."""
    if workers <= 1:
        for task in tasks:
            yield fn(task)
        return
    ctx = mp.get_context("spawn")
    todo = iter(tasks)
    window = workers * 4
    pending: deque = deque()
    ex = ProcessPoolExecutor(workers, mp_context=ctx)
    try:
        while True:
            while len(pending) < window:
                task = next(todo, _END)
                if task is _END:
                    break
                pending.append((task, ex.submit(fn, task)))
            if not pending:
                return
            task, fut = pending.popleft()
            try:
                result = fut.result()
            except BrokenProcessPool:
                ex.shutdown(wait=True, cancel_futures=True)
                retry = [task] + [t for t, _ in pending]
                pending.clear()
                yield from _one_by_one(fn, retry, on_crash, ctx)
                ex = ProcessPoolExecutor(workers, mp_context=ctx)
                continue
            yield result
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


_END = object()
