"""The report's section "Does the audit predict external failure?": its per-run table, its
correlation table and its figure in HTML and Markdown, the external AUC columns of Table 1, and
the empty state when no external set is stored."""
from __future__ import annotations

import re

import pytest

from benchmark.analysis import external as ex
from benchmark.analysis import replication, seeds
from benchmark.report import html, markdown
from benchmark.report.build import build_report
from benchmark.store import queries, reader
from tests.fixtures_db import FakeResultsSpec, build_results_db

SECTION = "Does the audit predict external failure?"
SET = "external-covid-normal"
MODELS = ("shallow", "resnet18", "vgg16", "alexnet", "resnet50", "densenet201")


def _section(report):
    return next(s for s in report.sections if s.title == SECTION)


def _html_section(text: str) -> str:
    start = text.index(f"{SECTION}</h2>")
    return text[start:text.index("<h2", start)]


@pytest.fixture(scope="module")
def with_external(tmp_path_factory):
    spec = FakeResultsSpec(models=MODELS, methods=("gradcam",), n_test=6, external_sets=(SET,))
    db = build_results_db(tmp_path_factory.mktemp("ext-report"), spec)
    return db, build_report(db, n_boot=10)


@pytest.fixture(scope="module")
def without_external(tmp_path_factory):
    spec = FakeResultsSpec(datasets=("phantom-shortcut",), models=("shallow", "resnet18"), methods=("gradcam",),
                           n_test=6)
    db = build_results_db(tmp_path_factory.mktemp("no-ext-report"), spec)
    return db, build_report(db, n_boot=10)


@pytest.mark.slow  # builds a whole report (seconds)
def test_section_has_the_per_run_table_the_correlations_and_a_figure(with_external):
    db, report = with_external
    blocks = _section(report).blocks
    per_run = next(b for b in blocks if getattr(b, "title", "").startswith("Table 5."))
    corr = next(b for b in blocks if getattr(b, "title", "").startswith("Table 6."))
    figures = [b for b in blocks if hasattr(b, "png")]
    assert len(figures) == 1 and SET in figures[0].title and figures[0].png[:8] == b"\x89PNG\r\n\x1a\n"

    frame = per_run.frame
    assert len(frame) == 2 * len(MODELS)  # one row per run scored on the set
    for header in ("Model", "Trained on", "External set", "Internal AUC", "External AUC", "AUC drop",
                   "Bal. acc. drop", "Off-set share", "Lung mass - uniform", "Focus score", "Pointing game",
                   "Acc. lungs removed", "Acc. lungs only", "Source AUC", "Sanity rank corr.", "Run id"):
        assert header in frame.columns, header
    with reader(db) as con:
        stored = ex.external_frame(queries.external_metrics(con)).set_index("run_id")
    row = frame[frame["Run id"] == "phantom-shortcut-resnet18"].iloc[0]
    expected = stored.loc["phantom-shortcut-resnet18"]
    assert float(row["AUC drop"]) == pytest.approx(expected.auc_drop, abs=1e-3)
    assert row["External AUC"] == (f"{expected.set_auc:.3f} [{expected.set_auc_ci_low:.3f}, "
                                   f"{expected.set_auc_ci_high:.3f}]")
    assert float(row["Off-set share"]) == pytest.approx(expected.off_set_share, abs=1e-3)

    table = corr.frame
    assert set(table["Measure"]) == {m.label for m in ex.AUDIT_MEASURES}
    lung = table[(table["Measure"] == "lung mass - uniform map") & (table["Drop"] == "AUC drop")].iloc[0]
    # in the fixture the shortcut learners (maps off the lungs) are the ones that fail elsewhere
    assert float(lung["Spearman rho"]) < -0.5 and lung["Expected sign"] == "negative"
    assert lung["Runs"] == str(2 * len(MODELS)) and lung["95% CI"].startswith("[-")
    assert lung["Verdict"].startswith("as expected") and "only 12 runs" in lung["Note"]
    assert any("Few runs mean wide CIs" in n for n in corr.notes)
    # the fixture's runs come from two training sets of 6: each one's own rho, or blank where it has none
    parts = lung["Within each training set"].split("; ")
    assert len(parts) == 2 and all(p.endswith("(6)") for p in parts), parts
    assert any("ranks the training sets, not the models" in n for n in corr.notes)
    assert not any(getattr(b, "title", "").startswith("Table 6b.") for b in blocks)  # one seed: nothing to say
    # Table 1 shows the drop at a glance
    study = report.tables()[0]
    assert {"Internal AUC (set's classes)", "External AUC", "AUC drop", "External set"} <= set(study.frame.columns)
    assert set(study.frame["External set"]) == {SET}


@pytest.mark.slow  # builds a whole report (seconds)
def test_section_renders_in_html_and_markdown(with_external):
    _, report = with_external
    text = html.render(report)
    section = _html_section(text)
    assert "<th>AUC drop</th>" in section and "<th>Spearman rho</th>" in section
    assert section.count('<img src="data:image/png;base64,') == 1
    assert "phantom-shortcut-resnet18" in section
    md, files = markdown.render(report, "report_files")
    part = md[md.index(SECTION):]
    part = part[:part.index("\n## ")]
    assert "| Model | Trained on | External set | Internal AUC | External AUC | AUC drop |" in part
    assert "| External set | Measure | Drop | Expected sign | Spearman rho | 95% CI |" in part
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", part)
    assert links == [f"report_files/external-drop-{SET}.png"] and f"external-drop-{SET}.png" in files


@pytest.mark.slow  # builds a whole report (seconds)
def test_without_external_sets_the_section_says_so(without_external):
    _, report = without_external
    blocks = _section(report).blocks
    assert not any(hasattr(b, "png") or hasattr(b, "frame") for b in blocks)
    assert "No external set is scored with AUCs yet" in blocks[-1].text
    text = html.render(report)
    assert "No external set is scored with AUCs yet" in _html_section(text)
    md, _ = markdown.render(report, "report_files")
    assert "No external set is scored with AUCs yet" in md
    study = report.tables()[0]
    assert "External AUC" not in study.frame.columns  # the paper's table stays the paper's


@pytest.mark.slow  # builds a whole report (seconds)
def test_with_several_seeds_the_section_says_whether_the_drop_repeats(tmp_path):
    spec = FakeResultsSpec(models=MODELS[:4], methods=("gradcam",), n_test=6, external_sets=(SET,), seeds=(0, 1))
    db = build_results_db(tmp_path, spec)
    blocks = _section(build_report(db, n_boot=10)).blocks
    table = next(b for b in blocks if getattr(b, "title", "").startswith("Table 6b.")).frame
    with reader(db) as con:
        drops = ex.drop_table(queries.external_metrics(con), queries.run_details(con))
        groups = seeds.seed_groups(queries.run_details(con))
    # the report's rows are the analysis's, over both training sets of the fixture, 4 models x 2 seeds each
    assert set(table["Trained on"]) == set(spec.datasets) and set(table["External set"]) == {SET, "(own test split)"}
    assert set(table[table["External set"] == SET]["Quantity"]) == {"AUC drop", "external AUC", "bal.-acc. drop"}
    baseline = replication.AUDIT_QUANTITIES["test_accuracy"]  # the test-accuracy row, by its one label
    assert baseline in set(table[table["External set"] == "(own test split)"]["Quantity"])
    drop = table[(table["Quantity"] == "AUC drop") & (table["Trained on"] == spec.datasets[0])].iloc[0]
    assert drop["Models (runs)"] == "4 (8)" and drop["Seed pairs"] == "1"
    expected = replication.seed_replication(drops, groups)
    expected = expected[(expected.quantity == "auc_drop") & (expected.dataset == spec.datasets[0])].iloc[0]
    assert float(drop["ICC(1)"]) == pytest.approx(expected.icc, abs=0.006)
    assert float(drop["Seed-vs-seed rho"]) == pytest.approx(expected.seed_rho, abs=0.006)
