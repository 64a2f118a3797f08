"""`data list` and `data check`: the presets, the layouts, and what a folder holds."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from benchmark import paths
from benchmark.errors import BenchmarkError


def cmd_data_list(args) -> int:
    from benchmark.data import sources
    from benchmark.data.presets import list_presets, presets

    roots = {"data": paths.data_root(args.data_root), "external": paths.external_root(args.external_root)}
    root = roots["data"]
    print("Dataset presets (--data NAME):")
    for name, desc in list_presets():
        line = f"  {name:18s} {desc}"
        spec = presets()[name]
        root = roots[spec.get("root", "data")] if spec["kind"] == "sources" else None
        if root:
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
    if not roots["data"]:
        print("  (set --data-root or $CXR_DATA to see which real sources are present)")
    if not roots["external"]:
        print(f"  (set --external-root or ${paths.ENV_EXTERNAL} to see which external sources are present)")
    print("\nFolder layouts (--data PATH, or sources under --data-root):")
    for name in sources.LAYOUTS:
        print(f"  {name:10s} {sources.LAYOUTS[name].description}")
    from benchmark.data import manifest
    print(f"\nCSV manifest (--data FILE.csv): columns {', '.join(manifest.REQUIRED)} (optional: "
          f"{', '.join(manifest.OPTIONAL)}); paths relative to the CSV's folder")
    return 0


def cmd_data_check(args) -> int:
    from benchmark.data import manifest, sources
    from benchmark.data.imageio import read_image
    from benchmark.errors import ImageRejected

    path = Path(args.path)
    if manifest.is_manifest(path):
        return _check_records(args, path, "CSV manifest", manifest.load_manifest(path))
    if path.is_file():
        try:
            img = read_image(path)
            print(f"{path}: ok, {img.shape[1]}x{img.shape[0]} grayscale, range {img.min()}-{img.max()}")
            return 0
        except ImageRejected as exc:
            print(f"{path}: rejected: {exc.reason}")
            return 1
    layout = sources.detect_layout(path)
    return _check_records(args, path, f"{layout} layout", sources.load_folder(path, layout))


def _check_records(args, path: Path, what: str, records: list) -> int:
    from benchmark.data.decode import DecodeCache

    print(f"{path}: {what}, {len(records)} images, {len({r.patient_id for r in records})} patients")
    for label, n in sorted(Counter(r.label for r in records).items()):
        print(f"  {label:22s} {n}")
    with_masks = sum(bool(r.mask_path) for r in records)
    if with_masks:
        print(f"  lung masks: {with_masks}")
    decoded = DecodeCache(args.cache_dir).load(records, args.size, progress=True)
    print(f"readable: {len(decoded.records)}, rejected: {len(decoded.rejected)}")
    for r, reason in decoded.rejected[:50]:
        print(f"  {r.path}: {reason}")
    return 0 if not decoded.rejected else 1
