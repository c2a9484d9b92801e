"""Runs that die or wait on the `gpu` pool, driven through the real `curation` CLI on a persistent
instance: a SIGKILLed run must not keep the only slot, and a run waiting on a live holder says who
holds it and stops on SIGTERM / Ctrl-C."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

from curation_pipeline import runs
from curation_pipeline_tests.conftest import make_small_drop

CURATION = str(Path(sys.executable).parent / "curation")
ROOT = str(Path(__file__).resolve().parents[2])
POOL = "gpu"


def _instance() -> dg.DagsterInstance:
    from curation_pipeline.cli import dagster_home
    from curation_pipeline.settings import Settings

    dagster_home(Settings.from_env())  # seeds $DAGSTER_HOME/dagster.yaml exactly as the CLI does
    return dg.DagsterInstance.get()


def _claimed(instance) -> list:
    return list(instance.event_log_storage.get_concurrency_info(POOL).claimed_slots)


def _pending(instance) -> list:
    return list(instance.event_log_storage.get_concurrency_info(POOL).pending_steps)


def _queued(instance) -> list[str]:
    """Runs whose steps wait for a gpu slot (pending, not yet assigned one)."""
    return [p.run_id for p in _pending(instance) if p.assigned_timestamp is None]


def _wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class _Stderr:
    """Collects a child's stderr on a thread so the test can watch it while the child runs."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc) -> None:
        for line in proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)

    def join(self) -> None:
        self._thread.join(timeout=10)


def _start_ingest(folder, drop: str, env, *, slow: bool = False) -> tuple[subprocess.Popen, "_Stderr"]:
    """`curation ingest FOLDER --drop DROP` in its own process (slow: the model's forward slowed, so the
    run sits in image_embeddings), with its stderr collected as it comes."""
    # the slow one executes in the CLI's process (--in-process), where the slowed forward applies
    command = [sys.executable, "-c", SLOW_INGEST.format(root=ROOT), "--in-process"] if slow else [CURATION]
    proc = subprocess.Popen(
        [*command, "ingest", str(folder), "--drop", drop],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, _Stderr(proc)


def _worker_pid(instance, run_id: str) -> int:
    """The pid of the process executing a launched run (its RUN_START event's)."""
    from dagster import DagsterEventType

    (record,) = instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_START, limit=1).records
    return record.event_log_entry.dagster_event.pid


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


# The child is the real CLI; only the offline model's forward pass is made slow (like a big model on
# a busy GPU), so the kill is sure to land while image_embeddings holds the gpu slot.
SLOW_INGEST = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from curation_pipeline.resources.embedders import OfflineEmbedder
    forward = OfflineEmbedder._forward
    def slow_forward(self, items):
        time.sleep(600)
        return forward(self, items)
    OfflineEmbedder._forward = slow_forward
    from curation_pipeline.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture
def env(curation_env):
    return {**os.environ}


def test_a_run_killed_mid_embedding_frees_the_gpu_slot_for_the_next_ingest(tmp_path, env):
    first, second = tmp_path / "first", tmp_path / "second"
    make_small_drop(first)
    make_small_drop(second, n_distinct=6)
    instance = _instance()
    proc, err = _start_ingest(first, "killed", env, slow=True)
    try:
        _wait_for(lambda: _claimed(instance), 120, proc, "image_embeddings to claim the gpu slot")
        dead_run_id = _claimed(instance)[0].run_id
        assert _claimed(instance)[0].step_key == "image_embeddings"
        assert instance.get_run_by_id(dead_run_id).status == DagsterRunStatus.STARTED
    finally:
        proc.send_signal(signal.SIGKILL)  # like the OOM killer: no handler, no cleanup
        proc.wait()
        err.join()
    assert instance.get_run_by_id(dead_run_id).status == DagsterRunStatus.STARTED  # left behind
    assert [s.run_id for s in _claimed(instance)] == [dead_run_id]  # and still holding the slot

    started = time.time()
    after = subprocess.run(
        [CURATION, "ingest", str(second), "--drop", "after"], env=env, capture_output=True, text=True, timeout=120
    )
    assert after.returncode == 0, after.stderr[-3000:]
    assert time.time() - started < 90
    assert dead_run_id in after.stderr and "marked it failed" in after.stderr
    dead = instance.get_run_by_id(dead_run_id)
    assert dead.status == DagsterRunStatus.FAILURE
    assert _claimed(instance) == [] and _pending(instance) == []
    runs_after = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": "after"}))
    assert [r.status for r in runs_after] == [DagsterRunStatus.SUCCESS]

    # the killed drop itself re-ingests cleanly afterwards
    again = subprocess.run(
        [CURATION, "ingest", str(first), "--drop", "killed"], env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr[-3000:]


def _live_holder(instance) -> str:
    """A STARTED run of this (live) test process, tagged as the CLI tags its runs, holding the gpu slot."""
    run_id = str(uuid.uuid4())
    instance.add_run(
        DagsterRun(
            job_name="ingest_drop",
            run_id=run_id,
            status=DagsterRunStatus.STARTED,
            tags={**runs.process_tags(), "dagster/partition": "holder"},
        )
    )
    storage = instance.event_log_storage
    storage.initialize_concurrency_limit_to_default(POOL)
    assert storage.claim_concurrency_slot(POOL, run_id, "image_embeddings").is_claimed
    return run_id


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_ingest_waiting_on_a_live_holder_says_who_and_stops_on_a_signal(tmp_path, env, sig):
    folder = tmp_path / "drop"
    make_small_drop(folder)
    instance = _instance()
    holder = _live_holder(instance)
    proc, err = _start_ingest(folder, "waiting", env)
    try:
        _wait_for(lambda: "waits for" in err.text(), 120, proc, "the waiting message")
        assert holder in err.text() and f"pid {os.getpid()}" in err.text(), err.text()[-2000:]
        # waiting costs (almost) no CPU, in the CLI or in the run worker that waits: dagster 1.13's
        # own claim loop spins at ~100% of a core
        waiting_run = _queued(instance)[0]
        for pid in (proc.pid, _worker_pid(instance, waiting_run)):
            before, t0 = _cpu_seconds(pid), time.time()
            time.sleep(2.0)
            assert (_cpu_seconds(pid) - before) / (time.time() - t0) < 0.3
        assert _claimed(instance)[0].run_id == holder
        waiting = _queued(instance)
        assert len(waiting) == 1 and waiting[0] != holder
        proc.send_signal(sig)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err.join()
    assert rc != 0
    last = err.lines[-1]
    assert "was interrupted (Ctrl-C or SIGTERM) while waiting for a 'gpu' slot held by run " + holder in last, last
    assert instance.get_run_by_id(waiting[0]).status in (DagsterRunStatus.CANCELED, DagsterRunStatus.FAILURE)
    assert _queued(instance) == []  # the waiting run left the queue
    assert [s.run_id for s in _claimed(instance)] == [holder]  # a live holder's slot is not taken from it
    assert instance.get_run_by_id(holder).status == DagsterRunStatus.STARTED


def test_a_launched_run_whose_worker_is_killed_is_failed_by_its_cli_and_frees_the_slot(tmp_path, env):
    """The default path: the CLI launched the run into a run worker. The worker dies (kill -9, the
    OOM killer) holding the gpu slot: the waiting CLI notices, marks the run failed, frees the slot,
    and says so; the next ingest goes ahead."""
    first, second = tmp_path / "first", tmp_path / "second"
    make_small_drop(first, n_distinct=12)
    make_small_drop(second, n_distinct=6)
    instance = _instance()
    proc, err = _start_ingest(first, "worker-killed", env)
    try:
        _wait_for(lambda: _claimed(instance), 120, proc, "image_embeddings to claim the gpu slot")
        run_id = _claimed(instance)[0].run_id
        worker = _worker_pid(instance, run_id)
        assert worker != proc.pid
        os.kill(worker, signal.SIGKILL)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err.join()
    assert rc != 0
    # whoever notices first marks it failed: the code server that started the worker, or the CLI
    assert err.lines[-1].startswith(f"curation: run {run_id} of ingest_drop for 'worker-killed' failed"), err.text()[-3000:]
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.FAILURE
    started = time.time()
    after = subprocess.run(
        [CURATION, "ingest", str(second), "--drop", "after-kill"], env=env, capture_output=True, text=True, timeout=120
    )
    assert after.returncode == 0, after.stderr[-3000:]
    assert time.time() - started < 90  # the dead worker's slot did not hold it up
    assert _claimed(instance) == [] and _pending(instance) == []


def test_process_identity_detects_a_gone_or_reused_pid(tmp_path):
    me = runs.process_tags()
    assert me[runs.HOST_TAG] == socket.gethostname() and me[runs.PID_TAG] == str(os.getpid())
    assert runs.process_is_alive(me) is True
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    tags = {**me, runs.PID_TAG: str(child.pid), runs.PID_START_TAG: runs.process_start_time(child.pid) or ""}
    child.wait()
    assert runs.process_is_alive(tags) is False
    # the same pid with another start time is another process (pid reuse)
    assert runs.process_is_alive({**me, runs.PID_START_TAG: "1"}) is False
    # another host's process cannot be checked from here: unknown, never reaped
    assert runs.process_is_alive({**me, runs.HOST_TAG: me[runs.HOST_TAG] + "-elsewhere"}) is None
    assert runs.process_is_alive({}) is None


def test_a_waiting_ingest_takes_the_slot_as_soon_as_its_holder_dies(tmp_path, env):
    folder = tmp_path / "drop"
    make_small_drop(folder)
    instance = _instance()
    holder_process = subprocess.Popen(["sleep", "300"])
    try:
        run_id = str(uuid.uuid4())
        tags = {
            **runs.process_tags(),
            runs.PID_TAG: str(holder_process.pid),
            runs.PID_START_TAG: runs.process_start_time(holder_process.pid) or "",
        }
        instance.add_run(
            DagsterRun(
                job_name="ingest_drop",
                run_id=run_id,
                status=DagsterRunStatus.STARTED,
                tags={**tags, "dagster/partition": "holder"},
            )
        )
        instance.event_log_storage.initialize_concurrency_limit_to_default(POOL)
        assert instance.event_log_storage.claim_concurrency_slot(POOL, run_id, "image_embeddings").is_claimed
        proc, err = _start_ingest(folder, "next", env)
        try:
            _wait_for(lambda: "waits for" in err.text(), 120, proc, "the waiting message")
            assert f"pid {holder_process.pid}" in err.text()
            holder_process.kill()
            holder_process.wait()
            killed_at = time.time()
            assert proc.wait(timeout=60) == 0, err.text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            err.join()
    finally:
        holder_process.kill()
        holder_process.wait()
    assert time.time() - killed_at < 30  # noticed within seconds, not after dagster's back-off
    assert run_id in err.text() and "marked it failed" in err.text()
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.FAILURE
    assert _claimed(instance) == [] and _pending(instance) == []


def test_sigterm_mid_embedding_ends_the_cli_and_gives_the_slot_back(tmp_path, env):
    folder = tmp_path / "drop"
    make_small_drop(folder)
    instance = _instance()
    proc, err = _start_ingest(folder, "stopped", env, slow=True)
    try:
        _wait_for(lambda: _claimed(instance), 120, proc, "image_embeddings to claim the gpu slot")
        run_id = _claimed(instance)[0].run_id
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err.join()
    assert rc != 0
    assert err.lines[-1].endswith("failed at image_embeddings: interrupted (Ctrl-C or SIGTERM)"), err.text()[-2000:]
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.FAILURE
    assert _claimed(instance) == [] and _pending(instance) == []
