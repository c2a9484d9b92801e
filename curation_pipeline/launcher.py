"""Runs the CLI starts, launched the way the Dagster UI launches them: through the instance, against
the code location `dagster dev -m curation_pipeline.definitions` serves, so every CLI run has a
code-location origin (the UI can re-execute it, and shows it in the timeline) and runs in a run
worker, not in the CLI.

When a Dagster daemon is running on the instance (`make ui`), the run goes through the run queue
(the daemon launches it, within `max_concurrent_runs`); without one (the CLI alone, CI, the demo)
the CLI launches it itself through the instance's run launcher. Either way the CLI waits for it and
streams its log from the event log. `curation --in-process` executes in the CLI's own process
instead, for debugging (a debugger, a profiler, print statements)."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from curation_pipeline import runs

CODE_LOCATION_MODULE = "curation_pipeline.definitions"
"""The module `make ui` serves; its code location's name is this module name (Dagster's default
for `dagster dev -m`, and for workspace.yaml's python_module without a location_name), so a run
created here is one the UI's code location can re-execute."""
POLL_SECONDS = 0.3
CHECK_SECONDS = 2.0
"""How often a waiting CLI checks that the run's worker is still alive."""
DAEMON_FRESH_SECONDS = 60.0


@dataclass
class Outcome:
    """What a finished run left: its id, final status and events (for metadata and failure lines)."""

    run_id: str
    success: bool
    events: list = field(default_factory=list)
    interrupted: bool = False
    queued: bool = False
    waiting_for: str | None = None
    """What the run was waiting for when it ended (a pool slot and its holders), if it was."""


@contextmanager
def code_location(instance) -> Iterator[object]:
    """The project's code location, served by a code server this process starts (as `dagster job
    launch` does) and stops on exit; yields the WorkspaceProcessContext. One context serves any
    number of runs (the demo's seven share one)."""
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import ModuleTarget
    from dagster.version import __version__

    target = ModuleTarget(CODE_LOCATION_MODULE, None, None, None)
    with WorkspaceProcessContext(
        instance, version=__version__, read_only=False, workspace_load_target=target, code_server_log_level="WARNING"
    ) as context:
        workspace = context.create_request_context()
        error = workspace.get_code_location_error(CODE_LOCATION_MODULE)
        if error is not None:
            raise SystemExit(f"curation: the code location {CODE_LOCATION_MODULE} failed to load: {runs.error_text(error)}")
        yield context


def daemon_is_running(instance) -> bool:
    """A daemon whose run queue worker sent a heartbeat lately (`make ui`, `dagster-daemon run`)."""
    try:
        from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

        beats = instance.get_daemon_heartbeats()
        beat = beats.get(QueuedRunCoordinatorDaemon.daemon_type())
    except Exception:  # an instance without daemon storage: nobody dequeues
        return False
    return beat is not None and time.time() - beat.timestamp < DAEMON_FRESH_SECONDS


def create_run(context, instance, job_name: str, run_config: Mapping, tags: Mapping[str, str]):
    """A run of `job_name` with the code location's origin, ready to submit or launch."""
    from dagster._cli.job import _create_run

    workspace = context.create_request_context()
    location = workspace.get_code_location(CODE_LOCATION_MODULE)
    repository = next(iter(location.get_repositories().values()))
    if not repository.has_job(job_name):
        raise SystemExit(f"curation: the code location {CODE_LOCATION_MODULE} has no job {job_name!r}")
    remote_job = repository.get_full_job(job_name)
    return _create_run(
        instance=instance,
        code_location=location,
        remote_repo=repository,
        remote_job=remote_job,
        run_config=dict(run_config),
        tags=dict(tags),
        op_selection=None,
        run_id=None,
    )


def start(context, instance, run) -> bool:
    """Submit `run` to the queue when a daemon will dequeue it, else launch it now. Returns True
    when it was queued."""
    workspace = context.create_request_context()
    if daemon_is_running(instance):
        instance.submit_run(run.run_id, workspace)
        return True
    # launched from this host by this process: tag it so a later CLI call can tell whether its
    # run worker is still alive (runs.reap_dead_runs)
    instance.add_run_tags(run.run_id, {runs.HOST_TAG: socket.gethostname()})
    instance.launch_run(run.run_id, workspace)
    return False


class _Terminated(Exception):
    pass


@contextmanager
def _sigterm_as_exception() -> Iterator[None]:
    def handler(signum, frame):
        raise _Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait(
    instance,
    run_id: str,
    on_event: Callable[[object], None],
    *,
    queued: bool = False,
    say: Callable[[str], None] = lambda _msg: None,
) -> Outcome:
    """Wait until the run ends, handing each new event log entry to `on_event`. Ctrl-C or SIGTERM
    cancels the run (from the queue, or through the run launcher) and waits for it to stop. A run
    whose worker died is marked failed (runs.reap_dead_runs, which reports through `say`)."""
    from dagster import DagsterEventType, DagsterRunStatus

    cursor = None
    events: list = []
    interrupted = False
    deadline = None
    waiting_for = None
    last_check = time.time()

    def drain() -> None:
        nonlocal cursor, waiting_for
        while True:
            connection = instance.get_records_for_run(run_id, cursor=cursor, limit=500)
            for record in connection.records:
                entry = record.event_log_entry
                event = entry.dagster_event
                if event is not None:
                    events.append(event)
                    # the executor's "curation: STEP of run R waits for a 'gpu' slot held by ...; Ctrl-C ..."
                    if event.event_type == DagsterEventType.ENGINE_EVENT and " waits for " in (event.message or ""):
                        waiting_for = event.message.split(" waits for ", 1)[1].split("; Ctrl-C", 1)[0]
                    elif event.event_type == DagsterEventType.STEP_START:
                        waiting_for = None
                on_event(entry)
            cursor = connection.cursor
            if not connection.has_more:
                return

    with _sigterm_as_exception():
        while True:
            try:
                drain()
                run = instance.get_run_by_id(run_id)
                if run is None or run.is_finished:
                    drain()
                    break
                if deadline is not None and time.time() > deadline:
                    break
                if time.time() - last_check > CHECK_SECONDS:
                    # a run worker killed outright (OOM, kill -9) never ends its run: notice it here
                    last_check = time.time()
                    if runs.run_process_is_alive(instance, run) is False:
                        runs.reap_dead_runs(instance, say)
                time.sleep(POLL_SECONDS)
            except (KeyboardInterrupt, _Terminated):
                if interrupted:  # a second Ctrl-C: stop waiting, the run ends on its own
                    break
                interrupted = True
                instance.run_coordinator.cancel_run(run_id)
                deadline = time.time() + 60.0
    finished = instance.get_run_by_id(run_id)
    success = finished is not None and finished.status == DagsterRunStatus.SUCCESS
    return Outcome(
        run_id=run_id,
        success=success,
        events=events,
        interrupted=interrupted,
        queued=queued,
        waiting_for=waiting_for if interrupted else None,
    )
