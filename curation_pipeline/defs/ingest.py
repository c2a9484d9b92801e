"""raw_image_manifest and image_embeddings: per capture drop."""


import dagster as dg

from curation_pipeline.resources.dagster_resources import (
    DatabaseResource,
    EmbedderResource,
    ImageStoreResource,
)
from curation_pipeline.steps.embed import embed_drop
from curation_pipeline.steps.manifest import build_manifest

from .partitions import capture_drops

GROUP = "ingest"


@dg.asset(
    partitions_def=capture_drops,
    group_name=GROUP,
    kinds={"python", "pgvector"},
    owners=["team:curation"],
    description="One row per object of the drop: bytes, format, size, EXIF time and camera, sha256, pHash, "
                "quality signals; corrupt or unsupported objects get a status and a readable error.",
    check_specs=[
        dg.AssetCheckSpec("drop_not_empty", asset="raw_image_manifest", blocking=True,
                          description="The drop listed at least one object."),
        dg.AssetCheckSpec("every_object_recorded_once", asset="raw_image_manifest", blocking=True,
                          description="Rows == objects listed, no duplicate keys."),
    ],
)
def raw_image_manifest(context: dg.AssetExecutionContext, database: DatabaseResource,
                       image_store: ImageStoreResource) -> dg.MaterializeResult:
    drop_key = context.partition_key
    catalog = database.catalog()
    location = image_store.location_for(drop_key, catalog.drop_source(drop_key))
    context.log.info(f"building manifest of drop {drop_key} from {location}")
    stats = build_manifest(catalog, image_store.store(location), location, drop_key, logger=context.log)
    return dg.MaterializeResult(
        metadata={
            **{k: v for k, v in stats.items() if k != "by_status"},
            "location": location,
            "by_status": dg.MetadataValue.json(stats["by_status"]),
        },
        check_results=[
            dg.AssetCheckResult(check_name="drop_not_empty", passed=stats["objects_listed"] > 0,
                                metadata={"objects_listed": stats["objects_listed"]}),
            dg.AssetCheckResult(
                check_name="every_object_recorded_once",
                passed=stats["rows"] == stats["objects_listed"] and stats["duplicate_keys"] == 0,
                metadata={"rows": stats["rows"], "objects_listed": stats["objects_listed"],
                          "duplicate_keys": stats["duplicate_keys"]},
            ),
        ],
    )


@dg.asset(
    partitions_def=capture_drops,
    group_name=GROUP,
    kinds={"pytorch", "pgvector"},
    owners=["team:curation"],
    deps=[raw_image_manifest],
    io_manager_key="pgvector_io_manager",
    pool="gpu",
    description="One L2-normalised vector per valid image and model, stored in pgvector (HNSW, cosine). "
                "Identical content already embedded by the same model is reused, not recomputed.",
    check_specs=[
        dg.AssetCheckSpec("vectors_match_model", asset="image_embeddings", blocking=True,
                          description="Every vector has the model's dimension and unit norm."),
        dg.AssetCheckSpec("every_valid_image_embedded", asset="image_embeddings",
                          description="Valid images that could not be embedded (WARN)."),
    ],
)
def image_embeddings(context: dg.AssetExecutionContext, database: DatabaseResource, embedder: EmbedderResource):
    model = embedder.load()
    emb, stats = embed_drop(database.catalog(), model, context.partition_key, logger=context.log)
    yield dg.Output(emb, metadata={k: v for k, v in stats.items() if v is not None})
    yield dg.AssetCheckResult(
        check_name="vectors_match_model",
        passed=emb.dim == model.dim and stats["max_norm_error"] < 1e-3,
        metadata={"dim": emb.dim, "model_dim": model.dim, "max_norm_error": stats["max_norm_error"]},
    )
    yield dg.AssetCheckResult(
        check_name="every_valid_image_embedded",
        passed=stats["not_embedded"] == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"valid_images": stats["valid_images"], "not_embedded": stats["not_embedded"]},
    )
