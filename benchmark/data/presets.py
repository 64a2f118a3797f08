"""The dataset presets of benchmark/configs/datasets.toml (package data), read once."""
from __future__ import annotations

import tomllib
from functools import lru_cache

from benchmark.paths import config_file

PRESETS_FILE = "datasets.toml"


@lru_cache(maxsize=1)
def presets() -> dict[str, dict]:
    """name -> preset table, in file order."""
    with config_file(PRESETS_FILE).open("rb") as fh:
        return tomllib.load(fh)


def presets_of_kind(kind: str) -> dict[str, dict]:
    return {name: p for name, p in presets().items() if p["kind"] == kind}


def preset_input_size(name: str) -> int | None:
    """The preset's default model input size (phantom: 128), None for real data and folders."""
    return presets().get(name, {}).get("input_size")


def list_presets() -> list[tuple[str, str]]:
    return [(n, p["description"]) for n, p in presets().items()]
