"""Progress of long steps, for whoever shows it: steps call `report`, front ends `subscribe`.

The CLI subscribes a terminal progress bar; Dagster runs see the steps' own per-batch log lines.
No Dagster, no I/O here: a tiny in-process publish/subscribe."""

from __future__ import annotations

import sys
import time
from typing import Callable

Listener = Callable[[str, int, "int | None"], None]  # (task, done, total or None)
_listeners: list[Listener] = []


def subscribe(listener: Listener) -> Callable[[], None]:
    """Add a listener; returns a function that removes it."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener) if listener in _listeners else None


def report(task: str, done: int, total: int | None = None) -> None:
    for listener in list(_listeners):
        try:
            listener(task, done, total)
        except Exception:  # a broken display must never break the work
            pass


class TerminalBar:
    """`[########------------]  40%  embed demo-0001  120/300` redrawn in place on a TTY; on a pipe,
    one plain line per task every 10% (or every `every_s` seconds without a total)."""

    def __init__(self, stream=None, width: int = 28, every_s: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.every_s = every_s
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last: dict[str, tuple[float, int]] = {}

    def __call__(self, task: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        last_t, last_step = self._last.get(task, (0.0, -1))
        if total:
            frac = min(1.0, done / total)
            step = int(frac * 10)
            filled = int(frac * self.width)
            line = f"[{'#' * filled}{'-' * (self.width - filled)}] {frac:4.0%}  {task}  {done}/{total}"
            if self.tty:
                self.stream.write("\r" + line + ("\n" if done >= total else ""))
            elif step != last_step or done >= total:
                self.stream.write(line + "\n")
            self._last[task] = (now, step)
        else:
            if self.tty:
                self.stream.write(f"\r{task}  {done}")
            elif now - last_t >= self.every_s:
                self.stream.write(f"{task}  {done}\n")
                self._last[task] = (now, last_step)
        self.stream.flush()


LOG_PREFIX = "progress: "
"""Log lines `progress: TASK DONE/TOTAL` (TOTAL `?` when unknown) carry progress through a run's
event log, to a front end in another process (the CLI streams a launched run's log)."""


class LogLines:
    """A listener that writes progress as `progress: ...` lines through `log` (a logging-like
    `info`), at most one per task every 10% or every `every_s` seconds, and the last one."""

    def __init__(self, log, every_s: float = 5.0) -> None:
        self.log = log
        self.every_s = every_s
        self._last: dict[str, tuple[float, int]] = {}

    def __call__(self, task: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        last_t, last_step = self._last.get(task, (0.0, -1))
        step = int(min(1.0, done / total) * 10) if total else last_step
        if (total and (step != last_step or done >= total)) or (not total and now - last_t >= self.every_s):
            self.log.info(f"{LOG_PREFIX}{task} {done}/{total if total else '?'}")
            self._last[task] = (now, step)


def parse_log_line(message: str) -> tuple[str, int, int | None] | None:
    """(task, done, total) of a LogLines line; None for any other message."""
    if not message.startswith(LOG_PREFIX):
        return None
    task, _, counts = message[len(LOG_PREFIX) :].rpartition(" ")
    done, _, total = counts.partition("/")
    try:
        return task, int(done), (None if total == "?" else int(total))
    except ValueError:
        return None
