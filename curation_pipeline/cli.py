"""`curation`: a thin CLI that materializes through the same Definitions as the UI, on the same
persistent Dagster instance, so every run it starts is recorded and visible in the UI.

--json output goes to stdout alone; logs and progress go to stderr."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
import urllib.parse
from importlib import resources as importlib_resources
from pathlib import Path

from curation_pipeline.launcher import CODE_LOCATION_MODULE
from curation_pipeline.settings import DEFAULT_UI_PORT, Settings

log = logging.getLogger("curation")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def dagster_home(settings: Settings) -> Path:
    """$DAGSTER_HOME, else $CURATION_HOME/dagster_home; seeded with the packaged dagster.yaml. The
    variable is set for Dagster, which reads it itself (here and in the processes it starts)."""
    home = settings.dagster_home or (settings.home / "dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    target = home / "dagster.yaml"
    if not target.exists():
        source = importlib_resources.files("curation_pipeline") / "dagster.yaml"
        target.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    return home


def _instance(settings: Settings):
    import dagster as dg

    dagster_home(settings)
    return dg.DagsterInstance.get()


def _defs(settings: Settings):
    """The same Definitions as the UI's code location, from the settings this command read."""
    from curation_pipeline.definitions import build_definitions

    return build_definitions(settings)


class Runner:
    """The runs of one CLI command. Each is launched through the instance against the project's code
    location (launcher.py: a code server started on first use, shared by the command's runs, stopped
    at the end), waited for, and its log streamed to stderr; with `in_process` (`curation
    --in-process`) each executes in this process instead, for debugging."""

    def __init__(self, settings: Settings, *, in_process: bool = False, command: str = "") -> None:
        self.settings = settings
        self.in_process = in_process
        self.command = command
        self._stack = contextlib.ExitStack()
        self._location = None

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def _code_location(self, instance):
        if self._location is None:
            from curation_pipeline import launcher

            self._stack.enter_context(_stdout_kept_for_results())
            self._location = self._stack.enter_context(launcher.code_location(instance))
        return self._location

    def run(
        self,
        job_name: str,
        partitions_def_name: str | None,
        partition_key: str | None,
        run_config: dict | None = None,
        *,
        partition_range: tuple[str, str] | None = None,
    ) -> dict:
        """Add the dynamic partition if new, run the job for it on the persistent instance and
        return the metadata of its materializations by asset (no partition for an unpartitioned job;
        `partition_range` runs a range of existing partitions in one run, for assets with a
        multi-run backfill policy). A failed run ends the command with its cause."""
        from curation_pipeline import runs

        instance = _instance(self.settings)
        if partitions_def_name and partition_key and not instance.has_dynamic_partition(partitions_def_name, partition_key):
            instance.add_dynamic_partitions(partitions_def_name, [partition_key])
        tags = {"curation/cli": self.command or "curation"}  # which command started the run
        if partition_key:
            tags["dagster/partition"] = partition_key
        if partition_range:
            from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

            tags[ASSET_PARTITION_RANGE_START_TAG], tags[ASSET_PARTITION_RANGE_END_TAG] = partition_range
            partition_key = None
        label = partition_key or (f"{partition_range[0]}..{partition_range[1]}" if partition_range else "all")
        started = time.perf_counter()
        # A run whose process was killed stays STARTED and keeps its pool slot (the only `gpu` one)
        # until someone notices the process is gone: every CLI call does, before it runs anything.
        runs.reap_dead_runs(instance, _stderr)
        if self.in_process:
            outcome = self._execute_in_process(instance, job_name, partition_key, run_config, tags)
        else:
            outcome = self._launch(instance, job_name, run_config, tags, label)
        if not outcome.success and outcome.interrupted:
            raise SystemExit(
                f"curation: run {outcome.run_id} of {job_name} for {label!r} was interrupted (Ctrl-C or SIGTERM)"
                + (f" while waiting for {outcome.waiting_for}" if outcome.waiting_for else "")
                + "; it is canceled"
            )
        if not outcome.success:
            raise SystemExit(runs.failure_line(outcome.run_id, outcome.events, job_name, label))
        metadata = {}
        for ev in outcome.events:
            if ev.is_step_materialization:
                mat = ev.event_specific_data.materialization
                metadata[mat.asset_key.to_user_string()] = {k: v.value for k, v in mat.metadata.items()}
        _stderr(f"run {outcome.run_id} ({job_name}, {label}) succeeded in {time.perf_counter() - started:.1f}s")
        return metadata

    def _launch(self, instance, job_name, run_config, tags, label):
        from curation_pipeline import launcher, runs

        location = self._code_location(instance)
        # the run worker's console would print every event to this terminal a second time
        config = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}, **(run_config or {})}
        run = launcher.create_run(location, instance, job_name, config, {**tags, **runs.process_tags()})
        queued = launcher.start(location, instance, run)
        _stderr(
            f"run {run.run_id} ({job_name}, {label}) "
            + ("queued: the daemon of `make ui` launches it" if queued else "launched")
            + "; Ctrl-C cancels it"
        )
        return launcher.wait(instance, run.run_id, _EventPrinter(), queued=queued, say=_stderr)

    def _execute_in_process(self, instance, job_name, partition_key, run_config, tags):
        from curation_pipeline import launcher, runs
        from curation_pipeline.core.progress import TerminalBar, subscribe

        job = _defs(self.settings).resolve_job_def(job_name)
        # INFO, not DEBUG, on the console: per-batch progress without every engine event.
        config = {"loggers": {"console": {"config": {"log_level": "INFO"}}}, **(run_config or {})}
        unsubscribe = subscribe(TerminalBar())  # the run executes in this process: steps report here
        try:
            with runs.watching_pool_waits(instance, _stderr) as wait:
                result = job.execute_in_process(
                    instance=instance,
                    partition_key=partition_key,
                    run_config=config,
                    raise_on_error=False,
                    tags={**tags, **runs.process_tags()},
                )
        finally:
            unsubscribe()
        return launcher.Outcome(
            run_id=result.run_id,
            success=result.success,
            events=list(result.all_events),
            interrupted=wait.interrupted,
            waiting_for=wait.holders_text() if wait.interrupted else None,
        )


class _EventPrinter:
    """One line on stderr per event a person follows a run by: the steps' own log lines (INFO and
    up), step starts and ends, failed checks, and what a run waits for; the steps' `progress:`
    lines drive the progress bar instead."""

    def __init__(self) -> None:
        from curation_pipeline.core.progress import TerminalBar

        self.bar = TerminalBar()

    def __call__(self, entry) -> None:
        from dagster import DagsterEventType

        from curation_pipeline.core.progress import parse_log_line

        event = entry.dagster_event
        step = f"{entry.step_key}: " if entry.step_key else ""
        if event is None:
            progress = parse_log_line(entry.user_message)
            if progress is not None:
                self.bar(*progress)
            elif entry.level >= logging.INFO:
                _stderr(f"  {step}{entry.user_message}")
            return
        kind = event.event_type
        if kind == DagsterEventType.STEP_START:
            _stderr(f"  {event.step_key} started")
        elif kind == DagsterEventType.STEP_SUCCESS:
            _stderr(f"  {event.step_key} done in {event.event_specific_data.duration_ms / 1000:.1f}s")
        elif kind == DagsterEventType.ASSET_CHECK_EVALUATION and not event.asset_check_evaluation_data.passed:
            data = event.asset_check_evaluation_data
            _stderr(f"  check {data.asset_key.to_user_string()}.{data.check_name} failed ({data.severity.value})")
        elif kind == DagsterEventType.RUN_DEQUEUED:
            _stderr("  dequeued by the daemon")
        elif kind == DagsterEventType.ENGINE_EVENT and (event.message or "").startswith("curation: "):
            _stderr(f"  {event.message}")


@contextlib.contextmanager
def _stdout_kept_for_results():
    """While the code server and run workers this command starts are alive, whatever they write to
    file descriptor 1 goes to stderr: stdout stays for the command's results (--json)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # stdout is not a file (captured): nothing to keep
        yield
        return
    if fd != 1:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    previous = sys.stdout
    sys.stdout = open(saved, "w", encoding=previous.encoding or "utf-8", errors=previous.errors, closefd=False)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        sys.stdout.close()
        sys.stdout = previous
        os.close(saved)


def _run_job(args: argparse.Namespace, *run_args, **run_kwargs) -> dict:
    return args.runner.run(*run_args, **run_kwargs)


def _catalog(settings: Settings):
    from curation_pipeline.resources.catalog import Catalog
    from curation_pipeline.resources.database import resolve_database_url

    return Catalog(resolve_database_url(settings.database_url, settings.embedded_pgdata))


def _stores(settings: Settings):
    """What the CLI reads images through: local files, and S3 with the project's S3 settings."""
    from curation_pipeline.resources.image_store import ImageStores, S3Settings

    return ImageStores(
        S3Settings(endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region, profile_name=settings.s3_profile)
    )


# ---- commands ------------------------------------------------------------------------------------
def cmd_ingest(args: argparse.Namespace) -> int:
    from curation_pipeline.core.ids import validate_name

    key = validate_name(args.drop, "drop key")
    source = args.source
    if "://" not in source:
        path = Path(source).expanduser().resolve()
        if not path.is_dir():
            raise SystemExit(f"curation: drop source {source!r} is not a folder")
        source = str(path)
    # The source travels in run config and becomes the drop's source only with its manifest: a
    # refused or failed listing (empty folder, wrong prefix) leaves the drop as it was.
    manifest_config: dict = {"source": source}
    if args.allow_shrink:
        manifest_config["allow_shrink"] = True
    meta = _run_job(args, "ingest_drop", "capture_drops", key, {"ops": {"raw_image_manifest": {"config": manifest_config}}})
    for label, count in (meta.get("raw_image_manifest", {}).get("items_lost") or {}).items():
        _stderr(
            f"warning: {label} lost {count} item(s): their images are no longer in drop {key}; "
            f"`curation select --name NAME` (or the automation) re-selects to the budget"
        )
    if args.json:
        print(json.dumps(meta, default=str))
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from curation_pipeline.core.ids import validate_name
    from curation_pipeline.steps.select import StrategySpec

    name = validate_name(args.name, "selection name")
    config: dict = {}
    if args.config:
        import yaml

        config = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
        if not isinstance(config, dict):
            raise SystemExit(f"curation: {args.config} must hold a mapping of selection settings")
    if args.budget is not None:
        config["budget"] = args.budget
    if "budget" not in config:
        raise SystemExit("curation: give --budget (or budget: in --config)")
    if args.min_distance is not None:
        config["min_distance"] = args.min_distance
    if args.strategy:
        try:
            parsed = [StrategySpec.parse(s) for s in args.strategy]
        except (ValueError, TypeError) as exc:
            raise SystemExit(f"curation: {exc}") from None
        config["strategies"] = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(st).items()} for st in parsed]
    for key, value in (("drop_keys", args.drop), ("where", args.where), ("exclude", args.exclude)):
        if value:
            config[key] = value
    if args.seed is not None:
        config["seed"] = args.seed
    if args.pool_cap is not None:
        config["candidate_pool_cap"] = args.pool_cap
    if args.model:
        config["model"] = args.model
    if args.annotations:
        config["annotations_file"] = str(Path(args.annotations).expanduser().resolve())
        config["annotations_key_column"] = args.key_column
    run_config = {"ops": {"curated_subset": {"config": config}}}
    meta = _run_job(args, "select_and_report", "selections", name, run_config)
    report = meta.get("curation_report", {}).get("path")
    info = _catalog(args.settings).selection_info(name)
    comparison = (info.comparison if info else None) or {}
    _stderr(
        f"selection {name}: {meta.get('curated_subset', {}).get('selected')} images "
        f"({meta.get('curated_subset', {}).get('strategy')}); report: {report}"
    )
    missing = meta.get("curation_report", {}).get("missing_sources") or 0
    if missing:
        _stderr(
            f"  warning: {missing} source file(s) could not be read for the report; they are listed in its "
            "'Missing sources' section"
        )
    if comparison:
        sub, rnd = comparison["subset"], comparison["random"]
        _stderr(
            f"  fine clusters covered {sub['fine_clusters_covered']:.2f} (random {rnd['fine_clusters_covered']:.2f}),"
            f" mean distance pool->subset {sub.get('coverage_distance_mean')} (random {rnd.get('coverage_distance_mean')})"
        )
    if args.json:
        print(json.dumps({**meta, "comparison": comparison}, default=str))
    return 0


def cmd_annotate(args: argparse.Namespace) -> int:
    from curation_pipeline.steps.annotate import load_annotations

    try:
        stats = load_annotations(_catalog(args.settings), args.file, key_column=args.key_column, columns=args.column or None)
    except ValueError as exc:
        raise SystemExit(f"curation: {exc}") from None
    _stderr(
        f"loaded {stats['values']} values of {stats['columns']} for {stats['matched_images']} images; "
        f"{stats['unmatched_rows']} rows named no known image"
    )
    if args.json:
        print(json.dumps(stats))
    return 0


def cmd_retrieve(args: argparse.Namespace) -> int:
    from curation_pipeline.core.ids import validate_name

    name = validate_name(args.name, "retrieval name")
    config: dict = {"k": args.k}
    if args.query:
        config["query_paths"] = [str(Path(p).expanduser().resolve()) for p in args.query]
    if args.prefix:
        config["query_prefix"] = args.prefix
    if args.image:
        config["query_images"] = args.image
    if args.text:
        config["text"] = args.text
    if not (args.query or args.prefix or args.image or args.text):
        raise SystemExit("curation: give --query FILE|FOLDER, --prefix S3_PREFIX, --image CORPUS_IMAGE or --text PROMPT")
    for key, value in (
        ("min_similarity", args.min_similarity),
        ("drop_keys", args.drop),
        ("where", args.where),
        ("exclude", args.exclude),
        ("model", args.model),
    ):
        if value is not None:
            config[key] = value
    ops: dict = {"retrieval_set": {"config": config}}
    if args.export_to:  # without it, retrieval_export is skipped
        dest = args.export_to if "://" in args.export_to else str(Path(args.export_to).expanduser().resolve())
        ops["retrieval_export"] = {"config": {"export_to": dest}}
    meta = _run_job(args, "retrieve", "retrieval_queries", name, {"ops": ops})
    if "retrieval_page" in meta:
        _stderr(f"retrieval {name}: page {meta['retrieval_page']['path']}")
    if "retrieval_export" in meta:
        out = meta["retrieval_export"]
        _stderr(
            f"retrieval {name}: exported {out['images']} images ({out['copied']} copied, {out['already_there']} already "
            f"there); manifest {out['manifest_parquet']}"
        )
    items = _catalog(args.settings).retrieval_items(name)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "rank": it["rank"],
                        "similarity": round(it["similarity"], 6),
                        "path": it["source_uri"],
                        "query": it["query_ref"],
                    }
                    for it in items
                ]
            )
        )
    else:
        for it in items:
            print(f"{it['rank']:3d}  {it['similarity']:.4f}  {it['source_uri']}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    config = {k: v for k, v in (("sample", args.sample), ("seed", args.seed)) if v is not None}
    meta = _run_job(args, "calibrate_dedup", None, None, {"ops": {"dedup_calibration": {"config": config}}})
    cal = meta.get("dedup_calibration", {})
    _stderr(
        f"calibration {cal.get('calibration_id')} of {cal.get('model')}: proposal cosine {cal.get('proposal_min_cosine')} "
        f"(proposes {cal.get('proposal_recall')} of {cal.get('edits')} synthetic edits), verifier agreeing share >= "
        f"{cal.get('verifier_min_share')} (precision {cal.get('verifier_precision')}, recall {cal.get('verifier_recall')}); "
        "every later dedup of this model uses them"
    )
    if args.json:
        print(json.dumps(cal, default=str, indent=1))
    return 0


def cmd_train_domain(args: argparse.Namespace) -> int:
    config = {
        k: v
        for k, v in (
            ("dim", args.dim),
            ("views", args.views),
            ("sample", args.sample),
            ("epochs", args.epochs),
            ("seed", args.seed),
        )
        if v is not None
    }
    meta = _run_job(args, "train_domain", None, None, {"ops": {"domain_embedder": {"config": config}}})
    trained = meta.get("domain_embedder", {})
    _stderr(
        f"domain model {trained.get('model')}: {trained.get('dim')}-d, trained on {trained.get('images')} images in "
        f"{trained.get('seconds')} s ({'new version' if trained.get('new_version') else 'same weights as before'})"
    )
    drops = _instance(args.settings).get_dynamic_partitions("capture_drops")  # in the order they arrived
    if drops:
        embedded = _run_job(args, "domain_embed", "capture_drops", None, partition_range=(drops[0], drops[-1]))
        _stderr(f"embedded {embedded.get('domain_embeddings', {}).get('rows_written')} images of {len(drops)} drop(s) with it")
    if args.json:
        print(json.dumps(trained, default=str))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from curation_pipeline.definitions import build_resources
    from curation_pipeline.defs.resources import project_models
    from curation_pipeline.steps.models import MODEL_ROLES

    resources = build_resources(args.settings)
    models = project_models(resources["embedder"], resources["descriptor"])
    catalog = _catalog(args.settings)
    current = catalog.current_domain_model()
    roles = {
        "descriptor": models.descriptor_id(),
        "semantic": models.semantic_id(),
        "domain": current.model_id if current else None,
    }
    jobs = {
        "near-duplicate candidates": "descriptor (with sha256 and pHash)",
        "selections (map, clusters, outliers)": args.settings.selection_model,
        "retrieval": args.settings.retrieval_model,
    }
    versions = [
        {"model": r.model_id, "version": r.version, "dim": r.dim, "images": r.images, "created": r.created_at.isoformat()}
        for r in catalog.domain_models()
    ]
    if args.json:
        print(json.dumps({"roles": roles, "jobs": jobs, "domain_versions": versions}))
        return 0
    for role, model_id in roles.items():
        print(f"{role:11s} {model_id or '(not trained: curation train-domain)'}  - {MODEL_ROLES[role]}")
    print()
    for job, choice in jobs.items():
        print(f"{job:38s} {choice}")
    for v in versions:
        print(f"domain v{v['version']}: {v['model']} ({v['dim']}-d, {v['images']} images, {v['created']})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from curation_pipeline.core.ids import validate_name

    name = validate_name(args.name, "selection name")
    if _catalog(args.settings).selection_info(name) is None:
        raise SystemExit(f"curation: selection {name!r} does not exist: run `curation select --name {name}` first")
    config: dict = {"copy_images": not args.no_copy}
    if args.destination:
        config["destination"] = (
            args.destination if "://" in args.destination else str(Path(args.destination).expanduser().resolve())
        )
    if args.presign is not None:
        config["presign_seconds"] = args.presign
    meta = _run_job(args, "export", "selections", name, {"ops": {"curated_export": {"config": config}}})
    out = meta.get("curated_export", {})
    _stderr(
        f"export {name}: {out.get('images')} images ({out.get('copied')} copied, {out.get('already_there')} already "
        f"there); manifest {out.get('manifest_parquet')}"
    )
    if args.json:
        print(json.dumps(out, default=str))
    return 0


def cmd_duplicates(args: argparse.Namespace) -> int:
    groups = _catalog(args.settings).duplicate_groups(args.drop or None)
    listing = [[g["representative"]["source_uri"]] + [m["source_uri"] for m in g["members"]] for g in groups]
    if args.json:
        print(json.dumps(listing))
    else:
        for g in groups:
            print(g["representative"]["source_uri"])
            for m in g["members"]:
                print(f"    {m['tier']:<10} {m['similarity']:.4f}  {m['source_uri']}")
    return 0


def cmd_subset(args: argparse.Namespace) -> int:
    catalog = _catalog(args.settings)
    if args.name is None:
        # no --name: the selection called "default" if there is one, else the most recent one
        # (right after `make demo`: the demo's)
        latest = catalog.latest_selection_name()
        args.name = "default" if catalog.selection_info("default") is not None or latest is None else latest
        if args.name != "default":
            _stderr(f"no --name given: selection {args.name!r}, the most recent one")
    if catalog.selection_info(args.name) is None:
        raise SystemExit(f"curation: selection {args.name!r} does not exist: run `curation select --name {args.name}`")
    items = catalog.selection_items(args.name)
    _warn_lost(catalog.lost_items("selection", args.name), f"selection {args.name}")
    if args.json:
        print(json.dumps([it["source_uri"] for it in items]))
    else:
        for it in items:
            print(f"{it['rank']:4d}  {it['source_uri']}")
    return 0


def _warn_lost(lost: list, what: str) -> None:
    """Say on stderr that a set lost items since it was materialized, and why."""
    if not lost:
        return
    reasons = sorted({x.reason for x in lost})
    _stderr(
        f"warning: {what} lost {len(lost)} item(s) since it was materialized (ranks "
        f"{', '.join(str(x.rank) for x in lost[:20])}{' ...' if len(lost) > 20 else ''}): "
        f"{'; '.join(reasons)}. Materialize it again to refill it."
    )


def _drop_source(source: str) -> str:
    """A drop source as recorded: an absolute folder path, or a URI (s3://bucket/prefix/)."""
    if "://" in source:
        return source
    path = Path(source).expanduser().resolve()
    if not path.is_dir():
        raise SystemExit(f"curation: drop source {source!r} is not a folder")
    return str(path)


def cmd_drop(args: argparse.Namespace) -> int:
    from curation_pipeline.core.ids import validate_name

    if args.action == "list":
        return _list_drops(args)
    if not args.drop:
        raise SystemExit(f"curation: `curation drop {args.action}` needs a drop key")
    key = validate_name(args.drop, "drop key")
    instance = _instance(args.settings)
    catalog = _catalog(args.settings)
    if args.action == "add":
        if not args.source:
            raise SystemExit("curation: `curation drop add KEY SOURCE`: give where the drop's images are")
        source = _drop_source(args.source)
        catalog.register_drop(key, source)
        if not instance.has_dynamic_partition("capture_drops", key):
            instance.add_dynamic_partitions("capture_drops", [key])
        _stderr(f"drop {key} recorded at {source}")
        meta = {}
        if args.ingest:
            meta = _run_job(args, "ingest_drop", "capture_drops", key)
        else:
            _stderr(f"  materialize it: `curation ingest {source} --drop {key}`, or its partition in the UI")
        if args.json:
            print(json.dumps({"drop": key, "source": source, **({"ingest": meta} if meta else {})}, default=str))
        return 0
    # remove: the rows first (one transaction, repairing other drops' groups), then the partition
    known = not catalog.unknown_drops([key])
    out = catalog.remove_drop(key) if known else {"images": 0, "items_lost": {}}
    had_partition = instance.has_dynamic_partition("capture_drops", key)
    if had_partition:
        instance.delete_dynamic_partition("capture_drops", key)
    if not known and not had_partition:
        raise SystemExit(f"curation: no drop {key!r}: neither a partition nor rows in the catalog (`curation drop list`)")
    _stderr(f"drop {key} removed: {out['images']} images and everything derived from them")
    for kind, per_name in out["items_lost"].items():
        for name, count in per_name.items():
            _stderr(f"warning: {kind} {name} lost {count} item(s)")
    if args.json:
        print(json.dumps(out))
    return 0


def _list_drops(args: argparse.Namespace) -> int:
    """Every drop partition and every drop the catalog knows, with its source and images."""
    catalog = _catalog(args.settings)
    partitions = _instance(args.settings).get_dynamic_partitions("capture_drops")
    sources = catalog.drop_sources()
    done = set(catalog.deduplicated_drops(exclude=""))
    keys = list(dict.fromkeys([*partitions, *sources]))
    rows = [
        {
            "drop": k,
            "source": sources.get(k),
            "partition": k in partitions,
            "deduplicated": k in done,
        }
        for k in keys
    ]
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            state = "deduplicated" if r["deduplicated"] else ("no results yet" if r["partition"] else "no partition")
            print(f"{r['drop']:32s} {state:14s} {r['source'] or '(no source recorded: curation drop add KEY SOURCE)'}")
    return 0


def cmd_protect(args: argparse.Namespace) -> int:
    _catalog(args.settings).set_protected(args.drop, not args.off)
    _stderr(
        f"drop {args.drop} is {'no longer ' if args.off else ''}protected; "
        "`curation leaks` lists other drops' duplicates of its images"
    )
    return 0


def cmd_leaks(args: argparse.Namespace) -> int:
    leaks = _catalog(args.settings).leaks(args.drop)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "path": x["source_uri"],
                        "drop": x["drop_key"],
                        "duplicates": x["protected_uri"],
                        "protected_drop": x["protected_drop"],
                    }
                    for x in leaks
                ]
            )
        )
    else:
        for x in leaks:
            print(f"{x['drop_key']}/{x['object_key']}  duplicates  {x['protected_drop']}/{x['protected_key']}")
        _stderr(f"{len(leaks)} leaks into protected drops {_catalog(args.settings).protected_drops()}")
    return 0


# ---- labels, objects, reviews, splits ------------------------------------------------------------
def cmd_labels_import(args: argparse.Namespace) -> int:
    from curation_pipeline.core.ids import validate_name
    from curation_pipeline.steps.labels import import_labels

    key = validate_name(args.drop, "drop key")
    version = validate_name(args.version, "label version") if args.version else None
    stats = import_labels(
        _catalog(args.settings),
        Path(args.file).expanduser(),
        drop_key=key,
        fmt=args.format,
        kind=args.kind,
        version=version,
        classes_file=args.classes,
        replace=args.replace,
    )
    what = "imported" if stats["created"] else "unchanged (the same content is already stored)"
    _stderr(
        f"drop {key}: {args.kind} {stats['version']} {what}: {stats['boxes']} boxes and {stats['image_level']} image labels "
        f"on {stats['images_annotated']} images, {stats['classes']} classes"
        + (
            f"; {stats['skipped_invalid_images']} annotations of corrupt images skipped"
            if stats["skipped_invalid_images"]
            else ""
        )
    )
    if stats["created"] and stats["boxes"] and not args.no_embed:
        meta = _run_job(args, "object_embed", "capture_drops", key)
        stats["object_embeddings"] = meta.get("object_embeddings", {})
    if args.json:
        print(json.dumps(stats, default=str))
    return 0


def cmd_labels_list(args: argparse.Namespace) -> int:
    sets = _catalog(args.settings).label_sets(args.drop)
    if args.json:
        print(json.dumps(sets, default=str))
        return 0
    for s in sets:
        print(
            f"{s['drop_key']:24s} {s['kind']:11s} {s['version']:10s} {s['format']:5s} {s['objects']:7d} objects "
            f"{len(s['classes']):4d} classes  {s['created_at']:%Y-%m-%d %H:%M}  {s['source']}"
        )
    if not sets:
        _stderr("no labels: `curation labels import FILE --drop KEY`")
    return 0


def cmd_labels_review(args: argparse.Namespace) -> int:
    from curation_pipeline.core.ids import validate_name

    name = validate_name(args.name, "review name")
    config: dict = {"name": name, "k": args.k, "limit": args.limit}
    if args.drop:
        config["drop_keys"] = args.drop
    if args.version:
        config["version"] = args.version
    meta = _run_job(args, "review_labels", None, None, {"ops": {"label_review": {"config": config}}})
    issues = _catalog(args.settings).label_issues(name, args.show)
    out = meta.get("label_review", {})
    _stderr(f"label review {name}: {out.get('suspects')} suspects {out.get('by_kind')}")
    if args.json:
        print(json.dumps(issues, default=str))
    else:
        for x in issues:
            print(
                f"{x['rank']:4d} {x['score']:.3f} {x['kind']:13s} {x['drop_key']}/{x['object_key']}"
                f"{'' if x['box'] is None else ' box ' + str(tuple(round(v) for v in x['box']))}: {x['given'] or '-'} -> "
                f"{x['suggested'] or '-'}  ({x['reason']})"
            )
    return 0


def cmd_labels_split(args: argparse.Namespace) -> int:
    from curation_pipeline.core.ids import validate_name

    name = validate_name(args.name, "split name")
    config: dict = {"name": name, "fractions": args.fractions, "seed": args.seed}
    if args.drop:
        config["drop_keys"] = args.drop
    if args.version:
        config["version"] = args.version
    _run_job(args, "split", None, None, {"ops": {"dataset_split": {"config": config}}})
    info = _catalog(args.settings).split_info(name) or {}
    parts = (info.get("stats") or {}).get("parts", {})
    for part, entry in parts.items():
        _stderr(f"  {part:8s} {entry['items']:6d} images  {entry['classes']}")
    if args.json:
        print(json.dumps(info, default=str))
    return 0


def cmd_labels_evaluate(args: argparse.Namespace) -> int:
    from curation_pipeline.core.ids import validate_name

    name = validate_name(args.selection, "selection name")
    if _catalog(args.settings).selection_info(name) is None:
        raise SystemExit(f"curation: selection {name!r} does not exist: run `curation select --name {name}` first")
    config: dict = {"seeds": args.seeds}
    if args.eval_drop:
        config["eval_drop"] = args.eval_drop
    if args.budget:
        config["budgets"] = args.budget
    _run_job(args, "evaluate_subset", "selections", name, {"ops": {"subset_evaluation": {"config": config}}})
    ev = _catalog(args.settings).subset_evaluation(name) or {}
    result = ev.get("result", {})
    for i, b in enumerate(result.get("budgets", [])):
        _stderr(
            f"  budget {b:6d}: subset {result['subset'][i]:.4f}  random {result['random_mean'][i]:.4f}"
            f" ± {result['random_std'][i]:.4f}"
        )
    if result:
        _stderr(f"  everything ({result['pool']} images): {result['everything']:.4f}  on {result['eval_drop']}")
    if args.json:
        print(json.dumps(result, default=str))
    return 0


def cmd_labels_export(args: argparse.Namespace) -> int:
    from curation_pipeline.core.ids import validate_name
    from curation_pipeline.resources.export_target import export_target_for
    from curation_pipeline.steps.export import check_destination
    from curation_pipeline.steps.label_export import export_labels, export_review

    settings = args.settings
    root = args.destination or settings.export_root
    if "://" not in root:
        root = str(Path(root).expanduser().resolve())
    catalog = _catalog(settings)
    stores = _stores(settings)
    target = export_target_for(root, stores.s3)
    if args.review:
        review = validate_name(args.review, "review name")
        name = validate_name(args.name or f"review-{review}", "export name")
        check_destination(catalog, name, target.uri(name), settings.watched_roots)
        stats = export_review(catalog, target, review, name=name, stores=stores)
    else:
        chosen = [x for x in (args.selection, args.split, args.drop) if x]
        if len(chosen) != 1:
            raise SystemExit("curation: name what to export: --selection NAME, --split NAME or --drop KEY (repeatable)")
        default = args.selection or args.split or "-".join(args.drop)
        name = validate_name(args.name or f"{default}-{args.format}", "export name")
        check_destination(catalog, name, target.uri(name), settings.watched_roots)
        stats = export_labels(
            catalog,
            target,
            name,
            fmt=args.format,
            selection=args.selection,
            split=args.split,
            drop_keys=args.drop,
            version=args.version,
            kind=args.kind,
            copy_images=args.copy_images,
            stores=stores,
        )
    _stderr(
        f"wrote {', '.join(stats['files'][:6])}" + (f" and {len(stats['files']) - 6} more" if len(stats["files"]) > 6 else "")
    )
    if args.json:
        print(json.dumps(stats, default=str))
    return 0


def _embed_crop(args: argparse.Namespace):
    """(model id, vector) of a crop of an image file, cut and embedded as object_embeddings does."""
    from curation_pipeline.definitions import build_resources
    from curation_pipeline.resources.image_store import read_local_file
    from curation_pipeline.steps.embed import DEFAULT_OPTIONS, model_id_for
    from curation_pipeline.steps.objects import crop_image

    data = read_local_file(args.image)
    box = None
    if args.box:
        try:
            box = tuple(float(v) for v in args.box.split(","))
        except ValueError:
            box = ()
        if len(box) != 4 or box[2] <= 0 or box[3] <= 0:
            raise SystemExit(f"curation: --box {args.box!r}: give x,y,w,h in pixels (w and h > 0)")
    if box is None:
        from curation_pipeline.core.decode import DecodeFailure, decode_image

        decoded = decode_image(data)
        if isinstance(decoded, DecodeFailure):
            raise SystemExit(f"curation: {args.image}: {decoded.error}")
        image = decoded.image
    else:
        image = crop_image(data, box)
    embedder = build_resources(args.settings)["embedder"].load()
    vector = embedder.embed_images([image])[0]
    return model_id_for(embedder, DEFAULT_OPTIONS), vector


def cmd_objects_similar(args: argparse.Namespace) -> int:
    catalog = _catalog(args.settings)
    if (args.object is None) == (args.image is None):
        raise SystemExit("curation: give --object ID, or --image FILE [--box x,y,w,h]")
    if args.object is not None:
        with catalog.connection() as conn:
            row = conn.execute(
                "SELECT model, embedding FROM object_embeddings WHERE object_id = %s ORDER BY model LIMIT 1", (args.object,)
            ).fetchone()
        if row is None:
            raise SystemExit(f"curation: object {args.object} has no vector (materialize object_embeddings for its drop)")
        model, vector = row[0], row[1].to_numpy()
    else:
        model, vector = _embed_crop(args)
    found = catalog.nearest_objects(vector, model, args.k, exclude=args.object)
    if args.json:
        print(json.dumps(found, default=str))
    else:
        for o in found:
            box = tuple(round(v) for v in o["box"]) if o["box"] else None
            print(
                f"{o['similarity']:.4f}  object {o['object_id']}  {o['class_name']:16s} {o['drop_key']}/{o['object_key']} {box}"
            )
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from curation_pipeline.resources.database import resolve_database_url, stop_embedded_server

    settings = args.settings
    if args.action == "url":
        print(resolve_database_url(settings.database_url, settings.embedded_pgdata))
    elif args.action == "stop":
        stopped = stop_embedded_server(settings.embedded_pgdata)
        _stderr("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")
    return 0


# `dagster dev` through this wrapper, which filters two notices it prints on every start, each by
# its class or exact wording, nothing else: that `dg dev` (from a package this project does not
# install) supersedes it, and that the repository's dagster.yaml is not the instance's (it is the
# template the CLI copies into DAGSTER_HOME, which is the one used).
_DAGSTER_DEV = (
    "import logging, sys, warnings, dagster\n"
    "warnings.filterwarnings('ignore', category=dagster.SupersessionWarning)\n"
    "class NotTheInstanceYaml(logging.Filter):\n"
    "    def filter(self, record):\n"
    "        return not record.getMessage().startswith('Found a dagster instance configuration value')\n"
    "logging.getLogger('dagster').addFilter(NotTheInstanceYaml())\n"
    "from dagster._cli import main\n"
    "sys.argv[0] = 'dagster'\n"
    "sys.exit(main())\n"
)


def serve_reports(folder: Path, host: str, port: int):
    """Serve `folder` (the reports) over HTTP on host:port from a daemon thread; returns the server.
    Read-only static files, as the report pages are; the UI links them (settings.reports_url)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class QuietHandler(SimpleHTTPRequestHandler):
        def log_message(self, format, *args):  # noqa: A002 (the base class's name)
            pass

    folder.mkdir(parents=True, exist_ok=True)
    server = ThreadingHTTPServer((host, port), functools.partial(QuietHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, name="reports-http", daemon=True).start()
    return server


def cmd_ui(args: argparse.Namespace) -> int:
    import signal

    home = dagster_home(args.settings)
    cmd = [sys.executable, "-c", _DAGSTER_DEV, "dev", "-m", CODE_LOCATION_MODULE, "-h", args.host, "-p", str(args.port)]
    reports = None
    # the report links on asset pages point at settings.reports_url (baked into each materialization,
    # whichever process ran it): serve the reports there when it is a loopback address
    url = urllib.parse.urlsplit(args.settings.reports_url)
    if args.no_reports or url.scheme != "http" or url.hostname not in ("127.0.0.1", "localhost") or not url.port:
        _stderr(f"reports: not served here (the UI links {args.settings.reports_url or 'nothing'})")
    else:
        try:
            reports = serve_reports(args.settings.reports_dir, "127.0.0.1", url.port)  # loopback only, whatever --host
        except OSError as exc:
            _stderr(f"warning: cannot serve the reports on 127.0.0.1:{url.port} ({exc}); the UI's report links will not open")
        else:
            _stderr(f"reports: {args.settings.reports_url} (serving {args.settings.reports_dir})")
    _stderr(f"DAGSTER_HOME={home}; starting: dagster dev -m {CODE_LOCATION_MODULE} -h {args.host} -p {args.port}")
    watched = args.settings.watched_roots
    _stderr(
        "the drop sensor watches "
        + (", ".join(watched) if watched else "nothing (set CURATION_DROP_ROOT or CURATION_WATCH)")
        + ": each new folder (or S3 prefix) there is a capture drop"
    )
    # dagster dev and everything it starts (webserver, daemon, code server, run workers) in a
    # process group of their own, so that stopping `make ui` stops all of them
    proc = subprocess.Popen(cmd, start_new_session=True)  # inherits DAGSTER_HOME, set above
    stopping: list[float] = []  # when each stop signal came

    def stop(signum, frame):
        stopping.append(time.monotonic())
        try:
            os.killpg(proc.pid, signal.SIGINT if len(stopping) == 1 else signal.SIGTERM)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                code = proc.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                if stopping and time.monotonic() - stopping[0] > UI_STOP_SECONDS:
                    _stderr(f"curation: dagster dev did not stop within {UI_STOP_SECONDS:.0f}s; killing its processes")
                    os.killpg(proc.pid, signal.SIGKILL)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _kill_group_leftovers(proc.pid)
        if reports is not None:
            reports.shutdown()
    return 0 if stopping else code


UI_STOP_SECONDS = 10.0
"""How long `make ui` gives dagster dev to stop after Ctrl-C / SIGTERM before killing its processes."""


def _kill_group_leftovers(pgid: int) -> None:
    """Whatever of the UI's process group is still alive after dagster dev exited (a code server
    waiting for a run, an orphaned run worker) is killed: `make ui` leaves nothing behind."""
    import signal

    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def cmd_demo(args: argparse.Namespace) -> int:
    from curation_pipeline.demo_data import build_demo_drops, score_dedup

    started = time.perf_counter()
    root = args.settings.home / "demo"
    # the drops go where the sensor looks (the drop root), so the UI's sensor knows them as drops
    # already ingested; an S3 drop root leaves them under the demo's own folder
    drop_root = args.settings.drop_root.removeprefix("file://")
    drops_root = Path(drop_root) if drop_root and "://" not in drop_root else None
    demo = build_demo_drops(root, drops_root=drops_root)
    _stderr(f"built demo drops {', '.join(str(p) for p in demo.drops.values())}")
    truth = json.loads(demo.ground_truth.read_text())["files"]
    catalog = _catalog(args.settings)
    for key, path in demo.drops.items():
        catalog.register_drop(key, str(path))
        _stderr(f"ingesting {key} from {path}")
        _run_job(args, "ingest_drop", "capture_drops", key)
    # the near-duplicate thresholds calibrated on the demo's own images (the report shows the
    # curves; later dedups of the descriptor use them)
    _stderr("calibrating the near-duplicate thresholds on the demo images")
    calibration = _run_job(args, "calibrate_dedup", None, None).get("dedup_calibration", {})
    # the domain model: trained on the demo drops, then every drop embedded with it (selectable as
    # `--model domain`; the demo's selection stays on the project default, the semantic model)
    _stderr("training the domain model on the demo drops")
    trained = _run_job(args, "train_domain", None, None).get("domain_embedder", {})
    drops = _instance(args.settings).get_dynamic_partitions("capture_drops")
    _run_job(args, "domain_embed", "capture_drops", None, partition_range=(drops[0], drops[-1]))
    # the labels that came with demo-0001 (_labels/labels.csv, three of them flipped), reviewed
    # before the selection's report, which shows the suspects
    _stderr("reviewing the demo labels")
    _run_job(args, "review_labels", None, None, {"ops": {"label_review": {"config": {"name": "default"}}}})
    _run_job(
        args,
        "select_and_report",
        "selections",
        "demo",
        {"ops": {"curated_subset": {"config": {"budget": args.budget, "min_distance": 0.0}}}},
    )
    _run_job(
        args,
        "retrieve",
        "retrieval_queries",
        "demo",
        {"ops": {"retrieval_set": {"config": {"query_paths": [str(demo.query_image)], "k": 10}}}},
    )
    flips = json.loads(demo.ground_truth.read_text()).get("label_flips", {})
    suspects = [f"{x['drop_key']}/{x['object_key']}" for x in catalog.label_issues("default", 10)]

    counts = catalog.corpus_counts()
    groups = catalog.duplicate_groups()
    member_to_rep = {}
    for g in groups:
        rep = f"{g['representative']['drop_key']}/{g['representative']['object_key']}"
        for m in g["members"]:
            member_to_rep[f"{m['drop_key']}/{m['object_key']}"] = rep
    score = score_dedup(truth, member_to_rep)
    subset = catalog.selection_items("demo")
    top = catalog.retrieval_items("demo")
    report = args.settings.reports_dir / "demo" / "index.html"
    info = catalog.selection_info("demo")
    models = {
        "near_duplicates": "sha256, pHash, " + ", ".join(catalog.dedup_models()),
        "selection_map_clusters": info.model if info else None,
        "retrieval": (catalog.retrieval_config("demo") or {}).get("model"),
        "domain_model": trained.get("model"),
    }
    elapsed = time.perf_counter() - started
    summary = {
        "drops": counts["drops"],
        "images_seen": counts["images"],
        "corrupt_or_unsupported": counts["failed"],
        "exact_duplicates": counts["exact_duplicates"],
        "near_duplicates": counts["perceptual_duplicates"] + counts["semantic_duplicates"],
        "near_duplicates_perceptual": counts["perceptual_duplicates"],
        "near_duplicates_semantic": counts["semantic_duplicates"],
        "duplicate_groups": len(groups),
        "pairs_verified": catalog.dedup_pair_count(),
        "pairs_rejected_by_verifier": catalog.dedup_pair_count(accepted=False),
        "calibration": {
            k: calibration.get(k) for k in ("calibration_id", "proposal_min_cosine", "verifier_min_share", "proposal_recall")
        },
        "dedup_vs_planted": score,
        "label_flips_in_top_10_suspects": f"{sum(f'demo-0001/{k}' in suspects for k in flips)} of {len(flips)}",
        "subset_size": len(subset),
        "retrieval_top1": top[0]["object_key"] if top else None,
        "report": str(report),
        "models": models,
        "domain_training_seconds": trained.get("seconds"),
        "wall_seconds": round(elapsed, 1),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print("\ncuration demo summary")
        print(f"  drops ingested         {summary['drops']}")
        print(f"  images seen            {summary['images_seen']}")
        print(f"  corrupt / unsupported  {summary['corrupt_or_unsupported']}")
        print(f"  exact duplicates       {summary['exact_duplicates']}")
        print(
            f"  near duplicates        {summary['near_duplicates']} "
            f"(perceptual {summary['near_duplicates_perceptual']}, semantic {summary['near_duplicates_semantic']})"
        )
        print(
            f"  pixel verification     {summary['pairs_verified']} proposed pairs checked, "
            f"{summary['pairs_rejected_by_verifier']} rejected (look-alikes, not copies)"
        )
        cal = summary["calibration"]
        print(
            f"  calibration            #{cal['calibration_id']}: proposal cosine {cal['proposal_min_cosine']} "
            f"(proposes {cal['proposal_recall']} of synthetic edits), agreeing share >= {cal['verifier_min_share']}"
        )
        print(
            f"  vs planted             precision {score['precision']}, recall {score['recall']} "
            f"({score['correct']} of {score['planted_duplicates']} planted found, {score['detected_duplicates']} flagged)"
        )
        print(f"  subset size            {summary['subset_size']}")
        print(
            f"  label review           {summary['label_flips_in_top_10_suspects']} planted label flips among the top 10"
            " suspects (`curation labels review`)"
        )
        print(f"  retrieval top hit      {summary['retrieval_top1']}")
        print(f"  report                 {summary['report']}")
        print("  models")
        print(f"    near-duplicates      {models['near_duplicates']}")
        print(f"    selection, map       {models['selection_map_clusters']}")
        print(f"    retrieval            {models['retrieval']}")
        print(f"    domain model         {models['domain_model']} (trained in {trained.get('seconds')} s; --model domain)")
        print(f"  wall time              {summary['wall_seconds']} s")
        print(f"  UI                     make ui  (DAGSTER_HOME={dagster_home(args.settings)})")
    return 0


def quality_flags() -> list[str]:
    from curation_pipeline.core.quality import QUALITY_FLAGS

    return list(QUALITY_FLAGS)


def strategy_help() -> str:
    from curation_pipeline.steps.strategies import cli_help

    return cli_help()


MODEL_HELP = (
    "model to use: semantic (the pretrained backbone), domain (the trained domain model), descriptor "
    "(the near-duplicate descriptor) or a stored model id (default ${default}, normally semantic)"
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="curation", description="Image curation as Dagster assets.")
    p.add_argument(
        "--in-process",
        action="store_true",
        help="execute runs in this process (for debugging) instead of launching them through the instance like the UI",
    )
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="build sample drops from bundled photographs and run the whole graph")
    d.add_argument("--budget", type=int, default=30)
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_demo)

    i = sub.add_parser("ingest", help="register a drop and materialize manifest, embeddings and dedup for it")
    i.add_argument("source", help="drop folder (local path)")
    i.add_argument("--drop", required=True, help="partition key for the drop")
    i.add_argument(
        "--allow-shrink",
        action="store_true",
        help="let this re-ingest remove more than half of the drop's known objects (refused otherwise)",
    )
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_ingest)

    dr = sub.add_parser(
        "drop",
        help="manage drops: add KEY SOURCE (record where a drop is), remove KEY (the drop and all derived rows), list",
    )
    dr.add_argument("action", choices=["add", "remove", "list"])
    dr.add_argument("drop", nargs="?", help="the drop key (its partition)")
    dr.add_argument("source", nargs="?", help="add: the drop's folder or s3://bucket/prefix/")
    dr.add_argument("--ingest", action="store_true", help="add: ingest it now")
    dr.add_argument("--json", action="store_true")
    dr.set_defaults(func=cmd_drop)

    s = sub.add_parser(
        "select",
        help="materialize a named curated subset and its report",
        epilog=strategy_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--budget", type=int)
    s.add_argument("--strategy", action="append", help="name[:weight][,key=value...] (repeatable)")
    s.add_argument("--config", help="YAML file with the selection settings (budget, strategies, where, ...)")
    s.add_argument("--min-distance", type=float)
    s.add_argument("--name", default="default")
    s.add_argument("--drop", action="append", help="restrict to this drop (repeatable)")
    s.add_argument("--where", action="append", help="metadata filter, e.g. 'brightness>=0.2' (repeatable)")
    s.add_argument("--exclude", action="append", choices=quality_flags(), help="quality flag to leave out (repeatable)")
    s.add_argument("--seed", type=int)
    s.add_argument("--pool-cap", type=int, help="select from a seeded sample of at most this many candidates")
    s.add_argument("--annotations", help="CSV/Parquet of per-image values to load first (e.g. uncertainty)")
    s.add_argument("--key-column", default="uri", help="the annotations column naming each image")
    s.add_argument("--model", help=MODEL_HELP.format(default="CURATION_SELECTION_MODEL"))
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_select)

    an = sub.add_parser("annotate", help="load per-image values (predictions, labels, metadata) from CSV/Parquet")
    an.add_argument("file")
    an.add_argument("--key-column", default="uri", help="column naming the image: source URI, drop/object_key or key")
    an.add_argument("--column", action="append", help="load only this column (repeatable; default: all)")
    an.add_argument("--json", action="store_true")
    an.set_defaults(func=cmd_annotate)

    r = sub.add_parser("retrieve", help="materialize a retrieval set for images, a folder, an S3 prefix or text")
    r.add_argument("--query", action="append", help="query image file or folder (repeatable)")
    r.add_argument("--prefix", help="every image under this S3 prefix / folder URI is a query")
    r.add_argument("--image", action="append", help="a corpus image (source URI or drop/object_key) as query")
    r.add_argument("--text", action="append", help="text prompt (CLIP-family models)")
    r.add_argument("--k", type=int, default=20)
    r.add_argument("--min-similarity", type=float)
    r.add_argument("--drop", action="append", help="search only this drop (repeatable)")
    r.add_argument("--where", action="append", help="metadata filter (repeatable)")
    r.add_argument("--exclude", action="append", choices=quality_flags(), help="quality flag to leave out (repeatable)")
    r.add_argument("--export-to", help="also export the results (folder or s3://bucket/prefix/), like a subset")
    r.add_argument("--name", default="default")
    r.add_argument("--model", help=MODEL_HELP.format(default="CURATION_RETRIEVAL_MODEL"))
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_retrieve)

    td = sub.add_parser(
        "train-domain",
        help="train a new version of the domain model on the drops, then embed every drop with it",
    )
    td.add_argument("--dim", type=int, help="dimension of the domain vectors (32-128, default 64)")
    td.add_argument("--views", type=int, help="augmented views per image (default 4)")
    td.add_argument("--sample", type=int, help="train on at most this many images (default 2000)")
    td.add_argument("--epochs", type=int)
    td.add_argument("--seed", type=int)
    td.add_argument("--json", action="store_true")
    td.set_defaults(func=cmd_train_domain)

    ca = sub.add_parser(
        "calibrate",
        help="calibrate the near-duplicate thresholds on your own images (synthetic edits vs nearest neighbours)",
    )
    ca.add_argument("--sample", type=int, help="images to edit synthetically (default 200)")
    ca.add_argument("--seed", type=int)
    ca.add_argument("--json", action="store_true")
    ca.set_defaults(func=cmd_calibrate)

    mo = sub.add_parser("models", help="which model serves which job, and the stored domain model versions")
    mo.add_argument("--json", action="store_true")
    mo.set_defaults(func=cmd_models)

    ex = sub.add_parser("export", help="copy a selection's images and write its manifest (JSONL + Parquet)")
    ex.add_argument("--name", default="default", help="the selection to export")
    ex.add_argument("--destination", help="folder or s3://bucket/prefix/ (default $CURATION_EXPORT_ROOT)")
    ex.add_argument("--presign", type=int, help="add presigned URLs valid this many seconds (S3)")
    ex.add_argument("--no-copy", action="store_true", help="manifest only, pointing at the sources")
    ex.add_argument("--json", action="store_true")
    ex.set_defaults(func=cmd_export)

    dup = sub.add_parser("duplicates", help="print duplicate groups, representative first")
    dup.add_argument("--drop", action="append")
    dup.add_argument("--json", action="store_true")
    dup.set_defaults(func=cmd_duplicates)

    sb = sub.add_parser("subset", help="print a selection's images in rank order")
    sb.add_argument("--name", help="the selection (default: 'default' if it exists, else the most recent one)")
    sb.add_argument("--json", action="store_true")
    sb.set_defaults(func=cmd_subset)

    pr = sub.add_parser("protect", help="mark a drop as protected (e.g. a test set) for leakage checks")
    pr.add_argument("drop")
    pr.add_argument("--off", action="store_true", help="remove the protection")
    pr.set_defaults(func=cmd_protect)

    lk = sub.add_parser("leaks", help="images of other drops that duplicate images of protected drops")
    lk.add_argument("--drop", help="only leaks involving this drop")
    lk.add_argument("--json", action="store_true")
    lk.set_defaults(func=cmd_leaks)

    lb = sub.add_parser("labels", help="labels and predictions: import, list, review suspects, split, export")
    lsub = lb.add_subparsers(dest="labels_command", required=True)
    li = lsub.add_parser("import", help="import a COCO / YOLO / VOC / CSV-Parquet file as a new version of a drop's labels")
    li.add_argument("file", help="a .json (COCO), .csv/.tsv/.parquet, .xml or folder of .xml (VOC), or a YOLO folder")
    li.add_argument("--drop", required=True, help="the drop whose images the file labels")
    li.add_argument("--format", choices=["coco", "yolo", "voc", "csv"], help="default: from the file name")
    li.add_argument("--as", dest="kind", choices=["labels", "predictions"], default="labels")
    li.add_argument("--version", help="version name (default: v1, v2, ... ; an existing one is refused without --replace)")
    li.add_argument("--classes", help="YOLO/VOC class list (classes.txt or data.yaml; default: found beside the labels)")
    li.add_argument("--replace", action="store_true", help="replace the named --version if its content differs")
    li.add_argument("--no-embed", action="store_true", help="do not run object_embeddings for the drop afterwards")
    li.add_argument("--json", action="store_true")
    li.set_defaults(func=cmd_labels_import)
    ll = lsub.add_parser("list", help="label and prediction sets, by drop and version")
    ll.add_argument("--drop")
    ll.add_argument("--json", action="store_true")
    ll.set_defaults(func=cmd_labels_list)
    lr = lsub.add_parser("review", help="materialize label_review and print the top suspects")
    lr.add_argument("--name", default="default")
    lr.add_argument("--drop", action="append", help="only these drops (repeatable)")
    lr.add_argument("--version", help="review this label version (default: each drop's newest)")
    lr.add_argument("--k", type=int, default=10, help="neighbours per item")
    lr.add_argument("--limit", type=int, default=1000, help="suspects kept")
    lr.add_argument("--show", type=int, default=20, help="suspects printed")
    lr.add_argument("--json", action="store_true")
    lr.set_defaults(func=cmd_labels_review)
    lsp = lsub.add_parser("split", help="materialize dataset_split: train/val/test without duplicates across parts")
    lsp.add_argument("--name", default="default")
    lsp.add_argument("--fractions", default="train=0.8,val=0.1,test=0.1")
    lsp.add_argument("--drop", action="append", help="only these drops (repeatable)")
    lsp.add_argument("--version")
    lsp.add_argument("--seed", type=int, default=0)
    lsp.add_argument("--json", action="store_true")
    lsp.set_defaults(func=cmd_labels_split)
    lev = lsub.add_parser("evaluate", help="materialize subset_evaluation: probe accuracy of a selection vs random")
    lev.add_argument("--selection", required=True)
    lev.add_argument("--eval-drop", help="protected, labelled drop to score on (default: the only one)")
    lev.add_argument("--budget", type=int, action="append", help="extra budget to score (repeatable)")
    lev.add_argument("--seeds", type=int, default=5, help="random subsets per budget")
    lev.add_argument("--json", action="store_true")
    lev.set_defaults(func=cmd_labels_evaluate)
    le = lsub.add_parser("export", help="images with labels as COCO / YOLO, or Label Studio / CVAT tasks")
    le.add_argument("--format", choices=["coco", "yolo", "labelstudio", "cvat"], default="coco")
    le.add_argument("--selection", help="the images of a selection (curated_subset)")
    le.add_argument("--split", help="every part of a split (COCO: one file per part; YOLO: <part>.txt lists)")
    le.add_argument("--drop", action="append", help="the labelled images of these drops")
    le.add_argument("--review", help="a label review's suspects, as a Label Studio review task")
    le.add_argument("--as", dest="kind", choices=["labels", "predictions"], default="labels")
    le.add_argument("--version", help="label version (default: each drop's newest)")
    le.add_argument("--name", help="folder under the destination (default: from what is exported)")
    le.add_argument("--destination", help="export root: a folder or s3://bucket/prefix/ (default: CURATION_EXPORT_ROOT)")
    le.add_argument("--copy-images", action="store_true", help="copy the images beside the labels (images/<drop>/<key>)")
    le.add_argument("--json", action="store_true")
    le.set_defaults(func=cmd_labels_export)

    ob = sub.add_parser("objects", help="labelled objects: more objects like this one")
    osub = ob.add_subparsers(dest="objects_command", required=True)
    osim = osub.add_parser("similar", help="the objects nearest to an object's crop")
    osim.add_argument("--object", type=int, help="object id (from `curation labels review --json` or exports)")
    osim.add_argument("--image", help="an image file: the objects nearest to it, or to its --box")
    osim.add_argument("--box", help="x,y,w,h in pixels of --image: cut with context as object_embeddings cuts boxes")
    osim.add_argument("--k", type=int, default=20)
    osim.add_argument("--json", action="store_true")
    osim.set_defaults(func=cmd_objects_similar)

    db = sub.add_parser("db", help="the embedded database: print its URL or stop it")
    db.add_argument("action", choices=["url", "stop"])
    db.set_defaults(func=cmd_db)

    ui = sub.add_parser("ui", help="open the Dagster UI on the same instance and database")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=DEFAULT_UI_PORT, help="the UI's port")
    ui.add_argument(
        "--no-reports",
        action="store_true",
        help="do not serve the reports folder over HTTP (default: at CURATION_REPORTS_URL, http://127.0.0.1:3001/)",
    )
    ui.set_defaults(func=cmd_ui)
    return p


def main(argv: list[str] | None = None) -> int:
    import signal

    # Ctrl-C / SIGINT cancels the command's run, as documented, also when the command was started
    # from a shell's background job or a script, whose children inherit SIGINT as ignored (POSIX)
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.settings = Settings.from_env()  # every variable the project reads, read once
    except ValueError as exc:
        raise SystemExit(f"curation: {exc}") from None
    dagster_home(args.settings)
    try:
        with Runner(args.settings, in_process=args.in_process, command=args.command) as args.runner:
            return args.func(args)
    except (ValueError, LookupError) as exc:
        raise SystemExit(f"curation: {exc}") from exc


if __name__ == "__main__":
    sys.exit(main())
