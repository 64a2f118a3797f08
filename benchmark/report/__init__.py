"""The replication report: the study's table beside the shortcut audit, figures, provenance and
costs, from a results DB (`cxr-audit report`), as one offline HTML file or Markdown + PNGs.

Modules, one job each: `board` (the leaderboard's composition, shared with the dashboard),
`seeds` (seed groups and pooling), `measures` (per-run numeric frames), `tables` (display
strings), `roc` (curves with a patient-bootstrap band), `figures` (matplotlib -> PNG),
`cam_panels` (which CAMs, and loading their images), `document` (the report as data), `build`
(reading the DB and laying out sections), `html` / `markdown` (writers), `output` (files).
Nothing is imported here, so the dashboard can import `board` without matplotlib.
"""
