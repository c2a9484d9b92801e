"""The capture-drop sensor: watch S3 prefixes or local folders, add one partition per completed drop.

Every tick lists the drops under each watched root (S3: one ListObjectsV2 request with a '/'
delimiter per 1,000 drops; local: one scandir), subtracts the drops already known as partitions,
and checks at most `max_checks_per_tick` of the rest for completeness (core.discovery). Drop names
are not assumed to sort by arrival, so a name cursor (S3 StartAfter) could skip a late drop with an
early name; the full delimiter listing is cheap and is the overlap. The cursor keeps what was still
waiting and where the round-robin over unchecked drops stopped. A drop is added exactly once:
it is skipped while its key is a partition, and its run has run_key `drop:<key>`, which Dagster
de-duplicates per sensor even if two ticks raced."""

import json
from dataclasses import dataclass
from datetime import datetime, timezone

import dagster as dg

from curation_pipeline.core.discovery import COMPLETION_RULES, decide
from curation_pipeline.core.ids import validate_name
from curation_pipeline.settings import Settings

from .jobs import ingest_drop_job
from .partitions import capture_drops
from .resources import DatabaseResource, ImageStoreResource


@dataclass(frozen=True)
class WatchSettings:
    roots: tuple[str, ...] = ()
    marker: str = "_SUCCESS"
    completion: str = "marker_or_quiet"
    quiet_seconds: float = 600.0
    max_checks_per_tick: int = 200
    interval_seconds: int = 30
    default_running: bool = False

    def __post_init__(self) -> None:
        if self.completion not in COMPLETION_RULES:
            raise ValueError(f"completion={self.completion!r}: use one of {COMPLETION_RULES}")

    @classmethod
    def from_settings(cls, settings: Settings, roots: tuple[str, ...] | None = None) -> "WatchSettings":
        """From the project's settings (settings.py): CURATION_WATCH (default: the drop root; `roots`
        overrides), CURATION_DROP_MARKER, CURATION_DROP_COMPLETION, CURATION_DROP_QUIET_SECONDS,
        CURATION_SENSOR_RUNNING=1 to start the sensor on by default."""
        return cls(
            roots=settings.watched_roots if roots is None else tuple(roots),
            marker=settings.drop_marker,
            completion=settings.drop_completion,
            quiet_seconds=settings.drop_quiet_seconds,
            default_running=settings.sensors_running,
        )


def build_drop_sensor(settings: WatchSettings) -> dg.SensorDefinition:
    @dg.sensor(
        name="capture_drop_sensor",
        job=ingest_drop_job,
        minimum_interval_seconds=settings.interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING if settings.default_running else dg.DefaultSensorStatus.STOPPED,
        description=(
            f"Adds a capture_drops partition and runs ingest_drop for every completed drop under "
            f"{', '.join(settings.roots) or '(no root configured: set CURATION_WATCH)'}; complete = "
            f"{settings.completion} (marker {settings.marker!r}, quiet {settings.quiet_seconds:g} s)."
        ),
    )
    def capture_drop_sensor(
        context: dg.SensorEvaluationContext, image_store: ImageStoreResource, database: DatabaseResource
    ) -> dg.SensorResult:
        return evaluate_drops(context, settings, image_store, database)

    return capture_drop_sensor


def evaluate_drops(
    context: dg.SensorEvaluationContext,
    settings: WatchSettings,
    image_store: ImageStoreResource,
    database: DatabaseResource,
    now: datetime | None = None,
) -> dg.SensorResult:
    now = now or datetime.now(timezone.utc)
    state = json.loads(context.cursor) if context.cursor else {}
    known = set(context.instance.get_dynamic_partitions(capture_drops.name))
    invalid = set(state.get("invalid", []))
    candidates: dict[str, str] = {}
    found_known: dict[str, str] = {}  # partitions (added by hand) whose folder is here
    for root in settings.roots:
        try:
            listed = list(image_store.store(root).list_drops(root))
        except (OSError, ValueError) as exc:  # a root that is not there yet is not an error of the sensor
            context.log.warning(f"cannot list drop root {root!r}: {exc}")
            continue
        for name, location in listed:
            if name in known:
                found_known.setdefault(name, location)
                continue
            if name in invalid or name in candidates:
                continue
            try:
                validate_name(name, "drop key")
            except ValueError as exc:
                context.log.warning(f"drop {location!r} skipped: {exc}")
                invalid.add(name)
                continue
            candidates[name] = location
    # round-robin over the unknown drops, so a long backlog of unfinished uploads is checked in turn
    names = sorted(candidates)
    after = state.get("after", "")
    start = next((i for i, n in enumerate(names) if n > after), 0)
    batch = (names[start:] + names[:start])[: settings.max_checks_per_tick]
    states = [image_store.store(candidates[n]).drop_state(n, candidates[n], settings.marker) for n in batch]
    decision = decide(states, known=known, now=now, completion=settings.completion, quiet_seconds=settings.quiet_seconds)
    catalog = database.catalog() if decision.ready or found_known else None
    for name in decision.ready:
        catalog.register_drop(name, candidates[name])
    # A partition added by hand (the UI's "Add partition") has no recorded source, and its first
    # run fails saying so; once its folder shows up under a watched root the sensor records it
    # there and ingests it, as it would a drop it found itself.
    sourceless = catalog.drops_without_source(sorted(found_known))[: settings.max_checks_per_tick] if found_known else []
    adoptable = [image_store.store(found_known[n]).drop_state(n, found_known[n], settings.marker) for n in sourceless]
    adoption = decide(adoptable, known=set(), now=now, completion=settings.completion, quiet_seconds=settings.quiet_seconds)
    adopted = adoption.ready
    for name in adopted:
        catalog.register_drop(name, found_known[name])
        context.log.info(f"drop {name}: partition known without a source; found at {found_known[name]}, ingesting it")
    decision.waiting.update(adoption.waiting)
    if decision.waiting:
        context.log.info(
            f"{len(decision.waiting)} drops not complete yet: "
            + ", ".join(f"{k} ({v})" for k, v in list(decision.waiting.items())[:10])
        )
    cursor = {
        "after": batch[-1] if batch and len(batch) < len(names) else "",
        "waiting": decision.waiting,
        "invalid": sorted(invalid),
        "ticked_at": now.isoformat(timespec="seconds"),
        "known": len(known),
        "unknown": len(names),
    }
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=k, run_key=f"drop:{k}", tags={"curation/drop": k}) for k in decision.ready]
        + [dg.RunRequest(partition_key=k, run_key=f"drop:{k}:adopted", tags={"curation/drop": k}) for k in adopted],
        dynamic_partitions_requests=[capture_drops.build_add_request(decision.ready)] if decision.ready else [],
        cursor=json.dumps(cursor),
    )
