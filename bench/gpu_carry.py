"""What a GPU loan carries, and whether it fits: the data subset in `.devdata/`, and the size of
everything a device `run` call sends against its 64 MiB limit.

Builds `<out>/cxr` from the data pack: cohen and nih whole, kermany cut to `--kermany-per-class`
images per label, whole patients drawn with a seed (the pack is 69 MB, 39 MB of it kermany), and
`<out>/cxr-external` (the external pack, whole). Then adds up what a call sends: the files git
tracks or would track (untracked, not ignored) plus the carried folders (`<out>` and `.whl`, both
ignored by git), and exits 1 when that is over the limit. bench/gpu_check.sh finds `.devdata/cxr`
and `.devdata/cxr-external` there.

    python bench/gpu_carry.py --data-root ../shared/data/cxr --external-root ../shared/data/cxr-external
"""
from __future__ import annotations

import argparse
import csv
import random
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIMIT = 64 * 2**20  # a device call's working tree and carried paths together
WHOLE = ("cohen", "nih")


def pick_patients(rows: list[dict], per_class: int, seed: int) -> list[dict]:
    """At most `per_class` images of each label, whole patients only (a patient's images never
    split), patients shuffled with `seed` within their majority label."""
    by_patient: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_patient[row["patient_id"]].append(row)
    by_label: dict[str, list[str]] = defaultdict(list)
    for pid in sorted(by_patient):
        by_label[Counter(r["label"] for r in by_patient[pid]).most_common(1)[0][0]].append(pid)
    rng = random.Random(seed)
    kept: set[str] = set()
    for label in sorted(by_label):
        patients = by_label[label]
        rng.shuffle(patients)
        count = 0
        for pid in patients:
            if count + len(by_patient[pid]) > per_class:
                continue
            kept.add(pid)
            count += len(by_patient[pid])
    return [row for row in rows if row["patient_id"] in kept]


def copy_subset(source: Path, target: Path, rows: list[dict], fields: list[str]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    with open(target / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        for column in ("image", "mask"):
            if row.get(column):
                (target / row[column]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source / row[column], target / row[column])


def build(data_root: Path, external_root: Path | None, out: Path, per_class: int, seed: int) -> dict[str, int]:
    """Write the subset under `out`; returns images per source."""
    cxr = out / "cxr"
    if cxr.exists():
        shutil.rmtree(cxr)
    cxr.mkdir(parents=True)
    for name in ("README.md", "provenance.json"):
        if (data_root / name).is_file():
            shutil.copy2(data_root / name, cxr / name)
    counts = {}
    for source in WHOLE:
        shutil.copytree(data_root / source, cxr / source)
        with open(data_root / source / "manifest.csv", newline="") as fh:
            counts[source] = sum(1 for _ in csv.DictReader(fh))
    with open(data_root / "kermany" / "manifest.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = list(reader.fieldnames or []), list(reader)
    kept = pick_patients(rows, per_class, seed)
    copy_subset(data_root / "kermany", cxr / "kermany", kept, fields)
    counts["kermany"] = len(kept)
    if external_root is not None:
        target = out / "cxr-external"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(external_root, target)
    return counts


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def sent_bytes(repo: Path, carried: list[Path]) -> dict[str, int]:
    """What a device call sends: the working tree git knows of (tracked, and untracked but not
    ignored) and each carried path."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                            capture_output=True, check=True).stdout.split(b"\0")
    tree = sum((repo / name.decode()).stat().st_size for name in listed
               if name and (repo / name.decode()).is_file())
    return {"working tree": tree, **{str(p.relative_to(repo) if p.is_relative_to(repo) else p): tree_bytes(p)
                                     for p in carried}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, required=True, help="the data pack (../shared/data/cxr)")
    ap.add_argument("--external-root", type=Path, default=None, help="the external pack (../shared/data/cxr-external)")
    ap.add_argument("--out", type=Path, default=REPO / ".devdata", help="where the subset goes (git ignores .devdata)")
    ap.add_argument("--kermany-per-class", type=int, default=500, help="kermany images kept per label")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--wheels", type=Path, default=REPO / ".whl", help="the carried wheels, counted if present")
    args = ap.parse_args(argv)

    counts = build(args.data_root, args.external_root, args.out, args.kermany_per_class, args.seed)
    print("images: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    sizes = sent_bytes(REPO, [args.out, args.wheels])
    total = sum(sizes.values())
    print("| sent with a device call | MiB |\n|---|---|")
    for name, size in sizes.items():
        print(f"| {name} | {size / 2**20:.1f} |")
    print(f"| total (limit {LIMIT / 2**20:.0f}) | {total / 2**20:.1f} |")
    if total > LIMIT:
        print(f"over the limit by {(total - LIMIT) / 2**20:.1f} MiB: lower --kermany-per-class", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
