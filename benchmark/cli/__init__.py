"""Command line: `python -m benchmark` or `cxr-audit` COMMAND (--help everywhere).

COMMANDS below is the one list of commands: each lives in its own module, keyed by (command,
subcommand); parser.py adds one subparser per command, in this order, with flags made from
benchmark/config.py, and the top-level help names them from here.
"""
from __future__ import annotations

import importlib
import logging
import sys

from benchmark.errors import BenchmarkError

#: (command, subcommand or None) -> "module:function"; modules import only when their command runs.
COMMANDS = {
    ("run", None): "run:cmd_run",
    ("data", "list"): "data:cmd_data_list",
    ("data", "check"): "data:cmd_data_check",
    ("cams", None): "cams:cmd_cams",
    ("evaluate", None): "evaluate:cmd_evaluate",
    ("lungs", "train"): "lungs:cmd_lungs_train",
    ("lungs", "predict"): "lungs:cmd_lungs_predict",
    ("report", None): "report:cmd_report",
    ("import", None): "import_:cmd_import",
}


def command_names() -> list[str]:
    """The top-level commands, in registration order (`run`, `data`, ...)."""
    return list(dict.fromkeys(command for command, _ in COMMANDS))


def dispatch(args) -> int:
    sub = getattr(args, f"{args.command}_command", None)
    module, func = COMMANDS[(args.command, sub)].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), func)(args)


def main(argv: list[str] | None = None) -> int:
    from benchmark.cli.parser import build_parser

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return dispatch(args)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: runs not finished were not stored; rerun to resume", file=sys.stderr)
        return 130
