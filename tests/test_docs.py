"""The docs stay true to the code: README.md and docs/*.md link only to files that exist, name only
flags some parser takes and `CXR_*` variables that benchmark/paths.py reads (or, for the test
suite's own, tests/conftest.py); the README stays short; the top-level --help lists every
registered command; and docs/contract.md names only tables and columns that
benchmark/store/schema.py creates.

Which flags count: a long option (`--name`) named anywhere in those files must be an option of
the benchmark CLI (any command or subcommand), of the dashboard launcher (`python -m dashboard`),
or of a script in bench/ (its `add_argument` calls). A dotted one (`--server.port`) is a
streamlit config option and must be one streamlit defines. Other tools' flags the docs name are
listed in FOREIGN_FLAGS with their tool; pytest's among them. Short options (`-q`, `-m`) are
not checked.
"""
from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import duckdb

from tests.conftest import ENV_TEST_DEVICE, REPO

README = REPO / "README.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]
CONTRACT = REPO / "docs" / "contract.md"
MAX_README_LINES = 160
# README's test command: two pytest-xdist workers, each test file on one of them; .ci/run adds -rfEs
TEST_COMMAND = "python -m pytest -q -n 2 --dist loadfile tests"

#: long options of other tools that the docs name, by tool (not options of this project)
FOREIGN_FLAGS = {
    "pytest": {"--durations", "--dist", "--collect-only"},
    "ray start": {"--head", "--port", "--address", "--num-gpus"},
}

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][A-Za-z0-9_.-]*[A-Za-z0-9]")
VARIABLE = re.compile(r"\bCXR_[A-Z][A-Z0-9_]*")


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", _text(path), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)}


def test_every_relative_link_resolves():
    broken = []
    for doc in DOCS:
        for target in LINK.findall(_text(doc)):
            if re.match(r"^[a-z]+:", target):
                continue  # http:, https:, mailto:
            file_part, _, anchor = target.partition("#")
            dest = (doc.parent / file_part).resolve() if file_part else doc
            if not dest.exists():
                broken.append(f"{doc.relative_to(REPO)}: {target} (no such file)")
                continue
            if anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{doc.relative_to(REPO)}: {target} (no heading with that anchor)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def _parser_flags(parser: argparse.ArgumentParser) -> set[str]:
    flags = set()
    for action in parser._actions:
        flags.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _parser_flags(sub)
    return flags


def _bench_flags() -> set[str]:
    """Every `--flag` literal passed to an `add_argument` call in bench/*.py."""
    flags = set()
    for script in (REPO / "bench").glob("*.py"):
        for node in ast.walk(ast.parse(_text(script))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                flags |= {a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")}
    return flags


def _known_flags() -> set[str]:
    from benchmark.cli.parser import build_parser
    from dashboard.__main__ import build_parser as dashboard_parser

    foreign = set().union(*FOREIGN_FLAGS.values())
    return _parser_flags(build_parser()) | _parser_flags(dashboard_parser()) | _bench_flags() | foreign


def _streamlit_option_exists(name: str) -> bool:
    from streamlit import config

    try:
        config.get_option(name)
    except RuntimeError:
        return False
    return True


def test_every_flag_the_docs_name_exists():
    known = _known_flags()
    unknown = []
    for doc in DOCS:
        for flag in sorted(set(FLAG.findall(_text(doc)))):
            if "." in flag:
                ok = _streamlit_option_exists(flag[2:])
            else:
                ok = flag in known
            if not ok:
                unknown.append(f"{doc.relative_to(REPO)}: {flag}")
    assert not unknown, "flags no parser takes:\n" + "\n".join(unknown)


def test_every_variable_the_docs_name_is_read_in_paths():
    from benchmark import paths

    read = {value for name, value in vars(paths).items() if name.startswith("ENV_")}
    read.add(ENV_TEST_DEVICE)  # the one the test suite itself reads (tests/conftest.py: the cuda tier's device)
    unknown = [f"{doc.relative_to(REPO)}: {var}" for doc in DOCS for var in sorted(set(VARIABLE.findall(_text(doc))))
               if var not in read]
    assert not unknown, "variables benchmark/paths.py does not read:\n" + "\n".join(unknown)


def test_readme_is_short_and_keeps_the_ci_test_command():
    lines = _text(README).splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail to docs/"
    assert TEST_COMMAND in lines
    ci = _text(REPO / ".ci" / "run")  # runs the README's test command, after ruff
    assert "ruff check ." in ci
    assert TEST_COMMAND.replace("python ", "python3 ").replace(" tests", " -rfEs tests") in ci


def test_top_level_help_lists_every_registered_command():
    from benchmark.cli import COMMANDS, command_names
    from benchmark.cli.parser import build_parser

    parser = build_parser()
    text = parser.format_help()
    assert all(name in text for name in command_names())
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert list(sub.choices) == command_names()
    for command, subcommand in COMMANDS:
        if subcommand is not None:
            (nested,) = [a for a in sub.choices[command]._actions if isinstance(a, argparse._SubParsersAction)]
            assert subcommand in nested.choices, (command, subcommand)


def _contract_tables() -> dict[str, list[str]]:
    """table -> columns named in the indented code blocks of contract.md's "DuckDB tables" section."""
    section = _text(CONTRACT).split("## DuckDB tables", 1)[1].split("\n## ", 1)[0]
    block = "\n".join(line for line in section.splitlines() if line.startswith("    "))
    tables: dict[str, list[str]] = {}
    for name, cols in re.findall(r"(\w+)\(([^)]*)\)", block):
        tables.setdefault(name, []).extend(c.strip() for c in cols.split(",") if c.strip())
    return tables


def test_contract_names_only_tables_and_columns_the_schema_creates():
    from benchmark.store import schema

    named = _contract_tables()
    assert {"runs", "images", "predictions", "metrics", "cams", "probes"} <= set(named)
    con = duckdb.connect()
    schema.create_all(con)
    missing = []
    for table, cols in named.items():
        if table not in schema.TABLES:
            missing.append(f"table {table}")
            continue
        have = set(schema.columns(con, table))
        missing += [f"{table}.{c}" for c in cols if c not in have]
    assert not missing, "docs/contract.md names what store/schema.py does not create: " + ", ".join(missing)
    assert set(schema.TABLES) <= set(named), "tables the contract does not list: " + ", ".join(
        sorted(set(schema.TABLES) - set(named)))


def test_contract_external_metrics_are_the_stored_rule():
    from benchmark.training.metrics import SET_METRICS

    stored = {*SET_METRICS, *(f"internal_{m}" for m in SET_METRICS)}
    bullet = _text(CONTRACT).split("- `metrics.metric`", 1)[1].split("\n- ", 1)[0]
    named = set(re.findall(r"^\s*- `((?:internal_|set_|off_set_)\w+)`", bullet, flags=re.M))
    named |= set(re.findall(r"`(internal_\w+)`", bullet))
    assert named and named <= stored, sorted(named - stored)
