"""One GPU check, at most 8 minutes, one summary file (markdown) for bench/RESULTS.md.

Steps, each a subprocess with its own time budget (a step that fails or runs out of time is
recorded and the next one runs; all of them together stop at --total-budget):

1. `pytest -m cuda` on the test files that hold the cuda tier, with CXR_TEST_DEVICE=cuda and CI=true
   (a missing GPU, data pack or external pack fails instead of skipping);
2. training throughput per roster architecture (bench/train_throughput.py) against the floors of
   DESIGN.md "Performance method" (measured on an H200; FLOORS below, checked against DESIGN.md by
   tests/test_gpu_check.py);
3. the fast CAM path against pytorch-grad-cam (bench/cam_throughput.py): equal maps, speed-up;
4. ROAD's imputer on the device against pytorch-grad-cam's (bench/road_speed.py);
5. a `paper` subset (bench/paper_grid.py: a few models, two datasets, capped images, the external
   matrix) with its wall time against its floor.

The summary names the card (nvidia-smi), torch and the commit. `--dry-run` runs every step on the
CPU at tiny sizes (the tier collected, not run; phantom data for the paper subset) and checks that
the summary holds every section; tests/test_gpu_check.py runs it.

    bash bench/gpu_check.sh                     # the GPU machine: wheels, carried data, then this script
    python bench/gpu_check.py --dry-run --summary /tmp/gpu_check.md
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"

#: Training images/s per architecture on an H200 (bf16, channels_last, batch 128): DESIGN.md
#: "Performance method". densenet201's fp32 figure (968) is its own note there.
FLOORS = {"alexnet": 30085, "vgg16": 3460, "vgg19": 3041, "googlenet": 5866, "resnet18": 11940, "resnet50": 4386,
          "resnet101": 2693, "inception_v3": 2273, "inception_resnet_v2": 1017, "densenet201": 847,
          "xception": 1785, "mobilenet_v2": 6702, "squeezenet1_1": 13113, "shufflenet_v2_x1_0": 5124}
FLOOR_SHARE = 0.9          # at or above 90 % of its floor counts as at the floor
CAM_SPEEDUP_GOAL = 3.0     # fast path vs pytorch-grad-cam on a GPU (bench/RESULTS.md, issue 12)
ROAD_SPEEDUP_GOAL = 20.0   # torch imputer on a GPU vs pytorch-grad-cam's, at 224 px (issue 12)
ROAD_FILL_TOL = 1e-4       # largest filled-pixel difference (tests/test_road_torch.py FILL_TOL)
PAPER_RATIO_GOAL = 1.4     # grid wall / floor for the whole `paper` grid on an H200 (issue 12)
TOTAL_BUDGET_S = 480
TAIL_LINES = 40

#: The section titles the summary must hold, in order (the dry run checks them).
SECTIONS = ("Machine", "Steps", "1. pytest -m cuda", "2. Training throughput against the floors",
            "3. Fast CAM against pytorch-grad-cam", "4. ROAD on the device", "5. A paper subset against its floor")


def design_floors(text: str) -> dict[str, int]:
    """The training floors written in DESIGN.md's "Performance method" paragraph, by roster name."""
    section = text.split("## Performance method", 1)[1].split("JPEG decode", 1)[0]
    body = section.split("img/s):", 1)[1]
    floors = {name: int(value) for name, value in re.findall(r"([a-z][a-z0-9_]*)(?:@\d+)?\s+(\d+)", body)}
    if "shufflenet_v2" in floors:  # DESIGN.md names the family, the roster the width
        floors["shufflenet_v2_x1_0"] = floors.pop("shufflenet_v2")
    return floors


# --- running a step ---

@dataclasses.dataclass
class StepRun:
    status: str = "not run"     # ok | failed (rc N) | timed out | not run: ...
    seconds: float = 0.0
    budget_s: float = 0.0
    output: str = ""
    verdict: str = ""
    body: list[str] = dataclasses.field(default_factory=list)  # markdown lines of the step's section


def run_command(argv: list[str], budget_s: float, env: dict[str, str]) -> StepRun:
    """Run `argv` (its own process group) for at most `budget_s`; stdout and stderr together."""
    run = StepRun(budget_s=budget_s)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=budget_s)
        run.status = "ok" if proc.returncode == 0 else f"failed (rc {proc.returncode})"
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, _ = proc.communicate()
        run.status = f"timed out after {budget_s:.0f} s"
    run.seconds = time.perf_counter() - start
    run.output = out or ""
    return run


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(text: str, n: int = TAIL_LINES) -> str:
    lines = [line for line in text.splitlines() if not line.startswith("INFO")]
    return "\n".join(lines[-n:])


def markdown_rows(text: str, first_cell: str | None = None) -> list[list[str]]:
    """The data rows of the markdown tables a bench script printed (header and rule left out)."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not (line.startswith("|") and line.endswith("|")) or set(line) <= set("|- "):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if first_cell is not None and cells[0] == first_cell:
            continue
        rows.append(cells)
    return rows


# --- the steps ---

@dataclasses.dataclass
class Context:
    dry_run: bool
    work: Path
    python: str
    env: dict[str, str]
    data_root: str | None
    external_root: str | None
    paper_models: str
    paper_datasets: str
    paper_max_per_class: int


def marks_cuda(source: str) -> bool:
    """Whether a test module marks something cuda: a decorator, or a module's `pytestmark` (a test
    whose source only quotes the marker, as tests/test_ci_prerequisites.py does, does not count)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if any(ast.unparse(d).startswith("pytest.mark.cuda") for d in node.decorator_list):
                return True
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in node.targets):
            if "pytest.mark.cuda" in ast.unparse(node.value):
                return True
    return False


def cuda_test_files() -> list[str]:
    """The test files that hold the cuda tier, relative to the repository."""
    return [str(p.relative_to(REPO)) for p in sorted((REPO / "tests").glob("test_*.py")) if marks_cuda(p.read_text())]


def step_tests(ctx: Context) -> tuple[list[str], dict[str, str], Callable[[StepRun], None]]:
    argv = [ctx.python, "-m", "pytest", "-m", "cuda", "-q", "-rfEs", "-p", "no:cacheprovider", *cuda_test_files()]
    env = {"CI": "true", "CXR_TEST_DEVICE": "cuda"}
    if ctx.dry_run:  # the tier's bodies on the CPU are tests/test_cuda.py's own test; here: it collects
        argv.insert(3, "--collect-only")
        env["CXR_TEST_DEVICE"] = "cpu"

    def parse(run: StepRun) -> None:
        last = next((line for line in reversed(run.output.splitlines()) if line.strip()), "")
        run.body.append(f"Result: `{last.strip('= ')}`")
        counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|errors?|skipped)", last)}
        if ctx.dry_run:
            collected = re.search(r"(\d+)(?:/\d+)? tests? collected", run.output)
            run.verdict = (f"{collected.group(1)} tests collected (dry run: not run)" if collected
                           else "nothing collected")
            if not collected and run.status == "ok":
                run.status = "failed (nothing collected)"
        else:
            run.verdict = ", ".join(f"{n} {w}" for w, n in counts.items()) or "no result line"
            if counts.get("skipped") and run.status == "ok":
                run.status = "failed (tests skipped on the GPU)"
    return argv, env, parse


def step_throughput(ctx: Context):
    out_json = ctx.work / "train_throughput.json"
    if ctx.dry_run:
        args = ["--models", "shallow,resnet18", "--device", "cpu", "--batch-size", "2", "--steps", "1", "--warmup", "0",
                "--image-size", "32"]
    else:
        args = ["--models", "paper", "--batch-size", "128", "--steps", "8", "--warmup", "3"]
    argv = [ctx.python, str(BENCH / "train_throughput.py"), *args, "--json", str(out_json)]

    def parse(run: StepRun) -> None:
        rows = markdown_rows(run.output, first_cell="model")
        run.body += ["| model | input | images/s | DESIGN.md floor (H200) | share of the floor |",
                     "|---|---|---|---|---|"]
        low, measured = [], 0
        for cells in rows:
            name, size, rate = cells[0], cells[1], float(cells[2])
            floor = FLOORS.get(name)
            measured += 1
            if ctx.dry_run or floor is None:
                share = "n/a (CPU dry run)" if ctx.dry_run else "no floor"
            else:
                share = f"{rate / floor:.0%}"
                if rate < FLOOR_SHARE * floor:
                    low.append(f"{name} {rate / floor:.0%}")
            run.body.append(f"| {name} | {size} | {rate:.1f} | {floor if floor else ''} | {share} |")
        missing = [m for m in FLOORS if m not in {c[0] for c in rows}] if not ctx.dry_run else []
        if missing:
            run.body.append(f"\nNot measured (the step's time ran out first): {', '.join(missing)}.")
        run.verdict = (f"{measured} measured (dry run)" if ctx.dry_run else
                       f"{measured - len(low)} of {measured} at >= {FLOOR_SHARE:.0%} of their floor"
                       + (f"; below: {', '.join(low)}" if low else ""))
        if not rows and run.status == "ok":
            run.status = "failed (no rows)"
    return argv, {}, parse


def step_cams(ctx: Context):
    if ctx.dry_run:
        args = ["--models", "shallow", "--n", "4", "--batch-size", "4", "--repeats", "1", "--image-size", "32",
                "--device", "cpu"]
    else:
        args = ["--models", "resnet18,resnet50,densenet201,xception", "--n", "512", "--batch-size", "128",
                "--repeats", "3"]
    argv = [ctx.python, str(BENCH / "cam_throughput.py"), *args]

    def parse(run: StepRun) -> None:
        rows = [r for r in markdown_rows(run.output, first_cell="model") if len(r) == 8 and r[5].endswith("x")]
        skipped = [r for r in markdown_rows(run.output, first_cell="model") if r[3].startswith("skipped")]
        run.body += ["| model | input | method | fast img/s | pytorch-grad-cam img/s | speed-up | max abs diff "
                     "| equal |", "|---|---|---|---|---|---|---|---|"]
        run.body += ["| " + " | ".join(r) + " |" for r in rows + skipped]
        unequal = [f"{r[0]} {r[2]}" for r in rows if r[7] != "ok"]
        speedups = [float(r[5].rstrip("x")) for r in rows]
        slow = [f"{r[0]} {r[2]} {r[5]}" for r in rows if float(r[5].rstrip("x")) < CAM_SPEEDUP_GOAL]
        if not rows:
            run.verdict = "no rows"
            if run.status == "ok":
                run.status = "failed (no rows)"
            return
        run.verdict = (f"{len(rows) - len(unequal)} of {len(rows)} equal (<= 1e-3); speed-up "
                       f"{min(speedups):.2f}x-{max(speedups):.2f}x")
        if not ctx.dry_run:
            run.verdict += f"; below the {CAM_SPEEDUP_GOAL:g}x goal: {', '.join(slow) or 'none'}"
    return argv, {}, parse


def step_road(ctx: Context):
    if ctx.dry_run:
        args = ["--sizes", "16", "--n", "1", "--ref-n", "1", "--repeats", "1", "--device", "cpu"]
    else:
        args = ["--sizes", "80,224", "--n", "32", "--ref-n", "1", "--repeats", "2", "--device", "cuda"]
    argv = [ctx.python, str(BENCH / "road_speed.py"), *args]

    def parse(run: StepRun) -> None:
        rows = [r for r in markdown_rows(run.output, first_cell="size") if len(r) == 6]
        run.body += ["| size | images (torch / pgc) | pytorch-grad-cam s/image | torch s/image | speed-up | "
                     "max abs fill diff |", "|---|---|---|---|---|---|"]
        run.body += ["| " + " | ".join(r) + " |" for r in rows]
        if not rows:
            run.verdict = "no rows"
            if run.status == "ok":
                run.status = "failed (no rows)"
            return
        worst = max(float(r[5]) for r in rows)
        biggest = max(rows, key=lambda r: int(r[0]))
        run.verdict = f"fills within {worst:.1e} ({'ok' if worst <= ROAD_FILL_TOL else 'ABOVE'} {ROAD_FILL_TOL:g})"
        if not ctx.dry_run:
            speedup = float(biggest[4].rstrip("x"))
            run.verdict += (f"; {speedup:.1f}x at {biggest[0]} px "
                            f"({'meets' if speedup >= ROAD_SPEEDUP_GOAL else 'below'} the {ROAD_SPEEDUP_GOAL:g}x goal)")
        if worst > ROAD_FILL_TOL and run.status == "ok":
            run.status = "failed (fills differ)"
    return argv, {}, parse


def step_paper(ctx: Context):
    out_json, db = ctx.work / "paper.json", ctx.work / "paper.duckdb"
    common = ["--experiment", "paper", "--seeds", "0", "--db", str(db), "--checkpoint-dir", str(ctx.work / "ck"),
              "--cache-dir", str(ctx.work / "cache"), "--json", str(out_json)]
    if ctx.dry_run:
        args = ["--models", "shallow", "--datasets", "phantom-shortcut,phantom-clean", "--n-phantom", "24",
                "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--faithfulness-sample", "0",
                "--n-boot", "20", "--device", "cpu", "--throughput-steps", "1"]
    else:
        args = ["--models", ctx.paper_models, "--datasets", ctx.paper_datasets,
                "--max-per-class", str(ctx.paper_max_per_class), "--device", "cuda"]
    roots = [*(["--data-root", ctx.data_root] if ctx.data_root else []),
             *(["--external-root", ctx.external_root] if ctx.external_root else [])]
    argv = [ctx.python, str(BENCH / "paper_grid.py"), *common, *args, *roots]

    def parse(run: StepRun) -> None:
        run.body.append(f"Subset: `bench/paper_grid.py --experiment paper --seeds 0 {' '.join(args)}` "
                        "(its DB, checkpoints, decode cache and figures in a scratch folder)")
        if not out_json.is_file():
            run.verdict = "no figures written"
            if run.status == "ok":
                run.status = "failed (no figures)"
            return
        figures = json.loads(out_json.read_text())
        size = db.stat().st_size if db.is_file() else 0
        run.body += ["", "| figure | value |", "|---|---|",
                     f"| runs done | {figures['runs']} |",
                     f"| wall s (grid + external matrix) | {figures['wall_s']:.1f} |",
                     f"| floor s (n_train x epochs run / images/s) | {figures['floor_s']:.1f} |",
                     f"| wall / floor | {figures['ratio']:.2f}x |",
                     f"| GPU busy share | {figures['gpu_busy']} |",
                     f"| results DB | {size / 2**20:.1f} MiB "
                     f"({size / max(figures['runs'], 1) / 2**20:.2f} MiB a run) |",
                     "", "| phase | seconds |", "|---|---|"]
        run.body += [f"| {phase} | {sec:.1f} |" for phase, sec in figures["phases_s"].items()]
        run.verdict = (f"{figures['runs']} runs, wall {figures['wall_s']:.0f} s, {figures['ratio']:.2f}x its floor"
                       + ("" if ctx.dry_run else f" (the whole grid's goal: <= {PAPER_RATIO_GOAL:g}x on an H200; "
                                                 "a small subset carries more fixed cost per run)"))
    return argv, {}, parse


STEPS = (("1. pytest -m cuda", step_tests, 100), ("2. Training throughput against the floors", step_throughput, 120),
         ("3. Fast CAM against pytorch-grad-cam", step_cams, 60), ("4. ROAD on the device", step_road, 50),
         ("5. A paper subset against its floor", step_paper, 130))
DRY_BUDGET_S = 120  # per step in a dry run: generous for a loaded CPU, still seconds when quiet


# --- the machine ---

def machine_lines(ctx: Context) -> list[str]:
    lines = []
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            card = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            card = f"nvidia-smi failed: {exc}"
        lines.append(f"- card (nvidia-smi: name, memory, driver): {card or 'none listed'}")
    else:
        lines.append("- card: no nvidia-smi on this machine" + (" (CPU dry run)" if ctx.dry_run else ""))
    probe = ("import sys, torch, torchvision, timm; cuda = torch.cuda.is_available(); "
             "print(f'python {sys.version.split()[0]}; torch {torch.__version__} (CUDA {torch.version.cuda}), "
             "torchvision {torchvision.__version__}, timm {timm.__version__}; torch sees: ' + "
             "(torch.cuda.get_device_name(0) if cuda else 'no CUDA device'))")
    try:
        versions = subprocess.run([ctx.python, "-c", probe], capture_output=True, text=True, timeout=120,
                                  cwd=REPO, env=ctx.env, stdin=subprocess.DEVNULL)
        lines.append(f"- {versions.stdout.strip() or versions.stderr.strip()[-300:]}")
    except (OSError, subprocess.SubprocessError) as exc:
        lines.append(f"- versions: {exc}")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=30).stdout.strip()
        lines.append(f"- commit {commit or 'unknown'}" + (" plus uncommitted changes" if dirty else ""))
    except (OSError, subprocess.SubprocessError):
        lines.append("- commit: unknown (no git)")
    lines.append(f"- host {platform.node()}, {os.cpu_count()} CPUs; data {ctx.data_root or 'unset'}, "
                 f"external {ctx.external_root or 'unset'}")
    return lines


# --- the summary ---

def write_summary(path: Path, ctx: Context, machine: list[str], runs: list[tuple[str, StepRun]], started: str,
                  wall: float, total_budget: float) -> None:
    mode = ("dry run: every step on the CPU at tiny sizes; no number here is a GPU measurement" if ctx.dry_run
            else "full")
    out = ["## GPU check (bench/gpu_check.py)", "", f"Started {started}; {mode}; total wall {wall:.0f} s "
           f"(budget {total_budget:.0f} s).", "", "### Machine", "", *machine, "", "### Steps", "",
           "| step | status | seconds | budget s | verdict |", "|---|---|---|---|---|"]
    out += [f"| {title} | {run.status} | {run.seconds:.0f} | {run.budget_s:.0f} | {run.verdict} |"
            for title, run in runs]
    for title, run in runs:
        out += ["", f"### {title}", "", f"Status: {run.status}, {run.seconds:.0f} s of {run.budget_s:.0f} s.", ""]
        out += run.body
        if run.output:
            out += ["", "<details><summary>output (last lines)</summary>", "", "```text", tail(run.output), "```",
                    "", "</details>"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")


def missing_sections(text: str) -> list[str]:
    return [title for title in SECTIONS if f"### {title}\n" not in text]


def default_summary() -> Path:
    return Path(os.environ["OUT"]) / "gpu_check.md" if os.environ.get("OUT") else Path("gpu_check.md")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--summary", type=Path, default=None, help="the summary file (default: $OUT/gpu_check.md when "
                    "$OUT is set, else ./gpu_check.md)")
    ap.add_argument("--dry-run", action="store_true", help="every step on the CPU at tiny sizes (seconds)")
    ap.add_argument("--total-budget", type=float, default=TOTAL_BUDGET_S, help="seconds for all steps together")
    ap.add_argument("--steps", default=None, help="run only these steps (comma list of numbers, e.g. 1,5)")
    ap.add_argument("--work-dir", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    ap.add_argument("--data-root", default=os.environ.get("CXR_DATA"))
    ap.add_argument("--external-root", default=os.environ.get("CXR_EXTERNAL"))
    ap.add_argument("--paper-models", default="shallow,resnet18,densenet201,xception")
    ap.add_argument("--paper-datasets", default="cohen-nih,covid-normal")
    ap.add_argument("--paper-max-per-class", type=int, default=60)
    args = ap.parse_args(argv)

    summary = args.summary or default_summary()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    if args.dry_run:
        env["CXR_CACHE"] = str(work / "cache")
    ctx = Context(dry_run=args.dry_run, work=work, python=sys.executable, env=env, data_root=args.data_root,
                  external_root=args.external_root, paper_models=args.paper_models,
                  paper_datasets=args.paper_datasets, paper_max_per_class=args.paper_max_per_class)
    wanted = {int(s) for s in args.steps.split(",")} if args.steps else None

    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    deadline = t0 + args.total_budget
    machine = machine_lines(ctx)
    runs: list[tuple[str, StepRun]] = []
    for number, (title, make, budget) in enumerate(STEPS, start=1):
        if wanted is not None and number not in wanted:
            runs.append((title, StepRun(status="not run: not asked for (--steps)")))
            continue
        left = deadline - time.perf_counter()
        budget = min(DRY_BUDGET_S if args.dry_run else budget, left)
        if budget < 10:
            runs.append((title, StepRun(status=f"not run: {max(left, 0):.0f} s left of the total budget")))
            continue
        step_argv, step_env, parse = make(ctx)
        print(f"== {title} (budget {budget:.0f} s): {' '.join(step_argv)}", flush=True)
        run = run_command(step_argv, budget, {**env, **step_env})
        try:
            parse(run)
        except (ValueError, KeyError, IndexError) as exc:  # a bench script changed its output
            run.verdict = f"could not read the output: {type(exc).__name__}: {exc}"
            if run.status == "ok":
                run.status = "failed (output not understood)"
        print(f"   {run.status} in {run.seconds:.0f} s: {run.verdict}", flush=True)
        runs.append((title, run))
    wall = time.perf_counter() - t0
    write_summary(summary, ctx, machine, runs, started, wall, args.total_budget)
    print(f"summary: {summary}")
    missing = missing_sections(summary.read_text())
    if missing:
        print(f"the summary lacks sections: {missing}", file=sys.stderr)
        return 2
    asked = [run for (title, run), n in zip(runs, range(1, len(STEPS) + 1)) if wanted is None or n in wanted]
    return 0 if all(run.status == "ok" for run in asked) else 1


if __name__ == "__main__":
    raise SystemExit(main())
