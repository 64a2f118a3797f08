"""Images: metadata, masks, what was rejected, and one image's predictions.

Every function takes a connection and returns a DataFrame or a value; values are always
parameters. Reads see only done runs.
"""
from __future__ import annotations

import pandas as pd


def images(con, dataset: str | None = None) -> pd.DataFrame:
    if dataset is None:
        return con.execute("SELECT * FROM images").df()
    return con.execute("SELECT * FROM images WHERE dataset = ?", [dataset]).df()


def rejected(con, dataset: str | None = None) -> pd.DataFrame:
    if dataset is None:
        return con.execute("SELECT * FROM rejected_images").df()
    return con.execute("SELECT * FROM rejected_images WHERE dataset = ?", [dataset]).df()


def mask_paths(con, dataset: str, split: str = "test") -> pd.DataFrame:
    """Lung-mask files of a dataset's images in one split (for the uniform-map baseline)."""
    return con.execute(
        """
        SELECT image_id, mask_path, mask_source FROM images
        WHERE dataset = ? AND split = ? AND mask_path IS NOT NULL AND mask_path <> ''
        ORDER BY image_id
        """, [dataset, split]).df()


def image_counts(con) -> pd.DataFrame:
    """Images per (dataset, source, split, class), and how many have a lung mask from where."""
    return con.execute(
        """
        SELECT dataset, coalesce(source, '') AS source, coalesce(split, '') AS split, label,
               count(*) AS n_images, count(nullif(mask_path, '')) AS n_masks,
               string_agg(DISTINCT nullif(mask_source, ''), ', ' ORDER BY nullif(mask_source, '')) AS mask_sources
        FROM images GROUP BY ALL ORDER BY dataset, source, label, split
        """).df()


def rejected_summary(con) -> pd.DataFrame:
    """Unreadable files per (dataset, source, reason), with one example path."""
    return con.execute(
        """
        SELECT coalesce(dataset, '') AS dataset, coalesce(source, '') AS source, reason, count(*) AS n_files,
               min(path) AS example
        FROM rejected_images GROUP BY ALL ORDER BY dataset, source, n_files DESC, reason
        """).df()


def image_list(con, dataset: str, split: str = "test") -> pd.DataFrame:
    """(image_id, label, source) of the dataset's images with a `split` prediction of a done run, in the
    compare page's order (label, image_id): the image picker's list, without paths or metadata."""
    return con.execute(
        """
        SELECT i.image_id, i.label, i.source
        FROM images i
        WHERE i.dataset = ? AND i.image_id IN (
            SELECT p.image_id FROM predictions p JOIN runs r ON r.run_id = p.run_id
            WHERE p.split = ? AND r.status = 'done' AND r.dataset = ?)
        ORDER BY i.label, i.image_id
        """, [dataset, split, dataset]).df()


def image_row(con, image_id: str) -> pd.DataFrame:
    """One image's metadata row (the columns `predicted_images` gives), empty if unknown."""
    return con.execute(
        "SELECT image_id, label, source, path, key, mask_path, view, sex, age FROM images WHERE image_id = ?",
        [image_id]).df()


def predicted_images(con, dataset: str, split: str = "test") -> pd.DataFrame:
    """The dataset's images with at least one `split` prediction of a done run, with their metadata."""
    return con.execute(
        """
        SELECT i.image_id, i.label, i.source, i.path, i.key, i.mask_path, i.view, i.sex, i.age
        FROM images i
        WHERE i.dataset = ? AND EXISTS (
            SELECT 1 FROM predictions p JOIN runs r ON r.run_id = p.run_id
            WHERE p.image_id = i.image_id AND p.split = ? AND r.status = 'done')
        ORDER BY i.label, i.image_id
        """, [dataset, split]).df()


def image_predictions(con, image_id: str, split: str = "test") -> pd.DataFrame:
    """Every done run's `split` prediction of one image, with the run's model and test accuracy.

    The split matters: `benchmark evaluate` stores a model's predictions on another dataset's
    images as split 'external:<dataset>', and those are not that image's test predictions.
    """
    return con.execute(
        """
        SELECT p.run_id, r.model, r.dataset, r.pretrained, p.label, p.pred, p.confidence, p.probs,
               r.classes_json,
               (SELECT max(m.value) FROM metrics m WHERE m.run_id = p.run_id AND m.split = 'test'
                  AND m.metric = 'accuracy' AND m.class_name = '') AS accuracy
        FROM predictions p JOIN runs r ON r.run_id = p.run_id
        WHERE p.image_id = ? AND p.split = ? AND r.status = 'done'
        ORDER BY accuracy DESC NULLS LAST, r.model
        """, [image_id, split]).df()


def image_rows(con, image_ids: tuple[str, ...]) -> pd.DataFrame:
    """Metadata rows (with dataset and split) of the given images, in no particular order."""
    return con.execute(
        """SELECT image_id, dataset, split, label, source, path, key, mask_path, view, sex, age FROM images
           WHERE list_contains(?::VARCHAR[], image_id)""", [list(image_ids)]).df()
