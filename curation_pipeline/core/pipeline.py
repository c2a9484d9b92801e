"""An ordered, bounded, thread-parallel map: the loader half of an input pipeline.

Threads, not processes: Pillow's decoders and resamplers and numpy release the GIL for the heavy
work, torch's forward does too, and threads never fork a process that may hold a CUDA context.
At most `window` items are in flight, so memory is bounded by the window, not the input size."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_parallel_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int, window: int
                         ) -> Iterator[tuple[T, R]]:
    """Yield (item, fn(item)) in input order, computing up to `window` items ahead on `workers`
    threads. `fn` should turn per-item failures into values; an exception it raises propagates."""
    if workers < 1 or window < 1:
        raise ValueError(f"workers and window must be >= 1, got {workers} and {window}")
    source = iter(items)
    pending: deque[tuple[T, Future]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="loader") as pool:
        try:
            for item in source:
                pending.append((item, pool.submit(fn, item)))
                if len(pending) >= window:
                    break
            while pending:
                item, future = pending.popleft()
                result = future.result()
                nxt = next(source, _END)
                if nxt is not _END:
                    pending.append((nxt, pool.submit(fn, nxt)))
                yield item, result
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
