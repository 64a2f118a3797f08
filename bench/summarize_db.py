"""Print what a results DB says about shortcut learning: accuracy, lung focus, probes per run.

    python bench/summarize_db.py results.duckdb
"""
from __future__ import annotations

import sys

from benchmark.store import queries, reader


def main(db: str) -> None:
    import pandas as pd

    pd.set_option("display.width", 200)
    with reader(db) as con:
        summary = queries.summary(con)
        focus = queries.lung_focus_by_run(con)
        probes = queries.probe_results(con)
        seg = con.execute("SELECT checkpoint_path, dice_heldout, n_train, n_heldout FROM lung_segmenters").df()
    cols = ["dataset", "model", "epochs_run", "n_test", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "macro_auc"]
    print(summary[cols].to_string(index=False, float_format="%.3f"))
    print("\nlung focus (test CAMs of the predicted class):")
    print(focus.to_string(index=False, float_format="%.3f"))
    print("\nprobes (accuracy):")
    print(probes.drop(columns=["detail"]).to_string(index=False, float_format="%.3f"))
    if not seg.empty:
        print("\nlung segmenters:")
        print(seg.to_string(index=False, float_format="%.3f"))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results.duckdb")
