"""The replication report: the study's table beside the shortcut audit, figures, provenance and
costs, from a results DB (`cxr-audit report`), as one offline HTML file or Markdown + PNGs.

It only renders: the numbers come from `benchmark.analysis` (shared with the dashboard). Modules,
one job each: `tables` and `evidence_tables` (display strings), `patterns` (class-mean maps and
clusters of CAMs), `figures` (matplotlib -> PNG), `cam_panels` (which CAMs, and loading their
images), `document` (the report as data), `build` (reading the DB and laying out sections),
`html` / `markdown` (writers), `output` (files).
"""
