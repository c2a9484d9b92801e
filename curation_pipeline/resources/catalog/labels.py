"""Labels and predictions: versioned label sets per drop and their objects (boxes or image-level
classes), label-quality reviews (ranked suspects) and named splits.

A label set is never overwritten silently: a new import is a new version; naming an existing
version with different content is refused unless the caller asks to replace it; the same content
again is a no-op. Each import, review or split is written in one transaction."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from psycopg import sql

from .base import Repository, dict_rows, one_row, wire_vector
from .embeddings import model_info
from .search import hnsw_lookup_settings


def object_index_name(model: str) -> str:
    return "object_embeddings_hnsw_" + hashlib.sha1(model.encode("utf-8")).hexdigest()[:16]


def _ensure_object_index(conn, model: str) -> None:
    """The model's partial HNSW index (cosine) on object vectors, created on first use; as for
    image vectors, CREATE INDEX takes no bind parameters: the model is a quoted literal."""
    dim = model_info(conn, model).dim
    conn.execute(
        sql.SQL(
            "CREATE INDEX IF NOT EXISTS {name} ON object_embeddings USING hnsw ((embedding::vector({dim})) vector_cosine_ops)"
            " WHERE model = {model}"
        ).format(name=sql.Identifier(object_index_name(model)), dim=sql.Literal(int(dim)), model=sql.Literal(model))
    )


class LabelVersionExists(ValueError):
    pass


_OBJECT_COLUMNS = (
    "o.object_id, o.image_id, i.drop_key, i.object_key, i.source_uri, i.width, i.height, o.class_name,"
    " o.x, o.y, o.w, o.h, o.score, o.probs, o.ref, o.set_id, s.version, s.kind"
)


def _object_row(row: dict) -> dict:
    box = None if row["x"] is None else (row["x"], row["y"], row["w"], row["h"])
    out = {k: v for k, v in row.items() if k not in ("x", "y", "w", "h")}
    out["box"] = box
    return out


class LabelRepository(Repository):
    # ---- label sets ---------------------------------------------------------------------------
    def drop_image_index(self, drop_key: str) -> list[dict]:
        """Every manifest row of a drop with what matching a label file needs."""
        with self.connection() as conn:
            cur = conn.execute(
                "SELECT image_id, object_key, width, height, status FROM images WHERE drop_key = %s ORDER BY object_key",
                (drop_key,),
            )
            return dict_rows(cur)

    def save_label_set(
        self,
        *,
        drop_key: str,
        kind: str,
        version: str | None,
        fmt: str,
        source: str,
        sha256: str,
        classes: Sequence[str],
        objects: Sequence[tuple],
        stats: dict[str, Any],
        replace: bool = False,
    ) -> dict:
        """Store a label set with its objects, rows of (image_id, class_name, x, y, w, h, score,
        probs, ref). Returns {set_id, version, created}; `created` is False when the newest set (or
        the named version) already holds this content."""
        with self.connection() as conn, conn.transaction():
            # one importer per drop at a time: version numbers and the no-op check stay exact
            if conn.execute("SELECT 1 FROM drops WHERE drop_key = %s FOR UPDATE", (drop_key,)).fetchone() is None:
                raise LookupError(f"no drop {drop_key!r}: ingest it (or `curation drop add`) before importing its labels")
            existing = dict_rows(
                conn.execute(
                    "SELECT set_id, version, sha256 FROM label_sets WHERE drop_key = %s AND kind = %s ORDER BY set_id",
                    (drop_key, kind),
                )
            )
            by_version = {r["version"]: r for r in existing}
            if version is None:
                if existing and existing[-1]["sha256"] == sha256:
                    return {"set_id": existing[-1]["set_id"], "version": existing[-1]["version"], "created": False}
                n = len(existing) + 1
                while f"v{n}" in by_version:
                    n += 1
                version = f"v{n}"
            elif version in by_version:
                old = by_version[version]
                if old["sha256"] == sha256:
                    return {"set_id": old["set_id"], "version": version, "created": False}
                if not replace:
                    raise LabelVersionExists(
                        f"drop {drop_key!r} already has {kind} version {version!r} with other content: "
                        "import under a new --version (or none, for the next number), or pass --replace"
                    )
                conn.execute("DELETE FROM label_sets WHERE set_id = %s", (old["set_id"],))
            set_id = one_row(
                conn.execute(
                    "INSERT INTO label_sets (drop_key, kind, version, format, source, sha256, classes, stats)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING set_id",
                    (drop_key, kind, version, fmt, source, sha256, list(classes), json.dumps(stats)),
                )
            )[0]
            with conn.cursor().copy(
                "COPY label_objects (set_id, image_id, class_name, x, y, w, h, score, probs, ref) FROM STDIN"
            ) as copy:
                for row in objects:
                    copy.write_row((set_id, *row))
        return {"set_id": set_id, "version": version, "created": True}

    def label_sets(self, drop_key: str | None = None) -> list[dict]:
        with self.connection() as conn:
            cur = conn.execute(
                "SELECT s.set_id, s.drop_key, s.kind, s.version, s.format, s.source, s.classes, s.stats, s.created_at,"
                " (SELECT count(*) FROM label_objects o WHERE o.set_id = s.set_id) AS objects"
                " FROM label_sets s WHERE %s::text IS NULL OR s.drop_key = %s ORDER BY s.drop_key, s.kind, s.set_id",
                (drop_key, drop_key),
            )
            return dict_rows(cur)

    def current_set_ids(self, kind: str, drop_keys: Sequence[str] | None = None, version: str | None = None) -> list[int]:
        """The set of `kind` each drop uses: the named version, else its newest."""
        keys = list(drop_keys) if drop_keys is not None else None
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT DISTINCT ON (drop_key) set_id FROM label_sets WHERE kind = %s"
                " AND (%s::text[] IS NULL OR drop_key = ANY(%s)) AND (%s::text IS NULL OR version = %s)"
                " ORDER BY drop_key, set_id DESC",
                (kind, keys, keys, version, version),
            ).fetchall()
        return [r[0] for r in rows]

    def label_objects(self, set_ids: Sequence[int], *, valid_only: bool = True) -> list[dict]:
        """Objects of these sets (image-level labels have box None), by image then object id."""
        with self.connection() as conn:
            cur = conn.execute(
                f"SELECT {_OBJECT_COLUMNS} FROM label_objects o JOIN label_sets s ON s.set_id = o.set_id"
                " JOIN images i ON i.image_id = o.image_id WHERE o.set_id = ANY(%s)"
                + (" AND i.status = 'ok'" if valid_only else "")
                + " ORDER BY o.image_id, o.object_id",
                (list(set_ids),),
            )
            return [_object_row(r) for r in dict_rows(cur)]

    def label_classes(self, set_ids: Sequence[int]) -> list[str]:
        """The union of these sets' class lists, in first-seen order."""
        with self.connection() as conn:
            rows = conn.execute("SELECT classes FROM label_sets WHERE set_id = ANY(%s) ORDER BY set_id", (list(set_ids),))
            out: list[str] = []
            for (classes,) in rows.fetchall():
                out += [c for c in classes if c not in out]
        return out

    def images_with_labels(self, set_ids: Sequence[int]) -> list[dict]:
        """Valid images of the drops these sets belong to, with sizes (an image a label set does
        not mention is unlabelled, not "empty")."""
        with self.connection() as conn:
            cur = conn.execute(
                "SELECT i.image_id, i.drop_key, i.object_key, i.source_uri, i.width, i.height,"
                " EXISTS (SELECT 1 FROM label_objects o WHERE o.image_id = i.image_id AND o.set_id = ANY(%s)) AS labelled"
                " FROM images i WHERE i.status = 'ok'"
                " AND i.drop_key IN (SELECT drop_key FROM label_sets WHERE set_id = ANY(%s))"
                " ORDER BY i.image_id",
                (list(set_ids), list(set_ids)),
            )
            return dict_rows(cur)

    def duplicate_group_of(self, image_ids: Sequence[int]) -> dict[int, int]:
        """{image_id: the representative of its duplicate group} (itself when it has none)."""
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT t.id, coalesce(m.representative_id, t.id) FROM unnest(%s::bigint[]) AS t(id)"
                " LEFT JOIN dedup_members m ON m.image_id = t.id",
                ([int(i) for i in image_ids],),
            ).fetchall()
        return {int(a): int(b) for a, b in rows}

    # ---- reviews (ranked label suspects) ------------------------------------------------------
    def replace_label_review(self, name: str, config: dict, stats: dict, issues: Sequence[dict]) -> int:
        with self.connection() as conn, conn.transaction():
            conn.execute("DELETE FROM label_reviews WHERE name = %s", (name,))
            conn.execute(
                "INSERT INTO label_reviews (name, config, stats) VALUES (%s, %s, %s)",
                (name, json.dumps(config), json.dumps(stats, default=str)),
            )
            with conn.cursor().copy(
                "COPY label_issues (name, rank, image_id, object_id, kind, method, score, given, suggested, reason,"
                " neighbours) FROM STDIN"
            ) as copy:
                for rank, x in enumerate(issues, start=1):
                    copy.write_row(
                        (
                            name,
                            rank,
                            x["image_id"],
                            x.get("object_id"),
                            x["kind"],
                            x["method"],
                            float(x["score"]),
                            x.get("given"),
                            x.get("suggested"),
                            x["reason"],
                            json.dumps(x.get("neighbours")) if x.get("neighbours") is not None else None,
                        )
                    )
        return len(issues)

    def label_review(self, name: str) -> dict | None:
        with self.connection() as conn:
            rows = dict_rows(conn.execute("SELECT name, config, stats, created_at FROM label_reviews WHERE name = %s", (name,)))
        return rows[0] if rows else None

    def label_issues(self, name: str, limit: int | None = None) -> list[dict]:
        with self.connection() as conn:
            cur = conn.execute(
                "SELECT l.rank, l.image_id, l.object_id, l.kind, l.method, l.score, l.given, l.suggested, l.reason,"
                " l.neighbours, i.drop_key, i.object_key, i.source_uri, o.x, o.y, o.w, o.h"
                " FROM label_issues l JOIN images i ON i.image_id = l.image_id"
                " LEFT JOIN label_objects o ON o.object_id = l.object_id"
                " WHERE l.name = %s ORDER BY l.rank LIMIT %s",
                (name, limit),
            )
            return [_object_row(r) for r in dict_rows(cur)]

    # ---- splits -------------------------------------------------------------------------------
    def replace_split(self, name: str, config: dict, stats: dict, parts: dict[int, str]) -> int:
        with self.connection() as conn, conn.transaction():
            conn.execute("DELETE FROM splits WHERE name = %s", (name,))
            conn.execute(
                "INSERT INTO splits (name, config, stats) VALUES (%s, %s, %s)",
                (name, json.dumps(config), json.dumps(stats, default=str)),
            )
            with conn.cursor().copy("COPY split_items (name, image_id, part) FROM STDIN") as copy:
                for image_id, part in parts.items():
                    copy.write_row((name, int(image_id), part))
        return len(parts)

    def split_info(self, name: str) -> dict | None:
        with self.connection() as conn:
            rows = dict_rows(conn.execute("SELECT name, config, stats, created_at FROM splits WHERE name = %s", (name,)))
        return rows[0] if rows else None

    def split_parts(self, name: str) -> dict[int, str]:
        with self.connection() as conn:
            rows = conn.execute("SELECT image_id, part FROM split_items WHERE name = %s", (name,)).fetchall()
        return {int(a): b for a, b in rows}

    def split_leaks(self, name: str) -> list[dict]:
        """Pairs of one duplicate group (the dedup step's clusters: exact, perceptual, semantic)
        that sit in different parts of the split."""
        with self.connection() as conn:
            cur = conn.execute(
                "WITH s AS (SELECT si.image_id, si.part, coalesce(m.representative_id, si.image_id) AS grp"
                "   FROM split_items si LEFT JOIN dedup_members m ON m.image_id = si.image_id WHERE si.name = %s)"
                " SELECT a.image_id AS image_id, a.part, b.image_id AS other_id, b.part AS other_part"
                " FROM s a JOIN s b ON a.grp = b.grp AND a.image_id < b.image_id AND a.part <> b.part"
                " ORDER BY a.image_id, b.image_id",
                (name,),
            )
            return dict_rows(cur)

    # ---- object vectors ---------------------------------------------------------------------
    @contextmanager
    def object_embedding_writer(self, drop_key: str, model: str) -> Iterator[Callable[[Sequence[tuple]], None]]:
        """Replace the drop's object vectors of `model` in one transaction: yields write(rows) for
        rows of (object_id, vector, tiny, crop); nothing is visible until the block ends, and an
        error leaves the previous vectors."""
        with self.connection() as conn, conn.transaction():
            _ensure_object_index(conn, model)
            conn.execute("DELETE FROM object_embeddings WHERE drop_key = %s AND model = %s", (drop_key, model))

            def write(rows: Sequence[tuple]) -> None:
                with conn.cursor().copy(
                    "COPY object_embeddings (object_id, model, drop_key, embedding, tiny, crop) FROM STDIN"
                ) as copy:
                    for object_id, vector, tiny, crop in rows:
                        copy.write_row((object_id, model, drop_key, wire_vector(vector, "vector"), tiny, list(crop)))

            yield write

    def object_vectors(self, set_ids: Sequence[int], model: str) -> tuple[np.ndarray, np.ndarray]:
        """(object ids (n,) int64, vectors (n, dim) float32) of these sets' boxes for `model`."""
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT e.object_id, e.embedding FROM object_embeddings e JOIN label_objects o ON o.object_id = e.object_id"
                " WHERE o.set_id = ANY(%s) AND e.model = %s ORDER BY e.object_id",
                (list(set_ids), model),
            ).fetchall()
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        return np.asarray([r[0] for r in rows], np.int64), np.stack([r[1].to_numpy() for r in rows]).astype(np.float32)

    def object_embedding_count(self, drop_key: str, model: str) -> dict:
        with self.connection() as conn:
            row = one_row(
                conn.execute(
                    "SELECT count(*), count(*) FILTER (WHERE tiny) FROM object_embeddings WHERE drop_key = %s AND model = %s",
                    (drop_key, model),
                )
            )
        return {"objects": int(row[0]), "tiny": int(row[1])}

    def nearest_objects(self, vector: np.ndarray, model: str, k: int = 20, *, exclude: int | None = None) -> list[dict]:
        """The k objects nearest to `vector` (cosine) through the model's HNSW index on object
        vectors, with their image and class, most similar first."""
        with self.connection() as conn, conn.transaction():
            dim = model_info(conn, model).dim
            hnsw_lookup_settings(conn, ef_search=max(100, 2 * k), k=k)
            cur = conn.execute(
                sql.SQL(
                    f"SELECT {_OBJECT_COLUMNS}, 1 - (e.embedding::vector({{dim}}) <=> %s::vector({{dim}})) AS similarity"
                    " FROM object_embeddings e JOIN label_objects o ON o.object_id = e.object_id"
                    " JOIN label_sets s ON s.set_id = o.set_id JOIN images i ON i.image_id = o.image_id"
                    " WHERE e.model = {model} AND o.object_id IS DISTINCT FROM %s"
                    " ORDER BY e.embedding::vector({dim}) <=> %s::vector({dim}) LIMIT %s"
                ).format(dim=sql.Literal(dim), model=sql.Literal(model)),
                (wire_vector(vector, "vector"), exclude, wire_vector(vector, "vector"), k),
            )
            found = [_object_row(r) for r in dict_rows(cur)]
        return sorted(found, key=lambda r: -r["similarity"])  # a relaxed_order scan may return near-ties out of order

    def objects_by_id(self, object_ids: Sequence[int]) -> dict[int, tuple | None]:
        """{object_id: its box (x, y, w, h), None for an image-level label}."""
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT object_id, x, y, w, h FROM label_objects WHERE object_id = ANY(%s)", ([int(i) for i in object_ids],)
            ).fetchall()
        return {int(r[0]): (None if r[1] is None else (r[1], r[2], r[3], r[4])) for r in rows}

    def image_classes_for(self, image_ids: Sequence[int], *, min_score: float = 0.5) -> dict[int, list[str]]:
        """{image_id: the classes of its objects} from each drop's newest labels; images without
        labels take their newest predictions at `min_score` or more (what a model thinks is there
        is what an unlabelled pool can be balanced by). Images with neither are left out."""
        with self.connection() as conn:
            rows = conn.execute(
                "WITH cur AS (SELECT DISTINCT ON (drop_key, kind) set_id, kind FROM label_sets"
                "   ORDER BY drop_key, kind, set_id DESC)"
                " SELECT o.image_id, cur.kind, o.class_name, o.score FROM label_objects o JOIN cur ON cur.set_id = o.set_id"
                " WHERE o.image_id = ANY(%s) ORDER BY o.image_id, o.object_id",
                ([int(i) for i in image_ids],),
            ).fetchall()
        labels: dict[int, list[str]] = {}
        predicted: dict[int, list[str]] = {}
        for image_id, kind, cls, score in rows:
            if kind == "labels":
                labels.setdefault(int(image_id), []).append(cls)
            elif score is None or score >= min_score:
                predicted.setdefault(int(image_id), []).append(cls)
        return {**predicted, **labels}

    # ---- subset evaluations -------------------------------------------------------------------
    def save_subset_evaluation(self, selection: str, eval_drop: str, model: str, result: dict) -> None:
        with self.connection() as conn:
            conn.execute(
                "INSERT INTO subset_evaluations (selection, eval_drop, model, result) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (selection, eval_drop) DO UPDATE SET model = EXCLUDED.model, result = EXCLUDED.result,"
                " created_at = now()",
                (selection, eval_drop, model, json.dumps(result)),
            )

    def subset_evaluation(self, selection: str) -> dict | None:
        """The newest evaluation of a selection: {eval_drop, model, result, created_at}."""
        with self.connection() as conn:
            rows = dict_rows(
                conn.execute(
                    "SELECT eval_drop, model, result, created_at FROM subset_evaluations WHERE selection = %s"
                    " ORDER BY created_at DESC LIMIT 1",
                    (selection,),
                )
            )
        return rows[0] if rows else None

    def latest_label_review(self) -> str | None:
        with self.connection() as conn:
            row = conn.execute("SELECT name FROM label_reviews ORDER BY created_at DESC LIMIT 1").fetchone()
        return row[0] if row else None
