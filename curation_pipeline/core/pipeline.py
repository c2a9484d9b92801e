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


def ordered_parallel_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int, window: int, chunk: int = 1
                         ) -> Iterator[tuple[T, R]]:
    """Yield (item, fn(item)) in input order, computing up to `window` items ahead on `workers`
    threads. Items go to the threads `chunk` at a time: one task per image costs more in
    scheduling and GIL hand-offs than decoding a small JPEG, so chunks of 8-16 roughly double
    throughput. `fn` should turn per-item failures into values; an exception it raises propagates."""
    if workers < 1 or window < 1 or chunk < 1:
        raise ValueError(f"workers, window and chunk must be >= 1, got {workers}, {window} and {chunk}")

    def run_chunk(part: list[T]) -> list[R]:
        return [fn(x) for x in part]

    source = batched(items, chunk)
    pending: deque[tuple[list[T], Future]] = deque()
    max_chunks = max(1, window // chunk)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="loader") as pool:
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
