"""Dagster resources: configuration surfaces over the plain classes of resources/ (which know
nothing of Dagster). Each hands the steps plain objects: a Catalog, ImageStores, an Embedder and
its EmbedOptions. Their values come from the resource config alone (definitions.py fills it from
settings.py); nothing here reads the environment, so a step process, wherever it runs, reads
with the configuration of its run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional
from urllib.parse import quote

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import Field

from curation_pipeline.core.ids import validate_name
from curation_pipeline.resources.catalog import Catalog
from curation_pipeline.resources.database import resolve_database_url
from curation_pipeline.resources.embedders import EMBEDDER_BACKENDS, Embedder, LoadSpec, embedder_backend, load_embedder
from curation_pipeline.resources.image_store import ImageStore, ImageStores, S3Settings
from curation_pipeline.steps.embed import EmbedOptions
from curation_pipeline.steps.models import ProjectModels


class DatabaseResource(dg.ConfigurableResource):
    """PostgreSQL + pgvector. `url` names any server; empty: the embedded server in `embedded_pgdata`."""

    url: Optional[str] = None
    embedded_pgdata: Optional[str] = None
    """Data directory of the embedded server used when `url` is empty (default: $CURATION_HOME/pg)."""

    def catalog(self) -> Catalog:
        return Catalog(resolve_database_url(self.url, self.embedded_pgdata))


class CurationS3Resource(S3Resource):
    """dagster-aws's S3Resource (endpoint_url, region_name, profile_name, credentials, max_attempts)
    with botocore's retry mode selectable and `adaptive` by default: on 503 SlowDown the client
    slows itself down instead of hammering a throttled prefix."""

    retry_mode: str = "adaptive"
    """botocore retry mode: adaptive | standard | legacy."""

    def settings(self) -> S3Settings:
        return S3Settings(
            endpoint_url=self.endpoint_url or None,
            region_name=self.region_name,
            profile_name=self.profile_name,
            max_attempts=self.max_attempts,
            retry_mode=self.retry_mode,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token,
        )

    def get_client(self):
        return self.settings().client()


class ImageStoreResource(dg.ConfigurableResource):
    """Resolves a drop key to its location and gives the stores that read it. A drop registered
    with an explicit source (CLI `ingest`, sensors) uses that; otherwise `<drop_root>/<drop_key>`.
    s3:// locations are read through `s3` (only List and Get: inputs are never written). Steps
    that read images by URI (embeddings, report thumbnails, export sources, query prefixes) get
    `stores()` from the asset that calls them."""

    drop_root: Optional[str] = None
    """Where a drop without a registered source is read: <drop_root>/<drop key> (a folder or s3://...)."""
    s3: CurationS3Resource
    drop_marker: str = "_SUCCESS"
    """The object a rig writes last to mark a drop complete (see the drop sensor); not an image, so
    the manifest leaves it out."""
    watch: list[str] = []
    """The roots the drop sensor watches (default: the drop root). An export into one is refused:
    its copies would be ingested as a drop."""

    def watched_roots(self) -> tuple[str, ...]:
        return tuple(self.watch) or ((self.drop_root,) if self.drop_root else ())

    def location_for(self, drop_key: str, registered_source: Optional[str]) -> str:
        validate_name(drop_key, "drop key")
        if registered_source:
            return registered_source
        root = self.drop_root
        if not root:
            raise ValueError(f"drop {drop_key!r} has no registered source and no drop root is configured")
        return str(Path(root) / drop_key) if "://" not in root else root.rstrip("/") + "/" + drop_key

    def stores(self) -> ImageStores:
        """What steps read images through (local files, and S3 with this resource's settings). Handed
        to every step that reads, so each step process reads with this configuration."""
        return ImageStores(self.s3.settings())

    def store(self, location: str) -> ImageStore:
        return self.stores().for_location(location)


class OutputsResource(dg.ConfigurableResource):
    """Where results go when run config names no place: reports (curation_report, retrieval_page)
    and exports (curated_export)."""

    reports_dir: str
    """Reports go to <reports_dir>/<selection>/index.html, retrieval pages to <reports_dir>/retrievals/<name>/."""
    export_root: str
    """Default export destination (a folder or s3://bucket/prefix/); a selection goes to <export_root>/<selection>/."""
    reports_url: str = ""
    """Where reports_dir is served over HTTP (`curation ui` serves it at http://127.0.0.1:<UI port + 1>/): the
    report's asset page links <reports_url><selection>/index.html. Empty: no link, only the path."""

    def report_link(self, reports_dir: str, page: str) -> str | None:
        """The URL of `page` (a file under `reports_dir`), when reports_dir is the served folder."""
        if not self.reports_url:
            return None
        try:
            relative = Path(page).resolve().relative_to(Path(self.reports_dir).resolve())
        except ValueError:  # written elsewhere (a run config's output_dir): not served
            return None
        return self.reports_url.rstrip("/") + "/" + quote(relative.as_posix())


# The backend names, from the registry (resources/embedders.py EMBEDDER_BACKENDS): the config
# schema (Dagster UI dropdown, validation) follows it.
EmbedderBackendName = Literal[tuple(EMBEDDER_BACKENDS)]  # type: ignore[valid-type]


class EmbedderResource(dg.ConfigurableResource):
    """One model that embeds images, and how the input pipeline feeds it. The project has two (see
    steps/models.py): `embedder`, the semantic model (default: the pretrained backbone), and
    `descriptor`, the near-duplicate descriptor (default: offline). Ingest embeds with both.

    backend: one of the registered backends (resources/embedders.py EMBEDDER_BACKENDS).
    model_name: open_clip or timm architecture (ViT-B-32, convnext_tiny) or a transformers hub id / local directory.
    pretrained: open_clip pretrained tag (laion2b_s34b_b79k) or a local checkpoint file (open_clip, timm)."""

    backend: EmbedderBackendName = Field(  # type: ignore[valid-type]
        default="pretrained",
        description="Embedder backend. " + "; ".join(f"{b.name}: {b.summary}" for b in EMBEDDER_BACKENDS.values()),
    )
    model_name: str = ""
    pretrained: str = ""
    model_config_path: str = ""
    device: str = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    """auto: fp16 autocast on CUDA, fp32 elsewhere."""
    channels_last: bool = False
    compile_model: bool = False
    """torch.compile the image tower (worth it for long GPU runs; compile time is paid once per process)."""
    batch_size: int = 64
    workers: int = 0
    """Loader workers for read + decode + preprocess (0: one per CPU core)."""
    loader: Literal["threads", "processes"] = "threads"
    """threads (default; fastest measured on 2 cores) or processes (forkserver, no GIL between
    loaders: for many-core hosts whose loader is the bottleneck)."""
    draft: bool = True
    """Let libjpeg decode JPEGs at a reduced scale that still covers the model input."""
    storage: Literal["vector", "halfvec"] = "vector"
    """halfvec stores float16 vectors: half the table and index size."""

    def resolved_model(self) -> tuple[str, str]:
        """(model_name, pretrained) after the backend's defaults: open_clip without a model_name
        means the production default, ViT-B-32 with the LAION-2B weights."""
        default = embedder_backend(self.backend).default_model
        if default is not None and not self.model_name:
            return default
        return self.model_name, self.pretrained

    def load_spec(self) -> LoadSpec:
        model_name, pretrained = self.resolved_model()
        return LoadSpec(
            model_name=model_name,
            pretrained=pretrained,
            model_config_path=self.model_config_path,
            device=self.device,
            precision=self.precision,
            channels_last=self.channels_last,
            compile_model=self.compile_model,
        )

    def load(self) -> Embedder:
        """The configured embedder; one per process and configuration (a multi-partition backfill
        run loads it once). A backend missing what it needs says what to give."""
        spec = self.load_spec()
        embedder_backend(self.backend).check(spec)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        return load_embedder(self.backend, spec)

    def embed_options(self) -> EmbedOptions:
        return EmbedOptions(
            batch_size=self.batch_size,
            workers=self.workers if self.workers > 0 else (os.cpu_count() or 1),
            draft=self.draft,
            storage=self.storage,
            loader=self.loader,
        )


class ModelChoiceResource(dg.ConfigurableResource):
    """Which model serves which job by default: a role (semantic, descriptor, domain) or a stored
    model id. A selection's or retrieval's own `model` config wins. Near-duplicate candidates always
    use the descriptor (with pHash)."""

    selection: str = "semantic"
    """Model of selections: their pool vectors, typicality, clusters, the report's map and outliers."""
    retrieval: str = "semantic"
    """Model of image, folder and prefix retrieval."""


def project_models(embedder: EmbedderResource, descriptor: EmbedderResource) -> ProjectModels:
    """The project's models by role, from the two embedder resources (loaded on first use)."""
    return ProjectModels(
        semantic=embedder.load,
        semantic_options=embedder.embed_options(),
        descriptor=descriptor.load,
        descriptor_options=descriptor.embed_options(),
    )
