"""Runs the CLI starts: who runs them, how to tell that one has died, and why one failed.

A run the CLI launches is tagged with the launching host, pid and process start time; once its
run worker starts, the pid of its RUN_START event names the process executing it (the worker, or
the CLI itself with --in-process). A later CLI call can then tell a run whose process is gone
(SIGKILL, the OOM killer, a closed laptop) from one that is still working, even when the pid has
been reused by another process, and free the pool slot it held."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

HOST_TAG = "curation/host"
PID_TAG = "curation/pid"
PID_START_TAG = "curation/pid_start"
"""Start time of the process in clock ticks since boot (/proc/<pid>/stat field 22): with the pid,
it names one process for the life of the machine."""


def process_start_time(pid: int) -> str | None:
    """The process's start time as /proc reports it; None when it is gone (or a zombie), "" when
    this system has no /proc (then only the pid can be checked)."""
    stat = Path(f"/proc/{pid}/stat")
    if not Path("/proc/self/stat").exists():
        return ""
    try:
        text = stat.read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    fields = text.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # exited, not yet reaped by its parent
        return None
    return fields[19]  # field 22 overall; fields[0] is field 3


def process_tags() -> dict[str, str]:
    """Run tags naming this process."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), PID_START_TAG: process_start_time(os.getpid()) or ""}


def process_is_alive(tags: Mapping[str, str]) -> bool | None:
    """Whether the process named by `tags` still runs: None when that cannot be told from here
    (no tags, another host), so that a caller never reaps a run it cannot see."""
    host, pid, started = tags.get(HOST_TAG), tags.get(PID_TAG), tags.get(PID_START_TAG)
    if not host or not pid or host != socket.gethostname():
        return None
    try:
        pid_number = int(pid)
    except ValueError:
        return None
    now = process_start_time(pid_number)
    if now is None:
        return False
    if now == "":  # no /proc: signal 0 tells whether the pid exists, not whether it was reused
        try:
            os.kill(pid_number, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return not started or now == started


def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def pid_alive_since(pid: int, since: float) -> bool | None:
    """Whether process `pid` runs and started no later than `since` (epoch seconds: a process that
    started after it is another one that reused the pid). None when this system cannot tell."""
    started = process_start_time(pid)
    if started is None:
        return False
    boot = _boot_time()
    if started == "" or boot is None:
        return None
    return boot + int(started) / os.sysconf("SC_CLK_TCK") <= since + 2.0


def run_process_is_alive(instance, run) -> bool | None:
    """Whether the process executing `run` still runs: its run worker (the pid of its RUN_START
    event: the launched worker, or the CLI for an in-process run), else, before it started, the CLI
    that launched it (its tags). None when that cannot be told from this host."""
    from dagster import DagsterEventType

    if run.tags.get(HOST_TAG) != socket.gethostname():
        return None
    records = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.RUN_START, limit=1).records
    entry = records[0].event_log_entry if records else None
    pid = entry.dagster_event.pid if entry is not None and entry.dagster_event is not None else None
    if pid:
        alive = pid_alive_since(pid, entry.timestamp)
        if alive is not None:
            return alive
    return process_is_alive(run.tags)


# ---- dead runs -----------------------------------------------------------------------------------
def _active_statuses():
    from dagster import DagsterRunStatus

    return [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]


def _describe_process(tags: Mapping[str, str]) -> str:
    if not tags.get(PID_TAG):
        return "not started by the curation CLI: see it in the Dagster UI"
    where = "" if tags.get(HOST_TAG) == socket.gethostname() else f" on host {tags.get(HOST_TAG)}"
    return f"pid {tags[PID_TAG]}{where}"


def describe_run(run) -> str:
    """`ingest_drop for 'd1', pid 123`: what a person needs to find the run and its process."""
    if run is None:
        return "a run this instance does not know"
    partition = run.tags.get("dagster/partition")
    return f"{run.job_name}{f' for {partition!r}' if partition else ''}, {_describe_process(run.tags)}"


def _pools_held_by(instance, run_id: str) -> list[str]:
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    return sorted(
        key
        for key in storage.get_concurrency_keys()
        if any(slot.run_id == run_id for slot in storage.get_concurrency_info(key).claimed_slots)
    )


def reap_dead_runs(instance, say=None) -> list[str]:
    """Mark failed every unfinished run this host's CLI started whose process is gone, and free the
    pool slots (and queued claims) it held; then free slots still held by finished runs. Returns
    the run ids whose slots were freed.

    Dagster cannot do this for us: run monitoring's daemon only frees slots of runs that already
    ended (`free_slots_after_run_end_seconds`), and a run executed in the CLI's own process was
    never launched, so no launcher can check its worker. A SIGKILLed CLI run therefore stays
    STARTED, holding the only `gpu` slot, forever. Runs of other hosts or not started by the CLI
    are left alone: we cannot see their processes."""
    from dagster import RunsFilter

    say = say or (lambda _msg: None)
    storage = instance.event_log_storage
    freed: list[str] = []
    for run in instance.get_runs(filters=RunsFilter(statuses=_active_statuses(), tags={HOST_TAG: socket.gethostname()})):
        if run_process_is_alive(instance, run) is not False:
            continue
        current = instance.get_run_by_id(run.run_id)
        if current is None or current.status not in _active_statuses():
            continue  # another CLI call reaped it meanwhile
        pools = _pools_held_by(instance, run.run_id)
        instance.report_run_failed(
            current,
            message=(
                f"The process that executed this run ({_describe_process(run.tags)}) is gone (killed, or out of "
                f"memory) while the run was {current.status.value}; marked failed by the curation CLI "
                f"(pid {os.getpid()})."
            ),
        )
        if storage.supports_global_concurrency_limits:
            storage.free_concurrency_slots_for_run(run.run_id)
        freed.append(run.run_id)
        held = f" and freed its {', '.join(repr(p) for p in pools)} slot" if pools else ""
        say(
            f"curation: run {run.run_id} ({describe_run(run)}) was left {current.status.value} by a process "
            f"that is gone; marked it failed{held}"
        )
    freed.extend(_free_slots_of_finished_runs(instance, say))
    return freed


def _free_slots_of_finished_runs(instance, say) -> list[str]:
    """What run monitoring's daemon does (the CLI runs no daemon): a finished run gives back its
    slots `free_slots_after_run_end_seconds` after it ended, or at once when it was a CLI run
    whose process is gone (an in-process run has no step left running anywhere)."""
    from dagster import RunsFilter
    from dagster._core.storage.dagster_run import FINISHED_STATUSES

    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    run_ids = storage.get_concurrency_run_ids()
    if not run_ids:
        return []
    grace = instance.run_monitoring_settings.get("free_slots_after_run_end_seconds")
    freed = []
    for record in instance.get_run_records(filters=RunsFilter(run_ids=list(run_ids), statuses=FINISHED_STATUSES)):
        run = record.dagster_run
        ended_long_ago = bool(grace) and record.end_time is not None and record.end_time + grace < time.time()
        if ended_long_ago or run_process_is_alive(instance, run) is False:
            pools = _pools_held_by(instance, run.run_id)
            storage.free_concurrency_slots_for_run(run.run_id)
            if pools:
                freed.append(run.run_id)
                say(
                    f"curation: freed the {', '.join(repr(p) for p in pools)} slot still held by run {run.run_id} "
                    f"({describe_run(run)}), which ended {run.status.value}"
                )
    return freed


# ---- waiting for a pool slot ---------------------------------------------------------------------
POLL_SECONDS = 0.5
"""How often a run waiting for a pool slot wakes: to notice Ctrl-C / SIGTERM, and to let dagster
re-try its claim when its own back-off says so."""
CHECK_SECONDS = 2.0
"""How often a waiting run looks for dead holders and re-describes who holds the slot."""
REMIND_SECONDS = 60.0


class PoolWait:
    """What a run executing in this process waits for, if anything; filled in while it waits."""

    def __init__(self, instance, say) -> None:
        self.instance = instance
        self.say = say
        self.pools: dict[str, list[str]] = {}  # pool -> run ids holding its slots, at the last check
        self.steps: list[str] = []
        self.interrupted = False
        self.since: float | None = None
        self._last_check = 0.0
        self._last_said = 0.0
        self._said: tuple | None = None

    def holders_text(self) -> str:
        parts = []
        for pool, holders in self.pools.items():
            runs = "; ".join(f"run {rid} ({describe_run(self.instance.get_run_by_id(rid))})" for rid in holders)
            parts.append(f"a {pool!r} slot held by {runs or 'nobody (about to be claimed)'}")
        return ", ".join(parts) or "a pool slot"

    def on_wait(self, context, run) -> bool:
        """Called by the executor each time it would sleep while a step waits for a slot. Raises
        DagsterExecutionInterruptedError on a captured Ctrl-C / SIGTERM; returns True when dead
        holders were reaped (so the claim should be retried at once)."""
        from dagster import DagsterRunStatus
        from dagster._core.errors import DagsterExecutionInterruptedError
        from dagster._utils.interrupts import pop_captured_interrupt

        now = time.time()
        if self.since is None:
            self.since = now
        # once interrupted, every later wait of the run ends at once too: the interrupt flag is
        # consumed by the first, and a run of several pool steps (image_embeddings, then
        # object_embeddings) must not sit in the next wait after it was told to stop
        if self.interrupted or pop_captured_interrupt():
            if not self.interrupted:
                self.interrupted = True
                current = self.instance.get_run_by_id(run.run_id)
                if current is not None and current.status in _active_statuses():
                    # CANCELING makes dagster end the run CANCELED, not "failed unexpectedly"
                    self.instance.report_run_canceling(
                        current, message=(f"Interrupted (Ctrl-C or SIGTERM) while waiting for {self.holders_text()}.")
                    )
            raise DagsterExecutionInterruptedError(f"interrupted while waiting for {self.holders_text()}")
        if now - self._last_check < CHECK_SECONDS:
            return False
        self._last_check = now
        current = self.instance.get_run_by_id(run.run_id)
        if current is not None and current.status in (DagsterRunStatus.CANCELING, DagsterRunStatus.CANCELED):
            # asked to stop (the UI's Terminate, a CLI's Ctrl-C) without a signal reaching this process
            self.interrupted = True
            raise DagsterExecutionInterruptedError(f"run {run.run_id} was canceled while waiting for {self.holders_text()}")
        reaped = bool(reap_dead_runs(self.instance, self.say))
        self.steps = sorted(context.pending_claim_steps())
        storage = self.instance.event_log_storage
        pools = {}
        for key in sorted(storage.get_concurrency_keys()):
            info = storage.get_concurrency_info(key)
            if any(p.run_id == run.run_id and p.assigned_timestamp is None for p in info.pending_steps):
                pools[key] = sorted({slot.run_id for slot in info.claimed_slots})
        self.pools = pools
        said = (tuple(self.steps), tuple((k, tuple(v)) for k, v in pools.items()))
        if pools and (said != self._said or now - self._last_said >= REMIND_SECONDS):
            waited = f" (waiting {now - self.since:.0f}s)" if said == self._said else ""
            self.say(
                f"curation: {', '.join(self.steps) or 'a step'} of run {run.run_id} waits for "
                f"{self.holders_text()}{waited}; Ctrl-C or SIGTERM stops waiting"
            )
            self._said, self._last_said = said, now
        return reaped


@contextmanager
def watching_pool_waits(instance, say):
    """While a run executes in this process (execute_in_process), make its wait for a pool slot
    say what it waits for, reap dead holders, cost no CPU, and end on Ctrl-C / SIGTERM.

    Dagster 1.13's in-process executor waits for a slot in a loop that never sleeps
    (`interval_to_next_pending_claim_check` returns min(0, ...) <= 0), so it spins a core, and it
    runs inside `capture_interrupts`, which turns SIGINT and SIGTERM into a flag that only step
    code checks: a waiting run could not be stopped. We hand the executor a concurrency context
    whose wait interval sleeps, checks that flag, and reports. The executor looks the class up in
    its module at run time, so replacing it there for the duration of our run is enough."""
    state = PoolWait(instance, say)
    try:
        from dagster._core.executor import in_process

        base = in_process.InstanceConcurrencyContext
    except (ImportError, AttributeError):  # another dagster: its own wait, dead runs still reaped up front
        yield state
        return

    class ReportingConcurrencyContext(base):
        def __init__(self, instance, dagster_run, *args, **kwargs):
            super().__init__(instance, dagster_run, *args, **kwargs)
            self._curation_run = dagster_run

        def interval_to_next_pending_claim_check(self) -> float:
            if state.on_wait(self, self._curation_run):
                # a dead holder's slot was just freed: let the next claim() ask the database now
                # instead of after dagster's back-off (up to 15 s)
                timeouts = getattr(self, "_pending_timeouts", None)
                if isinstance(timeouts, dict):
                    timeouts.clear()
                return 0.0
            return POLL_SECONDS

    in_process.InstanceConcurrencyContext = ReportingConcurrencyContext
    try:
        yield state
    finally:
        in_process.InstanceConcurrencyContext = base


# ---- why a run failed ----------------------------------------------------------------------------
_KEEP_CLASS = {
    "KeyError",
    "IndexError",
    "AttributeError",
    "TypeError",
    "NameError",
    "AssertionError",
    "ZeroDivisionError",
    "NotImplementedError",
    "RecursionError",
    "UnboundLocalError",
}
"""Errors whose class is the information (a bug, not a message written for a person)."""


def _innermost(error):
    """Through Dagster's wrappers (cause, else implicit context) to the first error raised by our
    own code or a library. Not further: an error raised `from` another was written for a person
    and names the object (`cannot read query image 'q.jpg': not a regular file`), while its
    cause usually does not."""
    for _ in range(50):
        if not (error.cls_name or "").startswith("Dagster"):
            break
        inner = error.cause if error.cause is not None else error.context
        if inner is None:
            break
        error = inner
    return error


def error_text(error) -> str:
    """One line: the innermost error's message, without its class name unless that is the point."""
    inner = _innermost(error)
    name = inner.cls_name or ""
    if name in ("DagsterExecutionInterruptedError", "KeyboardInterrupt"):
        return "interrupted (Ctrl-C or SIGTERM)"
    message = " ".join((inner.message or "").split())
    head, sep, rest = message.partition(": ")
    if sep and name and (head == name or head.endswith("." + name)):
        message = rest
    elif message in (name, f"{name}:") or (name and message.endswith("." + name)):
        message = ""
    if not message:
        return name or "failed"
    if name in _KEEP_CLASS:
        return f"{name}: {message}"
    return message


def _check_text(evaluation) -> str:
    meta = ", ".join(f"{k} {getattr(v, 'value', v)}" for k, v in evaluation.metadata.items())
    detail = "; ".join(x for x in (evaluation.description, meta) if x)
    return f"check {evaluation.check_name} failed{f': {detail}' if detail else ''}"


def failure_line(run_id: str, events, job_name: str, partition_key: str) -> str:
    """The CLI's last line for a failed run: per failed step the innermost cause, or for a blocking
    asset check the failed checks with their metadata; e.g.
    `curation: run X of ingest_drop for 'd1' failed at raw_image_manifest: drop location '/x' is not a folder`."""
    from dagster import AssetCheckSeverity, DagsterEventType

    failed_checks: dict[str | None, list] = {}
    for ev in events:
        if ev.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = ev.asset_check_evaluation_data
            if not evaluation.passed and evaluation.severity == AssetCheckSeverity.ERROR:
                failed_checks.setdefault(ev.step_key, []).append(evaluation)
    parts = []
    for ev in events:
        if not ev.is_step_failure:
            continue
        error = ev.step_failure_data.error
        checks = failed_checks.get(ev.step_key)
        if error is not None and _innermost(error).cls_name == "DagsterAssetCheckFailedError" and checks:
            text = "; ".join(_check_text(c) for c in checks)
        else:
            text = error_text(error) if error is not None else "failed"
        parts.append(f"at {ev.step_key}: {text}")
    if parts:
        detail = " " + "; ".join(parts)
    else:
        causes = []
        for ev in events:
            if not ev.is_run_failure:
                continue
            error = ev.job_failure_data.error if ev.job_failure_data is not None else None
            # a run failed from outside (its worker found dead) carries a message, not an error
            causes.append(error_text(error) if error is not None else " ".join((ev.message or "").split()))
        detail = ": " + ("; ".join(causes) or "see the run in the Dagster UI")
    return f"curation: run {run_id} of {job_name} for {partition_key!r} failed{detail}"
