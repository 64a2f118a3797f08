"""The replication report (`cxr-audit report`): what it contains, that it works offline, how seeds
are pooled, what it costs per phase, and how it fails."""
from __future__ import annotations

import base64
import io
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from benchmark.analysis import measures, seeds
from benchmark.analysis.roc import FPR_GRID, roc_curves
from benchmark.cli import main
from benchmark.report import cam_panels
from benchmark.report.build import build_report
from benchmark.report.output import resolve_format
from benchmark.store import queries, reader, replace_run_tables, write_run
from benchmark.store.writes import RunBundle
from tests.fixtures_db import FakeResultsSpec, build_results_db, phase_seconds

DATA_URI = '<img src="data:image/png;base64,'
# a src/href/url() that would make the browser fetch something from a network
NETWORK = re.compile(r"""\b(?:src|href|action|poster|data)\s*=\s*["']?\s*(?:https?:)?//"""
                     r"""|url\(\s*["']?(?:https?:)?//""", re.IGNORECASE)


@pytest.fixture(scope="module")
def results_db(tmp_path_factory):
    db = build_results_db(tmp_path_factory.mktemp("report"))
    skip = pd.DataFrame([{"method": "cam", "reason": "not applicable: needs a global-average-pooling head"}])
    replace_run_tables(db, "phantom-clean-densenet201", {"cam_skips": (skip, {"split": "test"})})
    return db


@pytest.fixture(scope="module")
def html_report(results_db):
    out = results_db.parent / "out" / "report.html"
    assert main(["report", "--db", str(results_db), "--out", str(out)]) == 0
    return out


def _done_run_ids(db) -> list[str]:
    with reader(db) as con:
        return sorted(queries.done_run_ids(con))


def _pngs(text: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


@pytest.mark.slow  # builds a whole report (seconds)
def test_html_report_holds_the_tables_and_is_self_contained(html_report, results_db):
    text = html_report.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    for header in ("Accuracy", "Sensitivity (macro)", "Specificity (macro)", "AUC (macro)", "Lung mass",
                   "Uniform map", "Focus score", "Pointing game", "Acc. lungs removed", "Acc. lungs only",
                   "External acc.", "Run id"):
        assert f"<th>{header}</th>" in text, header
    for model in FakeResultsSpec().models:
        assert f"<td>{model}" in text
    for run_id in _done_run_ids(results_db):
        assert f'<td class="run">{run_id}</td>' in text
    with reader(results_db) as con:
        acc = con.execute("SELECT value, ci_low, ci_high FROM metrics WHERE run_id = 'phantom-shortcut-resnet18' "
                          "AND split = 'test' AND metric = 'accuracy' AND class_name = ''").fetchone()
    assert f"<td>{acc[0]:.3f} [{acc[1]:.3f}, {acc[2]:.3f}]</td>" in text  # one seed: its own value and CI
    # provenance: the rejected file, the CAM method not run, the failed run (kept out of the tables)
    assert "empty file" in text and "not applicable: needs a global-average-pooling head" in text
    assert "out of memory" in text and text.count("phantom-clean-vgg19-failed") == 1
    # figures: accuracy/focus, focus per class, then per dataset ROC, confusion, calibration, CAMs; all real PNGs
    pngs = _pngs(text)
    assert text.count(DATA_URI) == len(pngs) == 10
    assert "Confusion matrices on phantom-clean" in text and "Calibration on phantom-shortcut" in text
    for png in pngs:
        assert Image.open(io.BytesIO(png)).size[0] > 100
    # offline: nothing fetched from a network, no script, no external stylesheet or font
    assert not NETWORK.search(text)
    assert "<script" not in text.lower() and "<link" not in text.lower() and "@import" not in text
    assert re.findall(r'href="([^"]*)"', text) and all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', text))


@pytest.mark.slow  # builds a whole report (seconds)
def test_external_validation_table_uses_the_probe_detail(html_report):
    text = html_report.read_text(encoding="utf-8")
    section = text[text.index("Table 4."):text.index("</table>", text.index("Table 4."))]
    rows = re.findall(r"<tr>(.*?)</tr>", section.split("<tbody>")[1])
    assert len(rows) == 6  # every run was scored on the other phantom set
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in rows]
    resnet = next(c for c in cells if c[0] == "phantom-shortcut" and c[1].startswith("resnet18"))
    assert resnet[3] == "phantom-clean"
    internal, external, drop = float(resnet[4]), float(resnet[5].split(" ")[0]), float(resnet[6])
    assert drop == pytest.approx(internal - external, abs=2e-3) and drop > 0.3  # the shortcut does not travel
    assert resnet[7:9] == [str(FakeResultsSpec().n_test), "1"]  # images scored, images left out as seen


@pytest.mark.slow  # builds a whole report (seconds)
def test_markdown_report_writes_the_pngs_it_links(results_db, tmp_path):
    out = tmp_path / "md" / "report.md"
    assert main(["report", "--db", str(results_db), "--out", str(out)]) == 0  # md from the suffix
    text = out.read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == 10 and all(link.startswith("report_files/") for link in links)
    for link in links:
        png = out.parent / link
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (out.parent / "report_files").iterdir()) == sorted(
        link.split("/")[1] for link in links)
    assert "| Dataset | Model | Seeds | n test | Accuracy |" in text
    assert "phantom-shortcut-resnet18" in text and "data:image" not in text


def test_format_comes_from_the_flag_then_the_suffix():
    assert resolve_format("r.md") == "md" and resolve_format("r.MARKDOWN") == "md"
    assert resolve_format("r.html") == "html" and resolve_format("report") == "html"
    assert resolve_format("r.md", "html") == "html" and resolve_format("r.txt", "md") == "md"


def test_missing_database_exits_2_with_a_message(tmp_path, capsys):
    missing = tmp_path / "none.duckdb"
    assert main(["report", "--db", str(missing), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "no results database" in err and str(missing) in err and "Traceback" not in err
    assert not (tmp_path / "r.html").exists()


def test_database_without_finished_runs_exits_2(tmp_path, capsys):
    db = build_results_db(tmp_path, FakeResultsSpec(datasets=("d",), models=(), with_probes=False))
    assert main(["report", "--db", str(db), "--out", str(tmp_path / "r.html")]) == 2
    assert "no finished runs" in capsys.readouterr().err


# ----------------------------------------------------------------------------- seeds

def _run(db, run_id, model, seed, accuracy, *, epochs=3, width=0.1):
    metrics = pd.DataFrame([{"split": "test", "metric": "accuracy", "class_name": "", "value": accuracy,
                             "ci_low": accuracy - width, "ci_high": accuracy + width}])
    write_run(db, RunBundle(run={"run_id": run_id, "model": model, "dataset": "d", "pretrained": False,
                                 "lungs_only": False, "image_size": 64, "epochs": epochs, "seed": seed,
                                 "status": "done"}, tables={"metrics": metrics}))


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_seed_groups_pool_mean_and_sd_over_seeds(tmp_path):
    db = tmp_path / "seeds.duckdb"
    for seed, acc in zip((0, 1, 2), (0.6, 0.7, 0.9)):
        _run(db, f"d-resnet18-s{seed}", "resnet18", seed, acc)
    _run(db, "d-shallow-s0", "shallow", 0, 0.8)
    _run(db, "d-resnet18-long", "resnet18", 0, 0.5, epochs=30)  # another experiment: not a seed of the group
    with reader(db) as con:
        details, summary = queries.run_details(con), queries.summary(con)
    groups = seeds.seed_groups(details)
    assert groups.groupby("seed_group").run_id.count().sort_values().tolist() == [1, 1, 3]
    pooled = seeds.aggregate(summary[["run_id", "dataset", "model", "accuracy", "accuracy_ci_low",
                                      "accuracy_ci_high"]], groups, spread=("accuracy",)).set_index("run_id")
    three = pooled.loc["d-resnet18-s0, d-resnet18-s1, d-resnet18-s2"]
    assert three.n_seeds == 3 and three.seeds == "0, 1, 2"
    assert three.accuracy == pytest.approx(np.mean([0.6, 0.7, 0.9]))
    assert three.accuracy_sd == pytest.approx(np.std([0.6, 0.7, 0.9], ddof=1))
    assert (three.accuracy_ci_low, three.accuracy_ci_high) == pytest.approx((np.mean([0.5, 0.6, 0.8]),
                                                                             np.mean([0.7, 0.8, 1.0])))
    one = pooled.loc["d-shallow-s0"]
    assert one.n_seeds == 1 and one.accuracy == pytest.approx(0.8) and np.isnan(one.accuracy_sd)

    # the report: mean ± SD [mean of the per-seed bounds] for the group, the run's own value and CI alone;
    # a DB without predictions, CAMs, probes or masks still gives a report
    table = next(t for t in build_report(db).tables() if t.title.startswith("Table 1")).frame.set_index(
        "Run id")
    assert table.at["d-resnet18-s0, d-resnet18-s1, d-resnet18-s2", "Accuracy"] == "0.733 ± 0.153 [0.633, 0.833]"
    assert table.at["d-resnet18-s0, d-resnet18-s1, d-resnet18-s2", "Seeds"] == "3 (seeds 0, 1, 2)"
    assert table.at["d-shallow-s0", "Accuracy"] == "0.800 [0.700, 0.900]"
    assert table.at["d-resnet18-long", "Accuracy"] == "0.500 [0.400, 0.600]"


@pytest.mark.slow  # builds a whole report (seconds)
def test_fixture_seed_groups_reach_every_table(tmp_path):
    db = build_results_db(tmp_path, FakeResultsSpec(models=("shallow", "resnet18"), seeds=(0, 1), n_test=6,
                                                    methods=("gradcam",)))
    report = build_report(db, n_boot=20)
    for title in ("Table 1", "Table 2", "Table 3", "Table 4"):
        frame = next(t for t in report.tables() if t.title.startswith(title)).frame
        assert set(frame["Seeds"]) == {"2 (seeds 0, 1)"}, title
        assert frame["Run id"].str.fullmatch(r"(phantom-\w+-\w+)-s0, \1-s1").all(), title
    notes = next(t for t in report.tables() if t.title.startswith("Table 1")).notes
    assert any("mean of the per-seed 95% bootstrap CI bounds" in n for n in notes)


# ----------------------------------------------------------------------------- costs, images, ROC

@pytest.mark.slow  # builds a whole report (seconds)
def test_cost_per_phase_per_run(results_db, tmp_path):
    with reader(results_db) as con:
        costs = measures.phase_costs(queries.run_details(con)).set_index("run_id")
    shallow = costs.loc["phantom-clean-shallow"]
    expected = phase_seconds(0, 0)
    for col in ("decode_seconds", "train_seconds", "eval_seconds", "cam_seconds", "probe_seconds"):
        assert shallow[col] == pytest.approx(expected[col])
    assert shallow.store_seconds > 0  # measured by write_run itself
    assert shallow.total_seconds == pytest.approx(sum(v for k, v in expected.items() if k.endswith("_seconds"))
                                                  + shallow.store_seconds)
    old = build_results_db(tmp_path, FakeResultsSpec(datasets=("d",), models=("shallow",), with_phases=False))
    with reader(old) as con:
        costs = measures.phase_costs(queries.run_details(con))
    assert costs.train_seconds.isna().all() and costs.store_seconds.notna().all()
    table = next(t for t in build_report(old, n_boot=20).tables() if t.title.startswith("Cost per phase")).frame
    assert table["train"].tolist() == [""] and table["decode"].tolist() == [""]


@pytest.mark.slow  # builds a whole report (seconds)
def test_missing_image_files_are_named_in_the_figure(results_db, tmp_path):
    copy = tmp_path / "moved"
    shutil.copytree(results_db.parent, copy, ignore=shutil.ignore_patterns("out", "*.wal"))
    shutil.rmtree(copy / "phantom-shortcut" / "images")  # the DB still points at the original folder
    with reader(results_db) as con:
        images = queries.predicted_images(con, "phantom-shortcut")
        preds = queries.scored_predictions(con)
    images["path"] = images["path"].str.replace(str(results_db.parent), str(copy), regex=False)
    runs = ["phantom-shortcut-resnet18", "phantom-shortcut-densenet201"]
    chosen = cam_panels.pick_images(preds, runs)
    assert len(chosen) == cam_panels.N_IMAGES
    with reader(results_db) as con:
        cams = queries.cams_for_pairs(con, [r for r in runs for _ in chosen], chosen * len(runs), "gradcam")
    grid = cam_panels.cells(runs, chosen, images, preds, cams)
    assert [len(row) for row in grid] == [len(chosen)] * len(runs)
    for cell in (c for row in grid for c in row):
        assert cell.image is None and "image not on this machine" in cell.note
        assert cell.cam is not None and cell.cam.shape == (cam_panels.MISSING_SIDE,) * 2  # the map is still drawn
        assert cell.mask is not None  # the mask file was not moved: its contour is still drawn


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_suspects_are_the_accurate_runs_that_look_least_at_the_lungs(results_db):
    with reader(results_db) as con:
        details = queries.run_details(con)
        board = measures.run_board(queries.summary(con), queries.class_metrics(con), queries.lung_focus_by_run(con),
                                   queries.probe_results(con), queries.metrics(con, split="test"), "gradcam", {})
        gap = dict(con.execute(
            """SELECT m.run_id, m.value - (SELECT avg(c.lung_mass) FROM cams c WHERE c.run_id = m.run_id
                                          AND c.method = 'gradcam' AND c.target_kind = 'pred')
               FROM metrics m WHERE m.split = 'test' AND m.metric = 'accuracy' AND m.class_name = ''""").fetchall())
    chosen = cam_panels.suspects(board, seeds.seed_groups(details), n=2)
    # no ceiling stored in the fixture, so no focus score: accuracy - lung mass ranks them
    for dataset, runs in chosen.items():
        mine = sorted((r for r in gap if r.startswith(dataset + "-") and "failed" not in r), key=lambda r: -gap[r])
        assert runs == mine[:2]
    # the fixture's shortcut learners (accurate, maps on the corner marker) before the lung reader
    assert sorted(chosen["phantom-shortcut"]) == ["phantom-shortcut-densenet201", "phantom-shortcut-resnet18"]


def test_roc_curves_agree_with_scikit_learn_and_band_the_curve():
    from sklearn.metrics import roc_auc_score, roc_curve

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    probs = rng.dirichlet([1, 1, 1], 300)
    probs[np.arange(300), labels] += 0.4
    probs /= probs.sum(axis=1, keepdims=True)
    curves = roc_curves(labels, probs, [f"p{i // 3}" for i in range(300)], n_boot=50)
    assert sorted(curves) == [0, 1, 2]
    for k, curve in curves.items():
        fpr, tpr, _ = roc_curve(labels == k, probs[:, k])
        assert curve.tpr == pytest.approx(np.interp(FPR_GRID, fpr, tpr), abs=1e-9)
        assert curve.auc == pytest.approx(roc_auc_score(labels == k, probs[:, k]))
        inner = slice(5, -5)
        assert (curve.low[inner] <= curve.tpr[inner] + 1e-9).all()
        assert (curve.tpr[inner] <= curve.high[inner] + 1e-9).all()
    assert roc_curves(np.zeros(5, int), np.full((5, 2), 0.5), list("abcde")) == {}  # one class only: no curve


# ----------------------------------------------------------------------------- a real browser

@pytest.mark.slow
@pytest.mark.browser
def test_report_opens_offline_in_chromium_without_console_errors(browser, html_report):
    from selenium.webdriver.common.by import By

    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(html_report.resolve().as_uri())
    assert "replication report" in browser.find_element(By.TAG_NAME, "h1").text
    tables = browser.find_elements(By.TAG_NAME, "table")
    assert len(tables) >= 8 and "Accuracy" in tables[0].text and "resnet18" in tables[0].text
    images = browser.find_elements(By.CSS_SELECTOR, "figure img")
    assert len(images) == 10
    assert all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
               for img in images), "every figure decodes"
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(not name.startswith(("http:", "https:")) for name in loaded), loaded
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
