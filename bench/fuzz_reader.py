"""Fuzz the one image reader (benchmark/data/imageio.read_image) with N seeded cases.

    python -m bench.fuzz_reader                 # 10,000 cases, seed 0
    python -m bench.fuzz_reader -n 500 --seed 7

Cases come from tests/fuzz_images.py (mutated PNG, JPEG and DICOM seeds from the data pack, the
bad-inputs folder and pydicom-written files, plus random bytes). Goals (issue 10): every call
returns an image or raises ImageRejected (0 escaped); none takes over 5 s; memory stays bounded.
Prints a summary and one JSON object (cases/s, max and p99 seconds per call, outcomes, reasons and
exception classes, peak RSS); the lead copies the numbers, with machine and date, to bench/RESULTS.md.
Exits 1 if any exception other than ImageRejected escaped or a call took over --max-seconds.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import sys
import time
from collections import Counter

import numpy as np

from tests.conftest import BAD_INPUTS, CXR_DATA
from tests.fuzz_images import all_seeds, cases, run_case


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=5.0, help="the per-call goal (default 5 s)")
    args = parser.parse_args(argv)
    # the reader logs a warning for each unforeseen decoder error; here they are counted instead
    logging.getLogger("benchmark.data.imageio").setLevel(logging.ERROR)

    seeds = all_seeds(BAD_INPUTS, CXR_DATA)
    rss_before = _peak_rss_mb()
    times, results, by_how_escaped, reasons, slowest = [], Counter(), Counter(), Counter(), []
    started = time.perf_counter()
    for case in cases(args.cases, args.seed, seeds):
        out = run_case(case)
        times.append(out.seconds)
        results[out.result] += 1
        if out.result == "escaped":
            by_how_escaped[f"{case.kind} {case.how}: {out.error.split(':')[0]}"] += 1
        elif out.result == "rejected":
            reasons[out.error.split("(")[0].split(":")[0].strip()] += 1
        slowest.append((out.seconds, case.kind, case.how, case.seed))
        slowest = sorted(slowest, reverse=True)[:5]
    wall = time.perf_counter() - started
    t = np.array(times)
    summary = {
        "cases": args.cases, "seed": args.seed, "seeds": {k: len(v) for k, v in seeds.items()},
        "wall_s": round(wall, 2), "cases_per_s": round(args.cases / wall, 1),
        "max_s_per_call": round(float(t.max()), 4), "p99_s_per_call": round(float(np.percentile(t, 99)), 4),
        "median_s_per_call": round(float(np.median(t)), 5),
        "outcomes": dict(results), "escaped": dict(by_how_escaped),
        "rejection_reasons": dict(reasons.most_common()),
        "slowest": [{"s": round(s, 3), "kind": k, "how": h, "seed": sd} for s, k, h, sd in slowest],
        "peak_rss_mb": round(_peak_rss_mb(), 1), "peak_rss_mb_after_seeds": round(rss_before, 1),
        "python": platform.python_version(), "machine": platform.machine(),
    }
    print(f"{args.cases} cases in {wall:.1f} s ({summary['cases_per_s']} cases/s); "
          f"max {summary['max_s_per_call']} s per call; outcomes {dict(results)}; "
          f"peak RSS {summary['peak_rss_mb']} MB")
    print(json.dumps(summary, indent=2))
    return 1 if results["escaped"] or t.max() > args.max_seconds else 0


if __name__ == "__main__":
    sys.exit(main())
