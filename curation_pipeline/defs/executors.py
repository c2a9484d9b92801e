"""The executor every job runs with on one machine: Dagster's in-process executor (all steps of a
run in the run's process: a 5-image drop is done in seconds, not the 4-8 s per step that
starting a process per step costs), with a wait for a pool slot that sleeps, says in the run's
log who holds the slot, frees the slots of runs whose process is gone, and ends on termination.

CURATION_EXECUTOR=multiprocess keeps Dagster's process-per-step executor; CURATION_EXECUTOR=k8s
runs each step in its own pod, so the GPU step alone asks for a GPU node (see definitions.py)."""

from __future__ import annotations

import dagster as dg
from dagster._core.definitions.executor_definition import IN_PROC_CONFIG, _core_in_process_executor_creation
from dagster._core.executor.in_process import InProcessExecutor

from curation_pipeline import runs


class _SlotWaitingInProcessExecutor(InProcessExecutor):
    """InProcessExecutor whose pool-slot wait is runs.watching_pool_waits' (sleeping, reporting)."""

    def execute(self, plan_context, execution_plan):
        instance, run = plan_context.instance, plan_context.dagster_run

        def say(message: str) -> None:
            instance.report_engine_event(message, run)  # the CLI streams "curation: " engine events

        with runs.watching_pool_waits(instance, say):
            yield from super().execute(plan_context, execution_plan)


@dg.executor(name="in_process", config_schema=IN_PROC_CONFIG)
def curation_in_process_executor(init_context) -> InProcessExecutor:
    """All steps of a run in one process; a step waiting for a pool slot (`gpu`) sleeps between
    claims and logs which run holds the slot."""
    base = _core_in_process_executor_creation(init_context.executor_config)
    return _SlotWaitingInProcessExecutor(
        retries=base.retries, step_dependency_config=base.step_dependency_config, marker_to_close=base.marker_to_close
    )
