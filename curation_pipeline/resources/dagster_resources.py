"""Dagster resources: configuration surfaces over the plain classes in this package."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal, Optional

import dagster as dg
from dagster_aws.s3 import S3Resource

from curation_pipeline.core.ids import validate_name

from .catalog import Catalog
from .database import curation_home, resolve_database_url
from .embedders import Embedder, OfflineEmbedder, OpenClipEmbedder, TransformersEmbedder
from .image_store import ImageStore, S3Settings, set_default_s3_settings, store_for


class DatabaseResource(dg.ConfigurableResource):
    """PostgreSQL + pgvector. `url` (or $DATABASE_URL) names any server; empty starts the embedded one."""

    url: Optional[str] = None

    def catalog(self) -> Catalog:
        return Catalog(resolve_database_url(self.url))


class CurationS3Resource(S3Resource):
    """dagster-aws's S3Resource (endpoint_url, region_name, profile_name, credentials, max_attempts)
    with botocore's retry mode selectable and `adaptive` by default: on 503 SlowDown the client
    slows itself down instead of hammering a throttled prefix."""

    retry_mode: str = "adaptive"
    """botocore retry mode: adaptive | standard | legacy."""

    def settings(self) -> S3Settings:
        return S3Settings(
            endpoint_url=self.endpoint_url or os.environ.get("CURATION_S3_ENDPOINT_URL") or None,
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
    """Resolves a drop key to its location and gives the store that reads it. A drop registered
    with an explicit source (CLI `ingest`, sensors) uses that; otherwise `<drop_root>/<drop_key>`.
    s3:// locations are read through `s3` (only List and Get: inputs are never written)."""

    drop_root: Optional[str] = None
    s3: CurationS3Resource
    drop_marker: str = "_SUCCESS"
    """The object a rig writes last to mark a drop complete (see the drop sensor); not an image, so
    the manifest leaves it out."""

    def setup_for_execution(self, context) -> None:
        set_default_s3_settings(self.s3.settings())

    def location_for(self, drop_key: str, registered_source: Optional[str]) -> str:
        validate_name(drop_key, "drop key")
        if registered_source:
            return registered_source
        root = self.drop_root or os.environ.get("CURATION_DROP_ROOT") or str(curation_home() / "drops")
        return str(Path(root) / drop_key) if "://" not in root else root.rstrip("/") + "/" + drop_key

    def store(self, location: str) -> ImageStore:
        return store_for(location, self.s3.settings())


OPEN_CLIP_DEFAULT = ("ViT-B-32", "laion2b_s34b_b79k")


@lru_cache(maxsize=4)
def _load_embedder(
    backend: str,
    model_name: str,
    pretrained: str,
    model_config_path: str,
    device: str,
    precision: str,
    channels_last: bool,
    compile_model: bool,
) -> Embedder:
    """One model per process and configuration: a multi-partition backfill run loads it once."""
    if backend == "offline":
        return OfflineEmbedder()
    torch_options = {"device": device, "precision": precision, "channels_last": channels_last, "compile_model": compile_model}
    if backend == "open_clip":
        return OpenClipEmbedder(model_name, pretrained or None, model_config_path=model_config_path or None, **torch_options)
    if backend == "transformers":
        return TransformersEmbedder(model_name, **torch_options)
    raise ValueError(f"unknown embedder backend {backend!r}: use offline, open_clip or transformers")


class EmbedderResource(dg.ConfigurableResource):
    """Which model embeds images, and how the input pipeline feeds it.

    backend: offline | open_clip | transformers.
    model_name: open_clip architecture (ViT-B-32) or a transformers hub id / local directory.
    pretrained: open_clip pretrained tag (laion2b_s34b_b79k) or a local checkpoint file."""

    backend: Literal["offline", "open_clip", "transformers"] = "offline"
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
        """(model_name, pretrained) after defaults: open_clip without a model_name means the
        production default, ViT-B-32 with the LAION-2B weights."""
        if self.backend == "open_clip" and not self.model_name:
            return OPEN_CLIP_DEFAULT
        return self.model_name, self.pretrained

    def load(self) -> Embedder:
        model_name, pretrained = self.resolved_model()
        if self.backend == "transformers" and not model_name:
            raise ValueError(
                "embedder backend 'transformers' needs model_name (a hub id such as "
                "facebook/dinov2-small, or a local directory saved with save_pretrained)"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        return _load_embedder(
            self.backend,
            model_name,
            pretrained,
            self.model_config_path,
            self.device,
            self.precision,
            self.channels_last,
            self.compile_model,
        )

    def embed_options(self):
        from curation_pipeline.steps.embed import EmbedOptions

        return EmbedOptions(
            batch_size=self.batch_size,
            workers=self.workers if self.workers > 0 else (os.cpu_count() or 1),
            draft=self.draft,
            storage=self.storage,
            loader=self.loader,
        )
