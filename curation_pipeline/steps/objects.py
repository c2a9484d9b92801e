"""Object embeddings: every box of a drop's current label and prediction sets, cut with context
(core/objects.py) and embedded by the image model, so objects are searched, checked and selected
like images. Each image is read once for all its boxes; an image that cannot be read costs its
boxes, counted and logged, never the drop. The drop's object vectors are replaced in one
transaction, streamed in batches (memory: one batch of crops)."""

from __future__ import annotations

import io
import logging
import time
from collections import defaultdict

from PIL import Image

from curation_pipeline.core import progress
from curation_pipeline.core.decode import DecodedImage, DecodeFailure, decode_image
from curation_pipeline.core.objects import DEFAULT_CROP, CropSettings, context_crop, crop_object, is_tiny
from curation_pipeline.resources.catalog import Catalog
from curation_pipeline.resources.embedders import Embedder
from curation_pipeline.resources.image_store import DEFAULT_STORES, ImageStores
from curation_pipeline.steps.embed import DEFAULT_OPTIONS, model_id_for

log = logging.getLogger(__name__)


def work_box(box, decoded: DecodedImage) -> tuple[float, float, float, float]:
    """A box in the image's full-resolution pixels, in the pixels of the decoded image (a huge
    image comes back reduced)."""
    sx, sy = decoded.image.width / decoded.width, decoded.image.height / decoded.height
    x, y, w, h = box
    return (x * sx, y * sy, w * sx, h * sy)


def crop_image(data: bytes, box, crop: CropSettings = DEFAULT_CROP) -> Image.Image:
    """The object's crop with context from an image's bytes, exactly as object_embeddings cuts it."""
    decoded = decode_image(data)
    if isinstance(decoded, DecodeFailure):
        raise ValueError(decoded.error)
    return crop_object(decoded.image, work_box(box, decoded), crop)


def crop_jpeg(data: bytes, box, crop: CropSettings = DEFAULT_CROP) -> bytes:
    """The object's crop with context, as JPEG (for thumbnails)."""
    buf = io.BytesIO()
    crop_image(data, box, crop).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def drop_boxes(catalog: Catalog, drop_key: str) -> list[dict]:
    """The boxes of the drop's current label and prediction sets (image-level labels have none)."""
    set_ids = catalog.current_set_ids("labels", [drop_key]) + catalog.current_set_ids("predictions", [drop_key])
    return [o for o in catalog.label_objects(set_ids) if o["box"] is not None]


def embed_objects(
    catalog: Catalog,
    embedder: Embedder,
    drop_key: str,
    *,
    stores: ImageStores = DEFAULT_STORES,
    crop: CropSettings = DEFAULT_CROP,
    batch_size: int = 64,
    logger: logging.Logger = log,
) -> dict:
    started = time.perf_counter()
    model = model_id_for(embedder, DEFAULT_OPTIONS)
    catalog.register_model(model, embedder.backend, embedder.dim, embedder.description, preprocess=embedder.preprocess_version)
    boxes = drop_boxes(catalog, drop_key)
    by_image: dict[int, list[dict]] = defaultdict(list)
    for o in boxes:
        by_image[o["image_id"]].append(o)
    failed: list[tuple[str, str]] = []
    done = tiny = 0
    with catalog.object_embedding_writer(drop_key, model) as write:
        pending: list[tuple[int, object, bool, tuple]] = []

        def flush() -> None:
            nonlocal done
            if not pending:
                return
            vectors = embedder.embed_images([p[1] for p in pending])
            write([(oid, vec, t, c) for (oid, _, t, c), vec in zip(pending, vectors)])
            done += len(pending)
            pending.clear()
            progress.report(f"objects {drop_key}", done, len(boxes))

        for objs in by_image.values():
            first = objs[0]
            try:
                decoded = decode_image(stores.read_uri(first["source_uri"]))
            except (OSError, ValueError) as exc:
                decoded = DecodeFailure("unreadable", str(exc))
            if isinstance(decoded, DecodeFailure):
                failed.append((first["object_key"], decoded.error))
                continue
            for o in objs:
                box = work_box(o["box"], decoded)
                small = is_tiny(o["box"], crop)
                tiny += small
                pending.append(
                    (
                        o["object_id"],
                        crop_object(decoded.image, box, crop),
                        small,
                        context_crop(o["box"], (decoded.width, decoded.height), crop),
                    )
                )
                if len(pending) >= batch_size:
                    flush()
        flush()
    for key, why in failed[:20]:
        logger.warning("drop %s: boxes of %s not embedded: %s", drop_key, key, why)
    elapsed = time.perf_counter() - started
    return {
        "model": model,
        "boxes": len(boxes),
        "embedded": done,
        "tiny": tiny,
        "images": len(by_image),
        "images_unreadable": len(failed),
        "seconds": round(elapsed, 3),
        "objects_per_second": round(done / elapsed, 1) if elapsed > 0 and done else None,
    }
