import threading
import time

import pytest

from curation_pipeline.core.pipeline import batched, ordered_parallel_map


def test_results_come_back_in_input_order():
    def slow_for_small(x):
        time.sleep(0.002 * (10 - x % 10))
        return x * x

    out = list(ordered_parallel_map(slow_for_small, range(50), workers=4, window=8))
    assert [i for i, _ in out] == list(range(50)) and all(r == i * i for i, r in out)


def test_at_most_window_items_in_flight():
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}

    def work(x):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.001)
        with lock:
            state["now"] -= 1
        return x

    consumed = 0
    for _ in ordered_parallel_map(work, range(200), workers=8, window=5):
        consumed += 1
        time.sleep(0.0005)
    assert consumed == 200 and state["peak"] <= 5


def test_exceptions_propagate():
    def boom(x):
        if x == 3:
            raise RuntimeError("bad item 3")
        return x

    with pytest.raises(RuntimeError, match="bad item 3"):
        list(ordered_parallel_map(boom, range(10), workers=2, window=4))


def test_batched_keeps_the_remainder():
    assert [len(b) for b in batched(range(10), 4)] == [4, 4, 2]
