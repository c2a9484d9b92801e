"""An ordered, bounded, parallel map: the loader half of an input pipeline.

Threads by default: Pillow's decoders and resamplers and numpy release the GIL for the heavy work,
and threads start instantly. Processes (`executor="processes"`) win when per-image Python overhead
is a large share of the work (small reduced-scale decodes feeding a fast model); they are started
with the forkserver (or spawn) method, never fork, so a CUDA context in the parent is never
inherited. At most `window` items are in flight, so memory is bounded by the window."""

from __future__ import annotations

import functools
import multiprocessing
from collections import deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def _run_chunk(fn: Callable[[T], R], part: list[T]) -> list[R]:
    return [fn(x) for x in part]


def make_executor(kind: str, workers: int) -> Executor:
    if kind == "threads":
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="loader")
    if kind == "processes":
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        return ProcessPoolExecutor(max_workers=workers, mp_context=context)
    raise ValueError(f"executor must be 'threads' or 'processes', got {kind!r}")


def ordered_parallel_map(
    fn: Callable[[T], R], items: Iterable[T], *, workers: int, window: int, chunk: int = 1, executor: str = "threads"
) -> Iterator[tuple[T, R]]:
    """Yield (item, fn(item)) in input order, computing up to `window` items ahead on `workers`
    threads. Items go to the threads `chunk` at a time: one task per image costs more in
    scheduling and GIL hand-offs than decoding a small JPEG, so chunks of 8-16 roughly double
    throughput. `fn` should turn per-item failures into values; an exception it raises propagates."""
    if workers < 1 or window < 1 or chunk < 1:
        raise ValueError(f"workers, window and chunk must be >= 1, got {workers}, {window} and {chunk}")

    run_chunk = functools.partial(_run_chunk, fn)  # picklable when fn is, for process pools
    source = batched(items, chunk)
    pending: deque[tuple[Any, Future]] = deque()  # (chunk of items, its future)
    max_chunks = max(1, window // chunk)
    with make_executor(executor, workers) as pool:
        try:
            for part in source:
                pending.append((part, pool.submit(run_chunk, part)))
                if len(pending) >= max_chunks:
                    break
            while pending:
                part, future = pending.popleft()
                results = future.result()
                nxt = next(source, _END)
                if nxt is not _END:
                    pending.append((nxt, pool.submit(run_chunk, nxt)))
                yield from zip(part, results)
        finally:
            for _, future in pending:
                future.cancel()


def batched(pairs: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for pair in pairs:
        batch.append(pair)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


_END = object()
