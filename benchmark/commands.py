"""What each CLI command does (argument parsing lives in cli.py)."""
from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import pandas as pd

from .cli import REAL_DATA_HINT
from .errors import BenchmarkError

log = logging.getLogger(__name__)


def dispatch(args) -> int:
    if args.command == "run":
        return cmd_run(args)
    if args.command == "data":
        return cmd_data_list(args) if args.data_command == "list" else cmd_data_check(args)
    if args.command in ("cams", "evaluate", "lungs"):
        from . import commands_audit
        return getattr(commands_audit, f"cmd_{args.command}")(args)
    raise BenchmarkError(f"unknown command {args.command}")


def parse_cam_methods(text: str | None) -> tuple[str, ...]:
    """'cam,gradcam' -> ('cam', 'gradcam'); 'none' or '' -> (); unknown names fail early, listing choices.

    A method may name another layer than the registry's: 'gradcam@layer3' (dotted path in the net).
    """
    from .cams.methods import get_cam_method

    if not text or text.strip().lower() == "none":
        return ()
    parsed = []
    for name in (m.strip() for m in text.split(",") if m.strip()):
        base, at, layer = name.partition("@")
        get_cam_method(base.lower())
        parsed.append(base.lower() + at + layer)  # method names are lowercase; layer paths keep their case
    return tuple(parsed)


def specs_from_args(args) -> list:
    from .job import JobSpec, resolve_input_size
    from .models import resolve_models

    cam_methods = parse_cam_methods(args.cam_methods)

    return [JobSpec(model=m, data=args.data, epochs=args.epochs, seed=args.seed, device=args.device,
                    pretrained=args.pretrained, weights_dir=args.weights_dir, image_size=resolve_input_size(m, args.data, args.image_size),
                    batch_size=args.batch_size, lr=args.lr, patience=args.patience, lungs_only=args.lungs_only,
                    data_root=args.data_root, data_seed=args.data_seed, max_per_class=args.max_per_class,
                    n_phantom=args.n_phantom, cam_methods=cam_methods, checkpoint_dir=args.checkpoint_dir,
                    segmenter=args.segmenter, faithfulness_sample=args.faithfulness_sample,
                    cache_dir=args.cache_dir, progress=not args.no_progress)
            for m in resolve_models(args.models)]


def cmd_run(args) -> int:
    from .data.splits import split_counts
    from .job import load_job_dataset
    from .runner import run_grid
    from .store import queries, reader

    specs = specs_from_args(args)
    if args.data == "phantom" and not args.data_root and not os.environ.get("CXR_DATA"):
        print(f"Embedded default: synthetic phantom X-rays. {REAL_DATA_HINT}")
    loaded: dict = {}  # the grid reuses this load instead of reading the sources again
    ds = load_job_dataset(specs[0], loaded)
    print(f"dataset {ds.name}: {len(ds.records)} images, classes {ds.classes}")
    counts = pd.DataFrame(split_counts(ds.records)).fillna(0).astype(int)
    print("images per class and split (patient-level split):\n" + counts.to_string())
    statuses = run_grid(specs, args.db, force=args.force, loaded=loaded)
    with reader(args.db) as con:
        table = queries.summary(con)
    ids = {s["run_id"] for s in statuses}
    table = table[table.run_id.isin(ids)]
    print_summary(table, statuses)
    print(f"\nResults in {args.db}. Dashboard: python -m dashboard --db {args.db}")
    if args.data.startswith("phantom"):
        print(REAL_DATA_HINT)
    return 1 if any(s["status"] == "failed" for s in statuses) else 0


def print_summary(table: pd.DataFrame, statuses: list[dict]) -> None:
    failed = [s for s in statuses if s["status"] == "failed"]
    if not table.empty:
        def ci(v, lo, hi):
            return "n/a" if pd.isna(v) else f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if pd.notna(lo) else f"{v:.3f}"
        show = pd.DataFrame({
            "dataset": table.dataset, "model": table.model, "pretrained": table.pretrained,
            "epochs": table.epochs_run, "n_test": table.n_test,
            "accuracy [95% CI]": [ci(*r) for r in zip(table.accuracy, table.accuracy_ci_low, table.accuracy_ci_high)],
            "macro AUC [95% CI]": [ci(*r) for r in zip(table.macro_auc, table.macro_auc_ci_low, table.macro_auc_ci_high)],
        })
        print("\nSummary (test split, CIs by patient bootstrap):")
        print(show.to_string(index=False))
    for s in failed:
        print(f"FAILED {s['model']} on {s['data']}: {s['error']}")


def cmd_data_list(args) -> int:
    from .data import sources
    from .data.datasets import list_presets, presets

    root = args.data_root or os.environ.get("CXR_DATA")
    print("Dataset presets (--data NAME):")
    for name, desc in list_presets():
        line = f"  {name:18s} {desc}"
        spec = presets()[name]
        if spec["kind"] == "sources" and root:
            found = []
            for part in spec["parts"]:
                try:
                    recs = sources.find_source(root, part["source"])
                    n = sum(r.label in part["labels"] for r in recs)
                    found.append(f"{part['source']}: {n}")
                except BenchmarkError:
                    found.append(f"{part['source']}: missing")
            line += f"\n  {'':18s} under {root}: " + ", ".join(found)
        print(line)
    if not root:
        print("  (set --data-root or $CXR_DATA to see which real sources are present)")
    print("\nFolder layouts (--data PATH, or sources under --data-root):")
    for name in sources.SOURCE_ORDER:
        print(f"  {name:10s} {sources.LAYOUTS[name].description}")
    return 0


def cmd_data_check(args) -> int:
    from .data import sources
    from .data.decode import DecodeCache
    from .data.imageio import read_image
    from .errors import ImageRejected

    path = Path(args.path)
    if path.is_file():
        try:
            img = read_image(path)
            print(f"{path}: ok, {img.shape[1]}x{img.shape[0]} grayscale, range {img.min()}-{img.max()}")
            return 0
        except ImageRejected as exc:
            print(f"{path}: rejected: {exc.reason}")
            return 1
    layout = sources.detect_layout(path)
    records = sources.load_folder(path, layout)
    print(f"{path}: {layout} layout, {len(records)} images, {len({r.patient_id for r in records})} patients")
    for label, n in sorted(Counter(r.label for r in records).items()):
        print(f"  {label:22s} {n}")
    with_masks = sum(bool(r.mask_path) for r in records)
    if with_masks:
        print(f"  lung masks: {with_masks}")
    decoded = DecodeCache(Path(args.cache_dir) if args.cache_dir else None).load(records, args.size, progress=True)
    print(f"readable: {len(decoded.records)}, rejected: {len(decoded.rejected)}")
    for r, reason in decoded.rejected[:50]:
        print(f"  {r.path}: {reason}")
    return 0 if not decoded.rejected else 1
