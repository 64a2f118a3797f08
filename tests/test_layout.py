"""The project's shape: one source of configuration, an installable package, no path hacks or
import cycles, registries that feed the CLI (docs/ARCHITECTURE.md)."""
from __future__ import annotations

import ast
import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from benchmark import paths
from benchmark.cli.options import config_from_args
from benchmark.cli.parser import build_parser
from benchmark.config import AuditConfig, DataConfig, TrainConfig
from benchmark.lungseg import LungTrainConfig
from benchmark.pipeline.spec import JobSpec, spec_from_run
from tests.conftest import REPO

PACKAGES = ("benchmark", "dashboard")


def _python_files(*tops: str) -> list[Path]:
    return sorted(p for top in tops for p in (REPO / top).rglob("*.py"))


# --- one source of configuration ---------------------------------------------------------

def test_cli_defaults_are_the_config_defaults():
    """`run` with no flags builds exactly the dataclasses' defaults: no default is written twice."""
    args = build_parser().parse_args(["run"])
    assert config_from_args(DataConfig, args) == DataConfig()
    assert config_from_args(TrainConfig, args) == TrainConfig()
    assert config_from_args(AuditConfig, args) == AuditConfig()
    assert (args.device, args.checkpoint_dir, args.progress) == (JobSpec.device, JobSpec.checkpoint_dir, True)
    lungs = build_parser().parse_args(["lungs", "train"])
    assert config_from_args(LungTrainConfig, lungs) == LungTrainConfig()


def test_flags_reach_the_configs():
    args = build_parser().parse_args(["run", "--data", "phantom-clean", "--epochs", "2", "--no-progress",
                                      "--cam-methods", "GradCAM,hirescam@stride16", "--lungs-only"])
    assert config_from_args(DataConfig, args) == DataConfig(name="phantom-clean", lungs_only=True)
    assert config_from_args(TrainConfig, args).epochs == 2 and args.progress is False
    assert config_from_args(AuditConfig, args).cam_methods == ("gradcam", "hirescam@stride16")


def test_run_ids_and_stored_config_keep_their_contract():
    """The stored spec is flat (one key per option) and the run id is the one earlier versions gave
    the same options, so rerun-skipping recognises runs stored before the configs were split."""
    spec = JobSpec(model="shallow", data=DataConfig(n_phantom=60, image_size=64), train=TrainConfig(epochs=1))
    assert spec.run_id == "phantom-shallow-90e4cb340f"  # computed by the pre-split JobSpec
    flat = json.loads(json.dumps(spec.flat()))
    assert flat["data"] == "phantom" and flat["epochs"] == 1 and flat["cam_methods"] == list(AuditConfig.cam_methods)
    assert spec_from_run({"config_json": json.dumps(flat)}) == spec
    old_style = {"model": "shallow", "data": "phantom", "epochs": 1, "n_phantom": 60, "image_size": 64,
                 "cam_methods": ["gradcam"], "removed_option": 3}
    assert spec_from_run({"config_json": json.dumps(old_style)}).audit.cam_methods == ("gradcam",)


def test_phantom_presets_are_defined_once():
    from benchmark.data.phantom import phantom_presets
    from benchmark.data.presets import presets_of_kind
    assert set(phantom_presets()) == set(presets_of_kind("phantom")) == {"phantom", "phantom-shortcut",
                                                                          "phantom-clean", "phantom-half"}
    assert not re.search(r"p_marker\s*=\s*0\.9", (REPO / "benchmark/data/phantom.py").read_text())


def test_paths_resolve_argument_then_environment_then_default(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # relative defaults: nothing trained in ./checkpoints/lungseg here
    for var in (paths.ENV_DATA, paths.ENV_CACHE, paths.ENV_RESULTS_DB, paths.ENV_CHECKPOINTS, paths.ENV_SEGMENTER):
        monkeypatch.delenv(var, raising=False)
    assert paths.data_root() is None and paths.results_db() == Path("results.duckdb")
    assert paths.user_segmenter_stem() == Path("checkpoints/lungseg/lung_unet")
    assert paths.segmenter_stem() == paths.SHIPPED_SEGMENTER
    monkeypatch.setenv(paths.ENV_CHECKPOINTS, "/ck")
    monkeypatch.setenv(paths.ENV_DATA, "/data")
    assert paths.user_segmenter_stem() == Path("/ck/lungseg/lung_unet") and paths.data_root() == Path("/data")
    assert paths.data_root("/given") == Path("/given")
    monkeypatch.setenv(paths.ENV_SEGMENTER, "/seg/x")
    assert paths.segmenter_stem() == Path("/seg/x") and paths.segmenter_stem("y") == Path("y")


def test_environment_variables_are_read_in_one_module():
    readers = [str(p.relative_to(REPO)) for p in _python_files(*PACKAGES)
               if re.search(r"os\.environ|environ\.get\(|os\.getenv\(", p.read_text())]
    assert readers == ["benchmark/paths.py"]


# --- an installable package --------------------------------------------------------------

def _pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, _, version = line.partition("==")
            out[name.lower()] = version
    return out


def test_requirements_and_pyproject_agree():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = _pins(project["dependencies"] + project["optional-dependencies"]["test"])
    required = _pins((REPO / "requirements.txt").read_text().splitlines())
    assert declared == required
    assert all(required.values()), "every requirement is pinned"
    assert "-e ." in (REPO / "requirements.txt").read_text().splitlines()
    assert project["scripts"] == {"cxr-audit": "benchmark.cli:main",
                                  "cxr-audit-dashboard": "dashboard.__main__:main"}


def test_presets_are_package_data():
    assert paths.config_file("datasets.toml").is_file()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "configs/*.toml" in pyproject["tool"]["setuptools"]["package-data"]["benchmark"]


@pytest.mark.slow
def test_console_script_runs_the_cli():
    done = subprocess.run(["cxr-audit", "data", "list"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "phantom-clean" in done.stdout


def test_no_sys_path_manipulation():
    offenders = [str(p.relative_to(REPO)) for p in _python_files(*PACKAGES, "tests", "bench")
                 if re.search(r"sys\.path\.(insert|append)|sys\.path\[[^\]]*\]\s*=|sys\.path\s*\+?=",
                              p.read_text()) and p.name != "test_layout.py"]
    assert offenders == []


# --- no import cycles --------------------------------------------------------------------

def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:` (imports for annotations only)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _imports(path: Path, known: set[str]) -> set[str]:
    """Project modules a file imports, at any depth (function-level imports count too)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def test_no_import_cycles_between_modules():
    files = _python_files(*PACKAGES)
    known = {_module_name(p) for p in files}
    graph = {_module_name(p): _imports(p, known) for p in files}
    # a package's __init__ re-exporting its own submodules is not a cycle between modules
    for mod, deps in graph.items():
        graph[mod] = {d for d in deps if not mod.startswith(d + ".")}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])
    assert cycles == []


def test_no_shim_modules_left():
    for old in ("lungs", "commands", "commands_audit", "job", "runner", "train", "evaluate", "explain",
                "probes", "lungmasks", "metrics", "checkpoints", "device"):
        assert not (REPO / "benchmark" / f"{old}.py").exists(), old


# --- registries feed the CLI -------------------------------------------------------------

def test_cli_help_lists_every_registered_model_and_cam_method():
    from benchmark.cams.methods import list_cam_methods
    from benchmark.models import list_models
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    text = run.format_help().replace("\n", " ")
    text = re.sub(r"\s+", " ", text)
    for name in list_models() + list_cam_methods():
        assert re.search(rf"[\s(\[,]{re.escape(name)}[,\])\s]", text), name


def test_data_list_names_every_layout_and_preset(capsys):
    from benchmark.cli import main
    from benchmark.data.presets import presets
    from benchmark.data.sources import LAYOUTS
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in [*LAYOUTS, *presets()]:
        assert name in out, name


def test_a_new_source_layout_is_one_registration(tmp_path):
    from benchmark.data import sources
    from benchmark.data.records import ImageRecord

    @sources.register_layout("toy", lambda p: (p / "toy.txt").is_file(), "toy layout", dirs=("toy",))
    def load_toy(root):
        return [ImageRecord(path=str(root / "a.png"), key="a.png", label="normal", patient_id="p", source="toy")]

    try:
        (tmp_path / "toy").mkdir()
        (tmp_path / "toy" / "toy.txt").write_text("")
        assert sources.named_sources()["toy"] == ("toy",)
        assert [r.key for r in sources.find_source(tmp_path, "toy")] == ["a.png"]
    finally:
        del sources.LAYOUTS["toy"]


def test_job_spec_is_composed_of_the_configs():
    import typing
    hints = typing.get_type_hints(JobSpec)
    assert (hints["data"], hints["train"], hints["audit"]) == (DataConfig, TrainConfig, AuditConfig)
    from benchmark.cli.run import specs_from_args
    args = build_parser().parse_args(["run", "--models", "shallow,resnet18", "--epochs", "3"])
    specs = specs_from_args(args)
    assert [s.model for s in specs] == ["shallow", "resnet18"]
    assert all(s.train == TrainConfig(epochs=3) and s.data.image_size == 128 for s in specs)  # phantom preset size
