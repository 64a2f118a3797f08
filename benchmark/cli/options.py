"""CLI flags made from config dataclass fields (benchmark/config.py): defaults and help live there.

`add_config_args(parser, DataConfig)` adds `--data`, `--data-root`, ... with each field's default,
type and help; `config_from_args(DataConfig, args)` builds the config back from the parsed flags.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Iterable
from typing import Any


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _base_type(hint: Any) -> Any:
    """int for `int | None`, str for `str`, ..."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def cli_fields(cls, include: Iterable[str] | None = None, exclude: Iterable[str] = ()) -> list[dataclasses.Field]:
    keep = None if include is None else set(include)
    unknown = (keep or set()) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"{cls.__name__} has no option {sorted(unknown)}")
    return [f for f in dataclasses.fields(cls)
            if f.metadata.get("cli", False) and (keep is None or f.name in keep) and f.name not in set(exclude)]


def add_config_args(parser: argparse.ArgumentParser, cls, *, include: Iterable[str] | None = None,
                    exclude: Iterable[str] = (), required: Iterable[str] = ()) -> None:
    """One flag per CLI field of the config dataclass `cls` (dest = field name)."""
    hints = typing.get_type_hints(cls)
    must = set(required)
    for f in cli_fields(cls, include, exclude):
        meta, default = f.metadata, f.default
        help_base = meta["help"] + (f" [{', '.join(meta['listing']())}]" if meta.get("listing") else "")
        help_base = help_base.replace("%", "%%")  # argparse formats help with %
        kind = _base_type(hints[f.name])
        if kind is bool:
            action = "store_false" if default else "store_true"
            parser.add_argument(_flag(f), dest=f.name, action=action, default=default, help=help_base)
            continue
        shown = meta["show"](default) if meta.get("show") and default is not None else default
        help_text = help_base + ("" if default is None or f.name in must else f" (default {shown})")
        parse = meta.get("parse") or (kind if kind in (int, float, str) else str)
        parser.add_argument(_flag(f), dest=f.name, type=parse, default=None if f.name in must else default,
                            choices=meta.get("choices"), required=f.name in must, help=help_text)


def config_from_args(cls, args: argparse.Namespace, **overrides):
    """The config with every field the parser has taken from the flags, the rest at defaults."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **overrides})


def config_flags(config) -> list[str]:
    """The flags that rebuild `config` (every CLI field, default or not), e.g. for a sidecar's command line."""
    out: list[str] = []
    for f in cli_fields(type(config)):
        value = getattr(config, f.name)
        if isinstance(value, bool):
            if value != f.default:
                out.append(_flag(f))
        elif value is not None:
            out += [_flag(f), str(value)]
    return out
