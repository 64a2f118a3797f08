"""The audit of one trained model on a set of images: CAMs with lung focus, faithfulness, probes.

Used after training (job.py), for existing runs (`benchmark cams`) and for external datasets
(`benchmark evaluate`).
"""
from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
import torch

from benchmark.audit.cam_patterns import cam_pattern_tables
from benchmark.audit.cam_rows import cam_rows, method_applicability
from benchmark.audit.cam_sanity import cam_sanity_rows
from benchmark.audit.faithfulness import faithfulness_rows
from benchmark.audit.lung_masks import complete_masks
from benchmark.audit.probes import probe_rows
from benchmark.audit.source_probe import SourceSample, source_probe_rows
from benchmark.config import AuditConfig
from benchmark.data.decode import DecodeCache

log = logging.getLogger(__name__)


def audit_tables(model, classes: list[str], records: list, images: np.ndarray, masks: np.ndarray,
                 has_mask: np.ndarray, labels: np.ndarray, probs: np.ndarray, device: torch.device,
                 opts: AuditConfig, *, split: str, seed: int, cache_dir: str | None = None,
                 mask_sources: list[str] | None = None, timings: dict[str, float] | None = None,
                 source_train: SourceSample | None = None) -> dict[str, pd.DataFrame]:
    """{cams, cam_skips, cam_sanity, cam_class_maps, cam_clusters, cam_cluster_members, faithfulness,
    probes} DataFrames for these images (at the model's input size).

    `mask_sources` overrides the records' own where the caller already completed the masks (a
    lungs-only run predicts them before training); by default they come from the records.
    `timings`, when given, receives the seconds spent on cam, faithfulness and probe rows.
    `source_train`, the run's train images with their sources, adds the source probes (probes rows
    'source' and 'source_pixels', fitted on it and scored on these images); the CAM sanity check
    (`cam_sanity`) counts as CAM time and the source probes as probe time."""
    if len(records) == 0:
        return {}
    sources = mask_sources if mask_sources is not None else [r.mask_source for r in records]
    masks, mask_sources = complete_masks(images, masks, has_mask, sources,
                                         segmenter=opts.segmenter, device=str(device))
    preds = probs.argmax(1)
    patients = [r.patient_id for r in records]
    tables: dict[str, pd.DataFrame] = {}
    timings = {} if timings is None else timings
    clock = time.perf_counter()
    if opts.cam_methods:
        _, skipped = method_applicability(model, opts.cam_methods)
        for method, why in skipped:
            log.info("%s: %s %s; skipped", model.spec.name, method, why)
        tables["cam_skips"] = pd.DataFrame([{"split": split, "method": m, "reason": why} for m, why in skipped],
                                           columns=["split", "method", "reason"])
        markers = None
        if any(r.marker_mask_path for r in records):
            cache = DecodeCache(cache_dir)
            markers, _ = cache.load_masks(records, images.shape[-1], field="marker_mask_path")
        tables["cams"] = cam_rows(model, images, masks, mask_sources, preds, labels, [r.image_id for r in records],
                                  classes, opts.cam_methods, device, split=split, marker_masks=markers)
        if opts.sanity_sample:
            tables["cam_sanity"] = cam_sanity_rows(model, images, preds, patients, opts.cam_methods, device,
                                                   sample=opts.sanity_sample, threshold=opts.sanity_threshold,
                                                   seed=seed, n_boot=opts.n_boot)
        timings["cam"], clock = time.perf_counter() - clock, time.perf_counter()
        if opts.clusters:
            tables.update(cam_pattern_tables(tables["cams"], records, masks, mask_sources, labels, preds,
                                             split=split, seed=seed, device=device))
            timings["cluster"], clock = time.perf_counter() - clock, time.perf_counter()
        if opts.faithfulness_sample:
            tables["faithfulness"] = faithfulness_rows(model, images, preds, patients, opts.cam_methods, device,
                                                       sample=opts.faithfulness_sample, seed=seed)
            timings["faithfulness"], clock = time.perf_counter() - clock, time.perf_counter()
    if opts.probes:
        tables["probes"] = probe_rows(model, images, masks, labels, patients, classes, device, seed=seed,
                                      n_boot=opts.n_boot, mask_sources=mask_sources, probs=probs)
        timings["probe"] = time.perf_counter() - clock
    if opts.source_probe and source_train is not None:
        clock = time.perf_counter()
        test = SourceSample(images, [r.source for r in records], labels, patients)
        rows = source_probe_rows(model, source_train, test, classes, device, seed=seed, n_boot=opts.n_boot)
        tables["probes"] = pd.concat([t for t in (tables.get("probes"), rows) if t is not None and not t.empty],
                                     ignore_index=True)
        timings["probe"] = timings.get("probe", 0.0) + time.perf_counter() - clock
    return tables
