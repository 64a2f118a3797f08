"""The pandas analysis that both the report and the dashboard use, apart from how either renders it.

Why a package of its own: a number the report prints and the dashboard shows must come from one
function, and that function must not drag in matplotlib (the report's drawing) or streamlit (the
dashboard's). So modules here take the frames that `benchmark.store.queries` returns and give
frames back: no SQL, no streamlit, no matplotlib, and no import of `benchmark.report` (the report
imports from here, never the reverse).

Modules: `board` (the leaderboard's composition), `seeds` (seed groups and pooling), `measures`
(per-run numeric frames), `roc` (curves with a patient-bootstrap band), `calibration`,
`performance` (one run's or seed group's ROC, confusion, calibration and per-source numbers),
`evidence` (source-probe and CAM-sanity long tables), `correlation` (Spearman's rank correlation
with a bootstrap CI over runs), `external` (per run and external set: the internal-minus-external
AUC and balanced-accuracy drops beside the run's audit measures, and whether each measure predicts
the drop across runs).
Nothing is imported here, so importing one module does not import the others (scipy is imported
only when a correlation is computed).
"""
