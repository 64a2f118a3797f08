"""DuckDB schema of results.duckdb.

The contract columns, listed in docs/contract.md (tests/test_docs.py checks them against TABLES),
are relied on by checks and the dashboard: add columns, never rename. Every statement that
creates or changes tables is here.
"""

#: Recorded in `meta` ('schema_version') by every writer. A file holding a higher number was written
#: by a newer cxr-audit and is refused (check_version) rather than read or altered with old DDL.
SCHEMA_VERSION = 1

TABLES: dict[str, str] = {
    "runs": """
        CREATE TABLE IF NOT EXISTS runs (
            run_id VARCHAR PRIMARY KEY,
            model VARCHAR NOT NULL,
            dataset VARCHAR NOT NULL,
            pretrained BOOLEAN NOT NULL,
            epochs INTEGER,
            device VARCHAR,
            status VARCHAR NOT NULL,          -- done | failed
            started_at TIMESTAMP,
            finished_at TIMESTAMP,
            git_commit VARCHAR,
            config_json VARCHAR,
            seed INTEGER,
            image_size INTEGER,
            lungs_only BOOLEAN DEFAULT FALSE,
            classes_json VARCHAR,
            checkpoint_path VARCHAR,
            best_epoch INTEGER,
            epochs_run INTEGER,
            train_seconds DOUBLE,
            train_images_per_s DOUBLE,
            n_train INTEGER, n_val INTEGER, n_test INTEGER,
            error VARCHAR,
            -- wall seconds per phase (training: train_seconds above); store: writing the rows
            decode_seconds DOUBLE, eval_seconds DOUBLE, cam_seconds DOUBLE,
            faithfulness_seconds DOUBLE, probe_seconds DOUBLE, store_seconds DOUBLE
        )""",
    "images": """
        CREATE TABLE IF NOT EXISTS images (
            image_id VARCHAR PRIMARY KEY,
            dataset VARCHAR NOT NULL,
            source VARCHAR,
            path VARCHAR,
            label VARCHAR,
            patient_id VARCHAR,
            split VARCHAR,
            mask_path VARCHAR,
            mask_source VARCHAR,
            marker_mask_path VARCHAR,
            view VARCHAR, sex VARCHAR, age DOUBLE, finding VARCHAR,
            source_split VARCHAR, key VARCHAR
        )""",
    "rejected_images": """
        CREATE TABLE IF NOT EXISTS rejected_images (
            path VARCHAR, source VARCHAR, reason VARCHAR, dataset VARCHAR,
            seen_at TIMESTAMP DEFAULT current_timestamp
        )""",
    "predictions": """
        CREATE TABLE IF NOT EXISTS predictions (
            run_id VARCHAR, image_id VARCHAR, split VARCHAR,
            label VARCHAR, pred VARCHAR, confidence DOUBLE, probs DOUBLE[]
        )""",
    "metrics": """
        CREATE TABLE IF NOT EXISTS metrics (
            run_id VARCHAR, split VARCHAR, metric VARCHAR, class_name VARCHAR,
            value DOUBLE, ci_low DOUBLE, ci_high DOUBLE
        )""",
    "cams": """
        CREATE TABLE IF NOT EXISTS cams (
            run_id VARCHAR, image_id VARCHAR, split VARCHAR, method VARCHAR,
            target_class VARCHAR, target_kind VARCHAR,   -- pred | true
            height INTEGER, width INTEGER, cam BLOB,     -- float16 bytes, row-major height x width
            lung_mass DOUBLE, pointing_hit BOOLEAN, lung_iou DOUBLE, mask_source VARCHAR,
            marker_mass DOUBLE,   -- phantom only: CAM mass on the planted marker, grown by one CAM cell
            lung_mass_ceiling DOUBLE  -- lung_mass of a perfect lungs-only map at this CAM's resolution
        )""",
    "probes": """
        CREATE TABLE IF NOT EXISTS probes (
            run_id VARCHAR, probe VARCHAR, metric VARCHAR,
            value DOUBLE, ci_low DOUBLE, ci_high DOUBLE, detail VARCHAR
        )""",
    "faithfulness": """
        CREATE TABLE IF NOT EXISTS faithfulness (
            run_id VARCHAR, method VARCHAR, metric VARCHAR,
            value DOUBLE, ci_low DOUBLE, ci_high DOUBLE, n_images INTEGER
        )""",
    "cam_skips": """
        CREATE TABLE IF NOT EXISTS cam_skips (
            run_id VARCHAR, split VARCHAR, method VARCHAR, reason VARCHAR  -- a method asked for but not run
        )""",
    "cam_sanity": """
        CREATE TABLE IF NOT EXISTS cam_sanity (
            run_id VARCHAR, method VARCHAR, n_images INTEGER,
            rank_corr DOUBLE, ci_low DOUBLE, ci_high DOUBLE,  -- trained vs randomised-weight maps (Spearman)
            flagged BOOLEAN,  -- rank_corr >= the audit's sanity_threshold: the maps do not explain the model
            detail VARCHAR
        )""",
    # Where a model looks over all its images (audit/cam_patterns.py): per run, split, CAM method
    # and predicted class. Maps are float32 bytes on a `grid` x `grid` grid in image coordinates.
    "cam_class_maps": """
        CREATE TABLE IF NOT EXISTS cam_class_maps (
            run_id VARCHAR, split VARCHAR, method VARCHAR, class_name VARCHAR,  -- the predicted class
            n_images INTEGER, accuracy DOUBLE, grid INTEGER,
            cam_height INTEGER, cam_width INTEGER,  -- the maps' own resolution
            mean_map BLOB, lung_map BLOB,           -- mean normalised map; mean lung mask (lung fraction per cell)
            lung_share DOUBLE, border_share DOUBLE, corner_share DOUBLE,  -- of the mean map's mass
            lung_ceiling DOUBLE,  -- lung_share of the best map at the maps' resolution
            lung_focus DOUBLE,    -- lung_share / lung_ceiling
            lung_area DOUBLE, border_area DOUBLE, corner_area DOUBLE  -- what a uniform map would put there
        )""",
    "cam_clusters": """
        CREATE TABLE IF NOT EXISTS cam_clusters (
            run_id VARCHAR, split VARCHAR, method VARCHAR, class_name VARCHAR,
            cluster INTEGER,      -- 0 .. k-1, by size (0: the largest)
            k INTEGER,            -- clusters of this (run, split, method, class), chosen by the eigengap
            n_images INTEGER, class_share DOUBLE, accuracy DOUBLE, grid INTEGER,
            mean_map BLOB, lung_map BLOB,
            lung_share DOUBLE, border_share DOUBLE, corner_share DOUBLE, lung_ceiling DOUBLE, lung_focus DOUBLE,
            flagged BOOLEAN,      -- lung_focus below one half, in at least a tenth of the class
            sources_json VARCHAR, views_json VARCHAR,  -- {value: images}
            nearest_json VARCHAR  -- image ids nearest the cluster's centre
        )""",
    "cam_cluster_members": """
        CREATE TABLE IF NOT EXISTS cam_cluster_members (
            run_id VARCHAR, split VARCHAR, method VARCHAR, class_name VARCHAR,
            image_id VARCHAR, cluster INTEGER, distance DOUBLE  -- to the cluster's mean (unit-mass maps)
        )""",
    "lung_segmenters": """
        CREATE TABLE IF NOT EXISTS lung_segmenters (
            checkpoint_path VARCHAR, created_at TIMESTAMP, image_size INTEGER,
            dice_heldout DOUBLE, dice_heldout_source VARCHAR, n_train INTEGER, n_heldout INTEGER,
            config_json VARCHAR
        )""",
    "meta": """
        CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)""",
}

# Tables whose rows belong to one run: deleted together when a run is replaced.
RUN_TABLES = ("predictions", "metrics", "cams", "probes", "faithfulness", "cam_skips", "cam_sanity",
              "cam_class_maps", "cam_clusters", "cam_cluster_members")
PHASES = ("decode", "train", "eval", "cam", "cluster", "faithfulness", "probe", "store")  # runs.<phase>_seconds


# Columns added after a table first shipped: older result files get them on open (add, never rename).
ADDED_COLUMNS: list[tuple[str, str, str]] = [
    ("cams", "marker_mass", "DOUBLE"),
    ("cams", "lung_mass_ceiling", "DOUBLE"),
    *[("runs", f"{phase}_seconds", "DOUBLE") for phase in ("decode", "eval", "cam", "faithfulness", "probe", "store")],
    ("runs", "cluster_seconds", "DOUBLE"),
]


def create_all(con) -> None:
    for ddl in TABLES.values():
        con.execute(ddl)
    for table, column, kind in ADDED_COLUMNS:
        con.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")
    con.execute(
        "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)]
    )


def missing_parts(con) -> list[str]:
    """Tables of TABLES and columns of ADDED_COLUMNS the file lacks (an older version wrote it);
    empty when it is current. Readers upgrade such a file before they query it (connection.py)."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    have = set(con.execute("SELECT table_name, column_name FROM duckdb_columns()").fetchall())
    return ([t for t in TABLES if t not in tables]
            + [f"{t}.{c}" for t, c, _ in ADDED_COLUMNS if t in tables and (t, c) not in have])


def columns(con, table: str) -> list[str]:
    return [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]


def stored_version(con) -> int | None:
    """The schema_version recorded in `meta`; None for a file without the record (empty, or older)."""
    if not con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'meta'").fetchone()[0]:
        return None
    row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    try:
        return int(row[0]) if row else None
    except (TypeError, ValueError):
        return None


def newer_version_message(path, found: int) -> str | None:
    """Why `path` cannot be used by this code (None when it can): it names both versions."""
    if found is None or found <= SCHEMA_VERSION:
        return None
    return (f"{path} was written with results schema version {found}, newer than version {SCHEMA_VERSION} "
            "that this cxr-audit reads and writes; upgrade cxr-audit, or use another --db")
