"""The measure measures: on phantom-shortcut (only an out-of-lung marker tells the class) a
trained resnet18's CAMs lie mostly off the lungs and it keeps its accuracy with the lungs removed,
while removing everything but the lungs takes it to chance.

The lung-reading counterpart (phantom-clean: lungs-removed accuracy near chance) needs full-size
training (224 px, 8 epochs) to learn the faint lung patterns; its numbers are in bench/RESULTS.md.
"""
from __future__ import annotations

from benchmark.cli import main
from benchmark.store import reader


def _probe(con, probe):
    return con.execute("SELECT value FROM probes WHERE probe = ? AND metric = 'accuracy'", [probe]).fetchone()[0]


def test_shortcut_model_looks_off_the_lungs_and_survives_lung_removal(tmp_path, cache_env):
    db = tmp_path / "r.duckdb"
    assert main(["run", "--data", "phantom-shortcut", "--n-phantom", "180", "--models", "resnet18",
                 "--image-size", "96", "--epochs", "4", "--device", "cpu", "--no-progress",
                 "--cam-methods", "gradcam", "--faithfulness-sample", "0", "--db", str(db),
                 "--checkpoint-dir", str(tmp_path / "ck")]) == 0
    with reader(db) as con:
        intact, removed, only = _probe(con, "intact"), _probe(con, "lungs_removed"), _probe(con, "lungs_only")
        lung_mass, marker_mass = con.execute(
            "SELECT avg(lung_mass), avg(marker_mass) FROM cams WHERE target_kind = 'pred'").fetchone()
    assert intact >= 0.9
    assert removed >= 0.9                      # the lungs carry nothing it needs
    assert only <= 0.6                         # without the marker region: near chance (1/3)
    assert lung_mass < 0.4
    assert marker_mass is not None and marker_mass > 0
