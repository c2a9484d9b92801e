"""Progress of a step, in its run's log: `progress: embed d1 40/120` lines (core.progress.LogLines),
which the UI shows in the run's log and the CLI turns back into its progress bar."""

from collections.abc import Iterator
from contextlib import contextmanager

from curation_pipeline.core.progress import LogLines, subscribe


@contextmanager
def progress_in_log(log) -> Iterator[None]:
    unsubscribe = subscribe(LogLines(log))
    try:
        yield
    finally:
        unsubscribe()
