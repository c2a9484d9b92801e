"""Drops and their manifests: registering and removing drops, the manifest writer (one
transaction per drop, with the shrink guard), items lost when images go, and manifest lookups."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Iterator, Sequence

from psycopg import sql

from curation_pipeline.core.manifest import ManifestRecord

from .base import Repository, dict_rows, scalar
from .dedup import repair_orphaned_members

_IMAGE_COLUMNS = (
    "image_id",
    "drop_key",
    "object_key",
    "source_uri",
    "bytes",
    "etag",
    "sha256",
    "status",
    "error",
    "format",
    "width",
    "height",
    "mode",
    "exif_datetime",
    "camera_make",
    "camera_model",
    "phash",
    "phash_mirror",
    "blur_variance",
    "brightness",
    "contrast",
    "entropy",
    "aspect_ratio",
    "jpeg_quality",
    "last_modified",
)


class DropShrinkRefused(ValueError):
    """A re-listing of a drop would remove more of its known objects than allowed (an empty or
    unmounted folder, a wrong prefix). Raised inside the manifest transaction: nothing is written."""


@dataclass(frozen=True)
class ShrinkGuard:
    """How much of a drop's known objects one re-listing may remove. `max_removed_fraction`: more
    than this share gone (or all of them) is refused unless `allow_shrink`; 0.5 lets a drop lose up
    to half its objects (a cleanup) but stops an empty, unmounted or mistyped source."""

    allow_shrink: bool = False
    max_removed_fraction: float = 0.5

    def refusal(self, drop_key: str, known: int, removed: int, source: str | None) -> str | None:
        if self.allow_shrink or known == 0 or removed == 0:
            return None
        if removed < known and removed / known <= self.max_removed_fraction:
            return None
        where = f" from {source}" if source else ""
        return (
            f"drop {drop_key!r}: refusing to re-ingest{where}: the listing would remove {removed} of its "
            f"{known} known objects ({removed / known:.0%}, more than the allowed "
            f"{self.max_removed_fraction:.0%}), with their embeddings, duplicate links, selection and "
            "retrieval items. Nothing was changed. If the folder is empty or unmounted, fix the source and "
            "re-run; if the objects were deleted on purpose, re-run with --allow-shrink (run config "
            "raw_image_manifest.allow_shrink: true); to delete the whole drop, run `curation drop remove "
            f"{drop_key}`."
        )


DEFAULT_SHRINK_GUARD = ShrinkGuard()

_MANIFEST_LOCK = "SELECT pg_advisory_xact_lock(hashtext('manifest:' || %s))"


class ManifestWriter:
    """Buffers manifest rows and upserts them in chunks inside the caller's transaction."""

    _INSERT = (
        f"INSERT INTO images ({', '.join(_IMAGE_COLUMNS)}, ingested_at)"
        f" VALUES ({', '.join(['%s'] * len(_IMAGE_COLUMNS))}, now())"
        f" ON CONFLICT (image_id) DO UPDATE SET "
        + ", ".join(f"{c} = EXCLUDED.{c}" for c in _IMAGE_COLUMNS if c != "image_id")
        + ", ingested_at = now()"
    )

    def __init__(self, conn, drop_key: str, chunk: int = 500) -> None:
        self.conn = conn
        self.drop_key = drop_key
        self.chunk = chunk
        self.buffer: list[tuple] = []
        self.upserted = 0
        self.deleted_vanished = 0
        self.repaired_members = 0
        self.lost_items: dict[str, dict[str, int]] = {}

    def add(
        self, image_id: int, source_uri: str, r: ManifestRecord, etag: str | None, last_modified: datetime | None = None
    ) -> None:
        self.buffer.append(
            (
                image_id,
                self.drop_key,
                r.object_key,
                source_uri,
                r.bytes,
                etag,
                r.sha256,
                r.status,
                r.error,
                r.format,
                r.width,
                r.height,
                r.mode,
                r.exif_datetime,
                r.camera_make,
                r.camera_model,
                r.phash,
                r.phash_mirror,
                r.blur_variance,
                r.brightness,
                r.contrast,
                r.entropy,
                r.aspect_ratio,
                r.jpeg_quality,
                last_modified,
            )
        )
        if len(self.buffer) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        with self.conn.cursor() as cur:
            cur.executemany(self._INSERT, self.buffer)
            cur.executemany(
                "INSERT INTO manifest_seen (image_id) VALUES (%s) ON CONFLICT DO NOTHING", [(row[0],) for row in self.buffer]
            )
        self.upserted += len(self.buffer)
        self.buffer.clear()


def record_lost_items(conn, drop_key: str, reason: str, *, all_of_drop: bool = False) -> dict[str, dict[str, int]]:
    """Before a drop's unseen rows (or, `all_of_drop`, all its rows) are deleted, record the
    selection and retrieval items that point at them: the cascade would otherwise drop them in
    silence. Returns {"selection": {name: items lost}, "retrieval": {...}} (only non-empty)."""
    unseen = "" if all_of_drop else " AND NOT EXISTS (SELECT 1 FROM manifest_seen ms WHERE ms.image_id = i.image_id)"
    lost: dict[str, dict[str, int]] = {}
    for kind, table in (("selection", "selection_items"), ("retrieval", "retrieval_items")):
        rows = conn.execute(
            "INSERT INTO lost_items (kind, name, rank, image_id, drop_key, source_uri, reason)"
            f" SELECT %s, s.name, s.rank, s.image_id, i.drop_key, i.source_uri, %s FROM {table} s"
            " JOIN images i ON i.image_id = s.image_id WHERE i.drop_key = %s"
            + unseen
            + " ON CONFLICT (kind, name, image_id) DO UPDATE SET reason = EXCLUDED.reason, lost_at = now()"
            " RETURNING name",
            (kind, reason, drop_key),
        ).fetchall()
        counts: dict[str, int] = {}
        for (name,) in rows:
            counts[name] = counts.get(name, 0) + 1
        if counts:
            lost[kind] = counts
    return lost


def _drop_keys(conn) -> list[str]:
    return [r[0] for r in conn.execute("SELECT drop_key FROM drops ORDER BY ordinal").fetchall()]


class DropRepository(Repository):
    # ---- drops -------------------------------------------------------------------------------
    def register_drop(self, drop_key: str, source_uri: str | None) -> None:
        with self.connection() as conn:
            conn.execute(
                "INSERT INTO drops (drop_key, source_uri) VALUES (%s, %s) ON CONFLICT (drop_key) DO UPDATE"
                " SET source_uri = COALESCE(EXCLUDED.source_uri, drops.source_uri)",
                (drop_key, source_uri),
            )

    def drop_source(self, drop_key: str) -> str | None:
        with self.connection() as conn:
            row = conn.execute("SELECT source_uri FROM drops WHERE drop_key = %s", (drop_key,)).fetchone()
        return row[0] if row else None

    def remove_drop(self, drop_key: str) -> dict:
        """Delete a drop and everything derived from it (images, vectors, duplicate links,
        annotations) in one transaction. Selection and retrieval items that pointed at its images
        are recorded as lost; members elsewhere whose representative was in it become
        representatives. Raises LookupError for an unknown drop."""
        with self.connection() as conn, conn.transaction():
            conn.execute(_MANIFEST_LOCK, (drop_key,))
            if conn.execute("SELECT 1 FROM drops WHERE drop_key = %s", (drop_key,)).fetchone() is None:
                raise LookupError(f"no drop {drop_key!r}: known drops are {_drop_keys(conn)}")
            lost = record_lost_items(conn, drop_key, f"drop {drop_key} was removed", all_of_drop=True)
            # vectors, failures, duplicate links, annotations and set items go with the images (cascade)
            images = conn.execute("DELETE FROM images WHERE drop_key = %s", (drop_key,)).rowcount
            conn.execute("DELETE FROM drops WHERE drop_key = %s", (drop_key,))
            repaired = repair_orphaned_members(conn)
        return {"drop": drop_key, "images": images, "items_lost": lost, "repaired_members": repaired}

    def unknown_drops(self, drop_keys: Sequence[str]) -> list[str]:
        """The keys among `drop_keys` that name no registered drop."""
        with self.connection() as conn:
            known = set(_drop_keys(conn))
        return [k for k in drop_keys if k not in known]

    def known_drops(self) -> list[str]:
        with self.connection() as conn:
            return _drop_keys(conn)

    def drops_without_source(self, drop_keys: list[str]) -> list[str]:
        """Those of `drop_keys` that have no recorded source (unknown to the catalog, or registered
        without one), in the given order."""
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT k FROM unnest(%s::text[]) WITH ORDINALITY AS t(k, n) WHERE NOT EXISTS"
                " (SELECT 1 FROM drops d WHERE d.drop_key = t.k AND d.source_uri IS NOT NULL) ORDER BY n",
                (list(drop_keys),),
            ).fetchall()
        return [r[0] for r in rows]

    def drop_sources(self) -> dict[str, str]:
        """{drop_key: source URI} of every registered drop that has a source."""
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT drop_key, source_uri FROM drops WHERE source_uri IS NOT NULL ORDER BY ordinal"
            ).fetchall()
        return dict(rows)

    def drops_in_order(self, drop_keys: Sequence[str]) -> list[str]:
        """The given drops sorted by arrival (unregistered ones last, by key)."""
        with self.connection() as conn:
            order: dict[str, int] = dict(
                conn.execute("SELECT drop_key, ordinal FROM drops WHERE drop_key = ANY(%s)", (list(drop_keys),)).fetchall()
            )
        return sorted(drop_keys, key=lambda k: (order.get(k) is None, order.get(k, 0), k))

    # ---- protected drops (leakage checks read this flag) ------------------------------------------
    def set_protected(self, drop_key: str, protected: bool) -> None:
        with self.connection() as conn:
            updated = conn.execute("UPDATE drops SET protected = %s WHERE drop_key = %s", (protected, drop_key)).rowcount
        if not updated:
            raise LookupError(f"drop {drop_key!r} is not registered: ingest it first")

    def protected_drops(self) -> list[str]:
        with self.connection() as conn:
            return [r[0] for r in conn.execute("SELECT drop_key FROM drops WHERE protected ORDER BY ordinal").fetchall()]

    # ---- manifest ----------------------------------------------------------------------------
    @contextmanager
    def manifest_writer(
        self, drop_key: str, *, source_uri: str | None = None, shrink: ShrinkGuard = DEFAULT_SHRINK_GUARD
    ) -> Iterator[ManifestWriter]:
        """One transaction for a drop's whole manifest, written in chunks as objects are inspected
        (memory bounded by the chunk, not the drop). On exit: if the listing would remove more of the
        drop's known objects than `shrink` allows, DropShrinkRefused is raised and nothing is written;
        otherwise the drop's rows whose objects were not seen this time are deleted (selection and
        retrieval items that pointed at them are recorded as lost), orphaned dedup members elsewhere
        are repaired, `source_uri` becomes the drop's source, and everything commits at once; an
        exception rolls all of it back, leaving the previous manifest and source."""
        with self.connection() as conn, conn.transaction():
            # two runs of the same partition at once take turns here instead of interleaving rows
            conn.execute(_MANIFEST_LOCK, (drop_key,))
            conn.execute(
                "INSERT INTO drops (drop_key, source_uri) VALUES (%s, %s) ON CONFLICT DO NOTHING", (drop_key, source_uri)
            )
            known = scalar(conn.execute("SELECT count(*) FROM images WHERE drop_key = %s", (drop_key,)))
            conn.execute("CREATE TEMP TABLE manifest_seen (image_id bigint PRIMARY KEY) ON COMMIT DROP")
            writer = ManifestWriter(conn, drop_key)
            yield writer
            writer.flush()
            removed = scalar(
                conn.execute(
                    "SELECT count(*) FROM images i WHERE i.drop_key = %s"
                    " AND NOT EXISTS (SELECT 1 FROM manifest_seen s WHERE s.image_id = i.image_id)",
                    (drop_key,),
                )
            )
            refusal = shrink.refusal(drop_key, known, removed, source_uri)
            if refusal:
                raise DropShrinkRefused(refusal)
            writer.lost_items = (
                record_lost_items(conn, drop_key, f"object no longer in drop {drop_key} when it was re-ingested")
                if removed
                else {}
            )
            if source_uri is not None:
                conn.execute("UPDATE drops SET source_uri = %s WHERE drop_key = %s", (source_uri, drop_key))
            writer.deleted_vanished = conn.execute(
                "DELETE FROM images i WHERE i.drop_key = %s"
                " AND NOT EXISTS (SELECT 1 FROM manifest_seen s WHERE s.image_id = i.image_id)",
                (drop_key,),
            ).rowcount
            writer.repaired_members = repair_orphaned_members(conn) if writer.deleted_vanished else 0

    def manifest_summary(self, drop_key: str) -> dict:
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT status, count(*), count(DISTINCT object_key) FROM images WHERE drop_key = %s GROUP BY status",
                (drop_key,),
            ).fetchall()
            dup_keys = scalar(
                conn.execute("SELECT count(*) - count(DISTINCT object_key) FROM images WHERE drop_key = %s", (drop_key,))
            )
        return {"by_status": {s: n for s, n, _ in rows}, "total": sum(n for _, n, _ in rows), "duplicate_keys": dup_keys}

    def images_by_id(self, image_ids: Iterable[int]) -> dict[int, dict]:
        """Manifest facts and every quality signal (filters.quality_signal_columns) of these images."""
        from curation_pipeline.resources.filters import quality_signal_columns

        ids = [int(i) for i in image_ids]
        with self.connection() as conn:
            cur = conn.execute(
                sql.SQL(
                    "SELECT i.image_id, i.drop_key, i.object_key, i.source_uri, i.sha256, i.status, i.error, i.format, {}"
                    " FROM images i WHERE i.image_id = ANY(%s)"
                ).format(quality_signal_columns()),
                (ids,),
            )
            return {row["image_id"]: row for row in dict_rows(cur)}

    def failed_images(self, drop_key: str | None = None) -> list[dict]:
        with self.connection() as conn:
            cur = conn.execute(
                "SELECT drop_key, object_key, source_uri, status, error, bytes FROM images"
                " WHERE status <> 'ok' AND (%s::text IS NULL OR drop_key = %s) ORDER BY drop_key, object_key",
                (drop_key, drop_key),
            )
            return dict_rows(cur)

    def image_ids_for_refs(self, refs: Sequence[str]) -> dict[str, int]:
        """Map references (source URI, `drop/object_key`, or an object key unique in the corpus) to
        image ids; references that match nothing or more than one image are left out."""
        refs = [str(r) for r in refs]
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT r.ref, i.image_id FROM unnest(%s::text[]) AS r(ref) JOIN images i"
                " ON i.source_uri = r.ref OR i.drop_key || '/' || i.object_key = r.ref OR i.object_key = r.ref",
                (refs,),
            ).fetchall()
        found: dict[str, set[int]] = {}
        for ref, image_id in rows:
            found.setdefault(ref, set()).add(int(image_id))
        return {ref: next(iter(ids)) for ref, ids in found.items() if len(ids) == 1}
