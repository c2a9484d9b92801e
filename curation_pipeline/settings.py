"""Every environment variable the project reads, in one place.

`Settings.from_env()` reads them once; the CLI and `definitions.py` build everything else from the
result (resources, sensors, the executor), and the layers below take plain values. Nothing under
`core/`, `steps/` or `resources/` reads `os.environ` for the project's own variables (boto3's
credential chain and libraries' own variables are theirs).

Why not `dg.EnvVar` for these: Dagster resolves an EnvVar when a run starts and fails the run when
the variable is unset, while every variable here is optional with a default (the embedded
database, the offline embedder, AWS's own endpoint). Secrets are not read here at all: S3
credentials come from boto3's chain, and a deployment that wants them in resource config can use
`dg.EnvVar("AWS_SECRET_ACCESS_KEY")` on `CurationS3Resource` directly."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

COMPLETION_RULES = ("marker", "quiet", "marker_or_quiet")
EXECUTORS = ("", "multiprocess", "in_process", "k8s")
DEFAULT_UI_PORT = 3000
DEFAULT_REPORTS_URL = f"http://127.0.0.1:{DEFAULT_UI_PORT + 1}/"
"""`curation ui` serves the reports folder on the port after the UI's, on the loopback interface only."""


@dataclass(frozen=True)
class Settings:
    home: Path
    """CURATION_HOME: local state (embedded database, Dagster instance, reports). Default ./.curation."""
    database_url: str | None = None
    """DATABASE_URL: any PostgreSQL with pgvector. Unset: the embedded server under <home>/pg."""
    drop_root: str = ""
    """CURATION_DROP_ROOT: where a drop without a registered source is read (<root>/<drop key>). Default <home>/drops."""
    export_root: str = ""
    """CURATION_EXPORT_ROOT: default export destination (folder or s3://bucket/prefix/). Default <home>/exports."""
    reports_url: str = ""
    """CURATION_REPORTS_URL: where the reports folder is served over HTTP, for the link on each report's
    asset page. Default http://127.0.0.1:3001/, what `curation ui` (`make ui`) serves next to the UI."""
    watch: tuple[str, ...] = ()
    """CURATION_WATCH: comma-separated S3 prefixes or folders the drop sensor watches. Empty: the drop
    root (see `watched_roots`)."""
    drop_marker: str = "_SUCCESS"
    """CURATION_DROP_MARKER: the object a rig writes last to mark a drop complete."""
    drop_completion: str = "marker_or_quiet"
    """CURATION_DROP_COMPLETION: marker | quiet | marker_or_quiet."""
    drop_quiet_seconds: float = 600.0
    """CURATION_DROP_QUIET_SECONDS: a drop with no change for this long counts as complete."""
    sensors_running: bool = False
    """CURATION_SENSOR_RUNNING=1: the drop sensor and the automation start switched on."""
    s3_endpoint_url: str | None = None
    """CURATION_S3_ENDPOINT_URL (else boto3's AWS_ENDPOINT_URL): an S3-compatible server such as MinIO."""
    s3_region: str | None = None
    """CURATION_S3_REGION."""
    s3_profile: str | None = None
    """CURATION_S3_PROFILE: a profile of the AWS config files."""
    embedder_backend: str = "pretrained"
    """CURATION_EMBEDDER: the semantic model's embedder backend (resources/embedders.py
    EMBEDDER_BACKENDS). Default: the ImageNet-pretrained backbone that installs with the package."""
    embedder_model: str = ""
    """CURATION_EMBEDDER_MODEL: the semantic backend's model name."""
    embedder_pretrained: str = ""
    """CURATION_EMBEDDER_PRETRAINED: pretrained tag or local checkpoint."""
    descriptor_backend: str = "offline"
    """CURATION_DESCRIPTOR: the near-duplicate descriptor's embedder backend (default: the offline
    colour/layout descriptor; near-duplicates are about pixels, not meaning)."""
    selection_model: str = "semantic"
    """CURATION_SELECTION_MODEL: default model of selections: semantic, domain, descriptor or a model id."""
    retrieval_model: str = "semantic"
    """CURATION_RETRIEVAL_MODEL: default model of image/folder retrieval: semantic, domain, descriptor or a model id."""
    executor: str = ""
    """CURATION_EXECUTOR: in_process (default: every step of a run in the run's process), multiprocess
    (a process per step), or k8s (one pod per step)."""
    dagster_home: Path | None = None
    """DAGSTER_HOME: Dagster's instance folder. The CLI defaults it to <home>/dagster_home (and sets
    the variable for Dagster, which reads it itself)."""

    @property
    def watched_roots(self) -> tuple[str, ...]:
        """What the drop sensor watches, and where exports are refused: CURATION_WATCH, else the drop root."""
        return self.watch or ((self.drop_root,) if self.drop_root else ())

    @property
    def embedded_pgdata(self) -> Path:
        """The embedded PostgreSQL's data directory (used when no DATABASE_URL is given)."""
        return self.home / "pg"

    @property
    def reports_dir(self) -> Path:
        """Where reports are written by default: <home>/reports/<selection>/index.html."""
        return self.home / "reports"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        home = Path(get("CURATION_HOME") or ".curation").resolve()
        drop_root = get("CURATION_DROP_ROOT") or str(home / "drops")
        completion = get("CURATION_DROP_COMPLETION") or "marker_or_quiet"
        if completion not in COMPLETION_RULES:
            raise ValueError(f"CURATION_DROP_COMPLETION={completion!r}: use one of {', '.join(COMPLETION_RULES)}")
        executor = get("CURATION_EXECUTOR") or ""
        if executor not in EXECUTORS:
            raise ValueError(f"CURATION_EXECUTOR={executor!r}: use one of {', '.join(e for e in EXECUTORS if e)}")
        quiet = get("CURATION_DROP_QUIET_SECONDS") or "600"
        try:
            quiet_seconds = float(quiet)
        except ValueError:
            raise ValueError(f"CURATION_DROP_QUIET_SECONDS={quiet!r}: give a number of seconds") from None
        return cls(
            home=home,
            database_url=get("DATABASE_URL"),
            drop_root=drop_root,
            export_root=get("CURATION_EXPORT_ROOT") or str(home / "exports"),
            reports_url=get("CURATION_REPORTS_URL") or DEFAULT_REPORTS_URL,
            watch=tuple(r.strip() for r in (get("CURATION_WATCH") or "").split(",") if r.strip()),
            drop_marker=get("CURATION_DROP_MARKER") or "_SUCCESS",
            drop_completion=completion,
            drop_quiet_seconds=quiet_seconds,
            sensors_running=get("CURATION_SENSOR_RUNNING") == "1",
            s3_endpoint_url=get("CURATION_S3_ENDPOINT_URL") or get("AWS_ENDPOINT_URL"),
            s3_region=get("CURATION_S3_REGION"),
            s3_profile=get("CURATION_S3_PROFILE"),
            embedder_backend=get("CURATION_EMBEDDER") or "pretrained",
            embedder_model=get("CURATION_EMBEDDER_MODEL") or "",
            embedder_pretrained=get("CURATION_EMBEDDER_PRETRAINED") or "",
            descriptor_backend=get("CURATION_DESCRIPTOR") or "offline",
            selection_model=get("CURATION_SELECTION_MODEL") or "semantic",
            retrieval_model=get("CURATION_RETRIEVAL_MODEL") or "semantic",
            executor=executor,
            dagster_home=Path(dagster_home).resolve() if (dagster_home := get("DAGSTER_HOME")) else None,
        )
