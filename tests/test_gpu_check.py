"""bench/gpu_check.py (the prepared GPU check) and bench/gpu_carry.py (what a loan carries), on the CPU:
its dry run writes every section, a failing or slow step is recorded and the next one runs, its
floors are DESIGN.md's, and the carried data subset keeps whole patients and is measured."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections import defaultdict

import pytest

from bench import gpu_carry, gpu_check
from tests.conftest import REPO, require

DESIGN = REPO.parent / "shared" / "docs" / "DESIGN.md"


def test_the_floors_are_design_mds():
    require(DESIGN.is_file(), f"DESIGN.md not found at {DESIGN}")
    assert gpu_check.design_floors(DESIGN.read_text()) == gpu_check.FLOORS


def test_the_tier_is_found_by_its_decorators_not_by_quotes():
    assert gpu_check.marks_cuda("import pytest\n\n@pytest.mark.cuda\ndef test_a(device): pass\n")
    assert gpu_check.marks_cuda("import pytest\npytestmark = [pytest.mark.cuda]\n")
    assert not gpu_check.marks_cuda('SOURCE = """\n@pytest.mark.cuda\ndef test_gpu(): pass\n"""\n')
    files = gpu_check.cuda_test_files()
    assert "tests/test_cuda.py" in files and "tests/test_ci_prerequisites.py" not in files


def test_a_step_past_its_budget_is_stopped_and_says_so():
    run = gpu_check.run_command([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(30)"],
                                0.5, dict(os.environ))
    assert run.status.startswith("timed out")
    assert run.seconds < 10 and "started" in run.output
    failed = gpu_check.run_command([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], 30,
                                   dict(os.environ))
    assert failed.status == "failed (rc 3)" and "boom" in failed.output


def test_a_failed_step_is_recorded_and_the_next_ones_run(tmp_path, monkeypatch):
    def fake(code: str):
        def make(ctx):
            def parse(run):
                run.verdict = "parsed"
                run.body.append("a table")
            return [sys.executable, "-c", code], {}, parse
        return make

    codes = ["import sys; sys.exit(3)", "print('two')", "print('three')", "print('four')", "print('five')"]
    monkeypatch.setattr(gpu_check, "STEPS", tuple((title, fake(code), 30) for (title, _, _), code
                                                  in zip(gpu_check.STEPS, codes)))
    monkeypatch.setattr(gpu_check, "machine_lines", lambda ctx: ["- card: none (test)"])
    summary = tmp_path / "s.md"
    assert gpu_check.main(["--summary", str(summary), "--work-dir", str(tmp_path / "w")]) == 1
    text = summary.read_text()
    assert not gpu_check.missing_sections(text)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "| parsed |" in line]
    assert len(rows) == 5 and "| failed (rc 3) |" in rows[0] and all("| ok |" in r for r in rows[1:])
    assert "five" in text  # the last step ran and its output is in the summary

    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    assert gpu_check.main(["--steps", "2", "--work-dir", str(tmp_path / "w")]) == 0
    assert "not run: not asked for" in (tmp_path / "out" / "gpu_check.md").read_text()


@pytest.mark.slow  # every step is a fresh interpreter importing torch: tens of seconds on a small CPU
def test_the_dry_run_writes_every_section(tmp_path):
    """bench/gpu_check.sh --dry-run: the tier collected, throughput, CAMs, ROAD and a phantom `paper`
    subset on the CPU at tiny sizes; every step ok and every section in the one summary."""
    summary = tmp_path / "gpu_check.md"
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry-run", "--summary", str(summary),
                           "--work-dir", str(tmp_path / "work")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    text = summary.read_text()
    assert not gpu_check.missing_sections(text)
    steps = [line for line in text.splitlines() if line.startswith("| ") and line.split("|")[1].strip()[:2]
             in {"1.", "2.", "3.", "4.", "5."}]
    assert len(steps) == 5 and all("| ok |" in line for line in steps), steps
    assert "dry run" in text and "tests collected" in text
    assert "| shallow | 32 |" in text          # a throughput row
    assert "| shallow | 32 | gradcam |" in text  # a CAM row
    assert "wall / floor" in text and "phantom-shortcut" in text


# --- what a loan carries ---

def test_whole_patients_are_kept_up_to_the_cap():
    rows = [{"patient_id": f"p{i // 3}", "label": "a" if i < 12 else "b", "image": f"{i}.jpg"} for i in range(21)]
    kept = gpu_carry.pick_patients(rows, 7, seed=0)
    per_label, per_patient = defaultdict(int), defaultdict(int)
    for row in kept:
        per_label[row["label"]] += 1
        per_patient[row["patient_id"]] += 1
    assert per_label == {"a": 6, "b": 6} and set(per_patient.values()) == {3}
    assert kept == gpu_carry.pick_patients(rows, 7, seed=0) != gpu_carry.pick_patients(rows, 7, seed=1)


def test_the_carried_subset_loads_as_the_pack_does(cxr_root, tmp_path):
    from benchmark.data.datasets import load_dataset

    counts = gpu_carry.build(cxr_root, None, tmp_path, per_class=4, seed=0)
    assert counts["cohen"] == 527 and counts["nih"] == 1000 and 0 < counts["kermany"] <= 12
    with open(tmp_path / "cxr" / "kermany" / "manifest.csv", newline="") as fh:
        kept = list(csv.DictReader(fh))
    with open(cxr_root / "kermany" / "manifest.csv", newline="") as fh:
        every = list(csv.DictReader(fh))
    patients = {r["patient_id"] for r in kept}
    assert len(kept) == sum(r["patient_id"] in patients for r in every)  # whole patients
    assert all((tmp_path / "cxr" / "kermany" / r["image"]).is_file() for r in kept)
    ds = load_dataset("cohen-kermany", data_root=tmp_path / "cxr")
    assert sum(r.source == "kermany" for r in ds.records) == len(kept)
    sizes = gpu_carry.sent_bytes(REPO, [tmp_path])
    assert sizes["working tree"] > 0 and sizes[str(tmp_path)] > 15 * 2**20  # cohen and nih, whole
