"""`report`: write the replication report (HTML, or Markdown + PNGs) from a results DB."""
from __future__ import annotations

from benchmark import paths
from benchmark.report.build import build_report
from benchmark.report.output import resolve_format, write


def cmd_report(args) -> int:
    """Build the report of `--db` and write it to `--out` (format from --format, else the suffix)."""
    db = paths.results_db(args.db)
    fmt = resolve_format(args.out, args.format)
    report = build_report(db)
    written = write(report, args.out, fmt)
    extra = f" and {len(written) - 1} figures in {written[1].parent}" if len(written) > 1 else ""
    print(f"report of {db}: {written[0]}{extra}")
    return 0
