"""Duplicate clusters: the lock that serialises dedup across drops, the candidates and published
representatives dedup reads, its replace-per-drop write, and what the checks, the report and the
leakage view read back. Domain rules (representative sharpness, the mirror pHash radius) come
from core/, never from SQL written here."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
from psycopg.types.json import Jsonb

from curation_pipeline.core.dedup import mirror_max_hamming
from curation_pipeline.core.quality import QualitySignals

from .base import Repository, dict_rows, one_row, scalar
from .records import DedupCalibration, DedupSettings, KeptImage

_DEDUP_LOCK_ID = 0x6375726164  # "curad"


def repair_orphaned_members(conn) -> int:
    """Members whose representative vanished or stopped being a representative (an earlier drop
    was re-ingested or re-deduplicated) become representatives of themselves: nothing is lost
    from selections, and re-running their drop's dedup finds their new match."""
    return conn.execute(
        "UPDATE dedup_members m SET representative_id = m.image_id, is_representative = true, tier = NULL,"
        " similarity = 1.0 WHERE NOT m.is_representative AND NOT EXISTS ("
        "  SELECT 1 FROM dedup_members r WHERE r.image_id = m.representative_id AND r.is_representative)"
    ).rowcount


def _kept_image(row) -> KeptImage:
    (image_id, drop_key, ordinal, sha256, phash, pixels, object_key, mirror, blur, brightness, contrast, entropy, aspect) = row[
        :13
    ]
    source_uri, exif, quality, modified = row[13:]
    signals = QualitySignals(
        blur_variance=float(blur), brightness=brightness, contrast=contrast, entropy=entropy, aspect_ratio=aspect
    )
    return KeptImage(
        int(image_id),
        drop_key,
        int(ordinal),
        sha256,
        int(phash),
        int(pixels),
        signals.sharpness_score,
        object_key,
        int(mirror),
        source_uri,
        exif,
        None if quality is None else int(quality),
        modified,
    )


PAIR_COLUMNS = (
    "image_a",
    "image_b",
    "tier",
    "similarity",
    "mirrored",
    "accepted",
    "reason",
    "inliers",
    "matches",
    "coverage",
    "agreement",
    "correlation",
    "colour_difference",
    "scale",
    "rotation_deg",
)


class DedupRepository(Repository):
    @contextmanager
    def dedup_lock(self) -> Iterator[None]:
        """Serialises dedup across drops (a session advisory lock held for one drop's dedup): two
        drops deduplicated at the same time would otherwise each miss the other. The lock's
        connection is held until the unlock; were the unlock ever skipped, returning the
        connection to the pool releases it (database._reset_pooled)."""
        with self.connection() as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (_DEDUP_LOCK_ID,))
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_DEDUP_LOCK_ID,))

    def deduplicated_drops(self, exclude: str) -> list[str]:
        """Drops whose dedup has run (whatever their arrival order), except `exclude`."""
        with self.connection() as conn:
            return [
                r[0]
                for r in conn.execute(
                    "SELECT d.drop_key FROM drops d WHERE d.drop_key <> %s"
                    " AND EXISTS (SELECT 1 FROM dedup_members m WHERE m.drop_key = d.drop_key) ORDER BY d.ordinal",
                    (exclude,),
                ).fetchall()
            ]

    # ---- what dedup reads --------------------------------------------------------------------
    def dedup_candidates(self, drop_key: str, model: str) -> list[KeptImage]:
        """The drop's own valid images that have a vector for `model`."""
        return self._image_query(
            "JOIN embeddings e ON e.image_id = i.image_id AND e.model = %s WHERE i.drop_key = %s AND i.status = 'ok'",
            (model, drop_key),
        )

    def kept_images(self, image_ids: Sequence[int]) -> list[KeptImage]:
        """Of the given images, the published representatives (any model, any drop)."""
        return self._image_query(
            "JOIN dedup_members m ON m.image_id = i.image_id AND m.is_representative WHERE i.image_id = ANY(%s)",
            (list(map(int, image_ids)),),
        )

    def candidate_images(self, image_ids: Sequence[int]) -> list[KeptImage]:
        """The given images (any status of dedup) with what dedup and calibration read of them."""
        return self._image_query("WHERE i.image_id = ANY(%s)", (list(map(int, image_ids)),))

    def kept_images_with_hashes(self, drop_keys: Sequence[str], sha256s: Sequence[str]) -> list[KeptImage]:
        """Representatives in the given drops whose content hash is one of `sha256s` (exact tier)."""
        return self._image_query(
            "JOIN dedup_members m ON m.image_id = i.image_id AND m.is_representative"
            " WHERE i.drop_key = ANY(%s) AND i.sha256 = ANY(%s)",
            (list(drop_keys), list(sha256s)),
        )

    def _image_query(self, where: str, params: tuple, *, order: bool = True) -> list[KeptImage]:
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT i.image_id, i.drop_key, d.ordinal, i.sha256, coalesce(i.phash, 0),"
                " coalesce(i.width, 0)::bigint * coalesce(i.height, 0), i.object_key, coalesce(i.phash_mirror, i.phash, 0),"
                " coalesce(i.blur_variance, 0), i.brightness, i.contrast, i.entropy, i.aspect_ratio,"
                " i.source_uri, i.exif_datetime, i.jpeg_quality, i.last_modified"
                " FROM images i JOIN drops d ON d.drop_key = i.drop_key " + where + (" ORDER BY i.image_id" if order else ""),
                params,
            ).fetchall()
        return [_kept_image(r) for r in rows]

    def kept_phashes(self, drop_keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(image_ids, phash) int64 arrays of the representatives in the given drops (8 bytes each:
        a million images is 16 MB, so the perceptual tier scans them in numpy)."""
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT i.image_id, i.phash FROM images i"
                " JOIN dedup_members m ON m.image_id = i.image_id AND m.is_representative"
                " WHERE i.drop_key = ANY(%s) AND i.phash IS NOT NULL",
                (list(drop_keys),),
            ).fetchall()
        return np.asarray([r[0] for r in rows], dtype=np.int64), np.asarray([r[1] for r in rows], dtype=np.int64)

    def representatives_of(self, image_ids: Sequence[int]) -> dict[int, int]:
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT image_id, representative_id FROM dedup_members WHERE image_id = ANY(%s)",
                (list(map(int, image_ids)),),
            ).fetchall()
        return {int(a): int(b) for a, b in rows}

    # ---- what dedup writes -------------------------------------------------------------------
    def replace_dedup(
        self,
        drop_key: str,
        model: str,
        rows: Sequence[tuple[int, int, bool, str | None, float]],
        *,
        max_hamming: int,
        min_cosine: float,
        pairs: Sequence[dict] = (),
        verifier: dict | None = None,
    ) -> dict:
        """rows: (image_id, representative_id, is_representative, tier, similarity). Replaces the
        drop's rows and its verified pairs (`pairs`: dicts with image_a, image_b, tier, similarity
        and the verdict's fields, see core.verify.PairVerdict), records the thresholds and verifier
        settings they were made with, and repairs other drops' members whose representative
        stopped being one, in one transaction."""
        with self.connection() as conn, conn.transaction():
            conn.execute("DELETE FROM dedup_members WHERE drop_key = %s", (drop_key,))
            conn.execute("DELETE FROM dedup_pairs WHERE drop_key = %s", (drop_key,))
            conn.execute(
                "INSERT INTO dedup_settings (drop_key, model, max_hamming, min_cosine, verifier)"
                " VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (drop_key) DO UPDATE SET model = EXCLUDED.model, max_hamming = EXCLUDED.max_hamming,"
                " min_cosine = EXCLUDED.min_cosine, verifier = EXCLUDED.verifier, deduplicated_at = now()",
                (drop_key, model, int(max_hamming), float(min_cosine), None if verifier is None else Jsonb(verifier)),
            )
            if pairs:
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO dedup_pairs (drop_key, "
                        + ", ".join(PAIR_COLUMNS)
                        + ") VALUES (%s"
                        + ", %s" * len(PAIR_COLUMNS)
                        + ")",
                        [(drop_key, *(p.get(c) for c in PAIR_COLUMNS)) for p in pairs],
                    )
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO dedup_members (image_id, drop_key, model, representative_id, is_representative, tier,"
                    " similarity) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    [(i, drop_key, model, r, rep, t, s) for i, r, rep, t, s in rows],
                )
            repaired = repair_orphaned_members(conn)
        return {"rows": len(rows), "repaired_members": repaired}

    # ---- calibration ---------------------------------------------------------------------------
    def calibration_sample(self, model: str, size: int, seed: int = 0) -> list[KeptImage]:
        """A seeded sample of valid images with a `model` vector, over every drop: kept images
        (representatives) where dedup has run, any embedded image otherwise."""
        return self._image_query(
            "JOIN embeddings e ON e.image_id = i.image_id AND e.model = %s"
            " LEFT JOIN dedup_members m ON m.image_id = i.image_id"
            " WHERE i.status = 'ok' AND coalesce(m.is_representative, true)"
            " ORDER BY md5(i.image_id::text || %s::text) LIMIT %s",
            (model, str(seed), int(size)),
            order=False,
        )

    def save_dedup_calibration(self, record: dict) -> int:
        """Store one calibration (the fields of DedupCalibration but the id and time); its id."""
        with self.connection() as conn, conn.transaction():
            row = conn.execute(
                "INSERT INTO dedup_calibrations (model, sample_size, target_recall, target_precision,"
                " proposal_min_cosine, proposal_max_hamming, verifier, summary, curve)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING calibration_id",
                (
                    record["model"],
                    int(record["sample_size"]),
                    float(record["target_recall"]),
                    float(record["target_precision"]),
                    float(record["proposal_min_cosine"]),
                    int(record["proposal_max_hamming"]),
                    Jsonb(record["verifier"]),
                    Jsonb(record["summary"]),
                    Jsonb(record["curve"]),
                ),
            ).fetchone()
        if row is None:  # INSERT ... RETURNING always returns the row
            raise RuntimeError("dedup calibration was not stored")
        return int(row[0])

    def dedup_calibration(self, model: str) -> DedupCalibration | None:
        """The latest calibration for `model`, if any."""
        with self.connection() as conn:
            row = conn.execute(
                "SELECT calibration_id, model, created_at, sample_size, target_recall, target_precision,"
                " proposal_min_cosine, proposal_max_hamming, verifier, summary, curve FROM dedup_calibrations"
                " WHERE model = %s ORDER BY calibration_id DESC LIMIT 1",
                (model,),
            ).fetchone()
        return None if row is None else DedupCalibration(*row)

    # ---- what checks, reports and the leakage view read --------------------------------------
    def dedup_models(self) -> list[str]:
        """The models whose vectors near-duplicate candidates came from (one, unless the project
        changed its descriptor and not every drop was deduplicated again)."""
        with self.connection() as conn:
            return [r[0] for r in conn.execute("SELECT DISTINCT model FROM dedup_members ORDER BY model").fetchall()]

    def dedup_settings(self) -> list[DedupSettings]:
        """The thresholds each drop was last deduplicated with, in arrival order."""
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT s.drop_key, s.model, s.max_hamming, s.min_cosine, s.deduplicated_at, s.verifier FROM dedup_settings s"
                " JOIN drops d ON d.drop_key = s.drop_key ORDER BY d.ordinal"
            ).fetchall()
        return [DedupSettings(r[0], r[1], int(r[2]), float(r[3]), r[4], r[5]) for r in rows]

    def dedup_pair_count(self, drop_keys: Sequence[str] | None = None, *, accepted: bool | None = None) -> int:
        keys = list(drop_keys) if drop_keys is not None else None
        with self.connection() as conn:
            return int(
                scalar(
                    conn.execute(
                        "SELECT count(*) FROM dedup_pairs WHERE (%s::text[] IS NULL OR drop_key = ANY(%s::text[]))"
                        " AND (%s::boolean IS NULL OR accepted = %s)",
                        (keys, keys, accepted, accepted),
                    )
                )
            )

    def dedup_pairs(
        self, drop_keys: Sequence[str] | None = None, *, accepted: bool | None = None, limit: int | None = None
    ) -> list[dict]:
        """The pairs proposed for the given drops (all drops: None) and the verifier's verdicts,
        with both images' keys and URIs; rejected pairs with the most convincing proposal first."""
        keys = list(drop_keys) if drop_keys is not None else None
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT p.drop_key, " + ", ".join("p." + c for c in PAIR_COLUMNS) + ","
                " a.object_key, a.source_uri, b.object_key, b.source_uri FROM dedup_pairs p"
                " JOIN images a ON a.image_id = p.image_a JOIN images b ON b.image_id = p.image_b"
                " WHERE (%s::text[] IS NULL OR p.drop_key = ANY(%s::text[])) AND (%s::boolean IS NULL OR p.accepted = %s)"
                " ORDER BY p.similarity DESC, p.image_a, p.image_b LIMIT %s",
                (keys, keys, accepted, accepted, limit),
            ).fetchall()
        cols = ["drop_key", *PAIR_COLUMNS, "key_a", "uri_a", "key_b", "uri_b"]
        return [dict(zip(cols, r)) for r in rows]

    def duplicate_groups(self, drop_keys: Sequence[str] | None = None) -> list[dict]:
        """Groups with at least one duplicate: representative first, members by similarity."""
        keys = list(drop_keys) if drop_keys is not None else None
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT m.representative_id, m.image_id, m.tier, m.similarity, i.source_uri, i.object_key, i.drop_key"
                " FROM dedup_members m JOIN images i ON i.image_id = m.image_id"
                " WHERE NOT m.is_representative AND (%s::text[] IS NULL OR m.drop_key = ANY(%s::text[]))"
                " ORDER BY m.representative_id, m.similarity DESC, i.object_key",
                (keys, keys),
            ).fetchall()
            reps = {int(r[0]) for r in rows}
            rep_rows = conn.execute(
                "SELECT image_id, source_uri, object_key, drop_key FROM images WHERE image_id = ANY(%s)", (list(reps),)
            ).fetchall()
        rep_info = {
            int(r[0]): {"image_id": int(r[0]), "source_uri": r[1], "object_key": r[2], "drop_key": r[3]} for r in rep_rows
        }
        groups: dict[int, dict] = {}
        for rep, image_id, tier, sim, uri, key, drop in rows:
            group = groups.setdefault(int(rep), {"representative": rep_info[int(rep)], "members": []})
            group["members"].append(
                {
                    "image_id": int(image_id),
                    "tier": tier,
                    "similarity": float(sim),
                    "source_uri": uri,
                    "object_key": key,
                    "drop_key": drop,
                }
            )
        return sorted(groups.values(), key=lambda g: (-len(g["members"]), g["representative"]["source_uri"]))

    def dedup_violations(self, drop_key: str, model: str, min_cosine: float, max_hamming: int) -> dict:
        """What the dedup checks assert on, recomputed from the stored images and vectors (not from
        the similarities dedup recorded): embedded valid images without a row; members whose
        representative is missing or no longer a representative; members whose recomputed
        similarity to their representative fails their tier's threshold (a mirrored pHash match
        within core's mirror radius counts, as in clustering)."""
        vec_m = "coalesce(me.embedding, me.embedding_half::vector)"
        vec_r = "coalesce(re.embedding, re.embedding_half::vector)"
        mirror_radius = mirror_max_hamming(max_hamming)
        with self.connection() as conn:
            unassigned = scalar(
                conn.execute(
                    "SELECT count(*) FROM images i JOIN embeddings e ON e.image_id = i.image_id AND e.model = %s"
                    " LEFT JOIN dedup_members m ON m.image_id = i.image_id"
                    " WHERE i.drop_key = %s AND i.status = 'ok' AND m.image_id IS NULL",
                    (model, drop_key),
                )
            )
            orphaned, weak = one_row(
                conn.execute(
                    "SELECT count(*) FILTER (WHERE r.image_id IS NULL),"
                    " count(*) FILTER (WHERE r.image_id IS NOT NULL AND ("
                    "   (m.tier = 'exact' AND mi.sha256 <> ri.sha256)"
                    "   OR (m.tier = 'perceptual' AND bit_count(int8send(mi.phash # ri.phash)) > %s"
                    "       AND bit_count(int8send(coalesce(mi.phash_mirror, mi.phash) # ri.phash)) > %s"
                    "       AND bit_count(int8send(mi.phash # coalesce(ri.phash_mirror, ri.phash))) > %s)"
                    "   OR (m.tier = 'semantic' AND (me.image_id IS NULL OR re.image_id IS NULL"
                    "       OR 1 - (" + vec_m + " <=> " + vec_r + ") < %s)"
                    # a flip's similarity is its mirrored vector's: the verified mirrored pair vouches
                    "       AND NOT EXISTS (SELECT 1 FROM dedup_pairs p WHERE p.accepted AND p.mirrored"
                    "           AND p.image_a = least(m.image_id, m.representative_id)"
                    "           AND p.image_b = greatest(m.image_id, m.representative_id)))))"
                    " FROM dedup_members m"
                    " JOIN images mi ON mi.image_id = m.image_id"
                    " LEFT JOIN dedup_members r ON r.image_id = m.representative_id AND r.is_representative"
                    " LEFT JOIN images ri ON ri.image_id = m.representative_id"
                    " LEFT JOIN embeddings me ON me.image_id = m.image_id AND me.model = m.model"
                    " LEFT JOIN embeddings re ON re.image_id = m.representative_id AND re.model = m.model"
                    " WHERE m.drop_key = %s AND NOT m.is_representative",
                    (max_hamming, mirror_radius, mirror_radius, min_cosine - 1e-4, drop_key),
                )
            )
            self_reps = scalar(
                conn.execute(
                    "SELECT count(*) FROM dedup_members WHERE drop_key = %s AND is_representative"
                    " AND representative_id <> image_id",
                    (drop_key,),
                )
            )
        return {
            "unassigned": int(unassigned),
            "orphaned_members": int(orphaned),
            "below_threshold": int(weak),
            "malformed_representatives": int(self_reps),
        }

    def leaks(self, drop_key: str | None = None) -> list[dict]:
        """Images of unprotected drops in the same duplicate cluster as an image of a protected drop
        (a test set leaking into training data). With drop_key: leaks involving that drop."""
        with self.connection() as conn:
            cur = conn.execute(
                "WITH c AS (SELECT m.image_id, m.representative_id, m.tier, m.similarity, i.drop_key, i.object_key,"
                "   i.source_uri, d.protected FROM dedup_members m JOIN images i ON i.image_id = m.image_id"
                "   JOIN drops d ON d.drop_key = i.drop_key)"
                " SELECT DISTINCT ON (leak.image_id, prot.image_id)"
                "   leak.drop_key, leak.object_key, leak.source_uri, prot.drop_key AS protected_drop,"
                "   prot.object_key AS protected_key, prot.source_uri AS protected_uri, leak.tier, prot.tier AS protected_tier"
                " FROM c leak JOIN c prot ON prot.representative_id = leak.representative_id"
                "   AND prot.protected AND NOT leak.protected"
                " WHERE %s::text IS NULL OR leak.drop_key = %s OR prot.drop_key = %s"
                " ORDER BY leak.image_id, prot.image_id",
                (drop_key, drop_key, drop_key),
            )
            return dict_rows(cur)
