"""The measure measures, on data whose truth we know.

phantom-shortcut: only an out-of-lung marker tells the class. A trained resnet18 keeps its
accuracy with the lungs removed, falls towards chance with everything but the lungs removed, and
its CAMs lie mostly off the lungs.

phantom-clean: only the lungs tell the class. The same architecture falls to chance with the
lungs removed and its CAMs lie mostly on the lungs.

Both are scored with the audit's default fine map, `hirescam@stride16` (resnet18's layer3). The
last block's Grad-CAM is stored too but not asserted on: at these sizes it is a 4 x 4 to 7 x 7
map whose upsampling caps lung_mass at 0.50 to 0.72, and in practice it did not separate the two
models (bench/RESULTS.md, "Proving the measure").
"""
from __future__ import annotations

import pytest

from benchmark.cli import main
from benchmark.store import reader

pytestmark = pytest.mark.slow  # trains resnet18 for minutes

FINE = "hirescam@stride16"
# Sizes: the shortcut is learnt at once; the lung patterns need enough pixels and images.
SHORTCUT = {"n": 360, "size": 128, "epochs": 6, "batch": 32}
# 192 px, not the bench's 224: 27% fewer pixels for the suite's longest test, with the same outcome.
# 480 images x 6 epochs in batches of 16, not 600 x 8 in 32s: twice the steps per epoch learn the lungs
# sooner, so the test is faster and further from its bound (the sizes tried and what each gave:
# bench/RESULTS.md, "The suite's longest test").
CLEAN = {"n": 480, "size": 192, "epochs": 6, "batch": 16}


def _run(tmp_path, preset: str, *, n: int, size: int, epochs: int, batch: int) -> dict:
    db = tmp_path / f"{preset}.duckdb"
    assert main(["run", "--data", preset, "--n-phantom", str(n), "--models", "resnet18",
                 "--image-size", str(size), "--epochs", str(epochs), "--batch-size", str(batch),
                 "--device", "cpu", "--no-progress",
                 "--cam-methods", f"gradcam,{FINE}", "--faithfulness-sample", "0", "--db", str(db),
                 "--checkpoint-dir", str(tmp_path / "ck")]) == 0
    with reader(db) as con:
        probes = dict(con.execute("SELECT probe, value FROM probes WHERE metric = 'accuracy'").fetchall())
        focus = {m: (lm, ceil, mm) for m, lm, ceil, mm in con.execute(
            "SELECT method, avg(lung_mass), avg(lung_mass_ceiling), avg(marker_mass) FROM cams "
            "WHERE target_kind = 'pred' GROUP BY method").fetchall()}
        unmeasured = con.execute("SELECT count(*) FROM cams WHERE method = ? AND lung_mass IS NULL",
                                 [FINE]).fetchone()[0]
    assert unmeasured == 0  # every map was measured (the phantom's masks are exact)
    print(preset, probes, focus)  # the numbers behind bench/RESULTS.md's CI row (pytest -s)
    return {"probes": probes, "focus": focus}


def test_shortcut_model_looks_off_the_lungs_and_survives_lung_removal(tmp_path, cache_env):
    r = _run(tmp_path, "phantom-shortcut", **SHORTCUT)
    probes, (lung_mass, ceiling, marker_mass) = r["probes"], r["focus"][FINE]
    assert probes["intact"] >= 0.9
    assert probes["lungs_removed"] >= 0.9   # the lungs carry nothing it needs
    assert probes["lungs_only"] <= 0.6      # without the marker region: towards chance (1/3)
    assert lung_mass < 0.4
    assert ceiling > 0.6                    # low because of the model, not because the map is coarse
    assert marker_mass > 0


def test_clean_model_looks_at_the_lungs_and_falls_to_chance_without_them(tmp_path, cache_env):
    r = _run(tmp_path, "phantom-clean", **CLEAN)
    probes, (lung_mass, ceiling, marker_mass) = r["probes"], r["focus"][FINE]
    assert probes["intact"] >= 0.9
    assert probes["lungs_removed"] <= 0.45  # chance is 1/3
    assert lung_mass > 0.6
    assert ceiling > 0.8                    # a stride-16 map (12 x 12 at 192 px) can score high
    assert marker_mass is None              # phantom-clean has no marker to measure against
