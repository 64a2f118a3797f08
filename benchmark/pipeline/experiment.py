"""Experiments as data: a TOML file naming datasets, models, seeds, the three configs and the
external-validation pairs; `specs()` turns it into the grid's JobSpecs.

Shipped experiments live in benchmark/configs/experiments/ (`shipped_experiments()` lists them);
any path works too. The file's [data], [train] and [audit] tables take the fields of DataConfig, TrainConfig and
AuditConfig (benchmark/config.py), so an experiment can set anything the CLI can. A table inside
[data] named after one of the experiment's datasets (`[data.covid-normal]`) overrides [data] for that
dataset only, for example a larger per-class cap for the preset with the fewest classes.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark import paths
from benchmark.config import AuditConfig, DataConfig, TrainConfig
from benchmark.errors import BenchmarkError, UnknownNameError
from benchmark.models import resolve_models
from benchmark.pipeline.spec import JobSpec

EXPERIMENTS_DIR = "experiments"
_TOP_KEYS = {"description", "datasets", "models", "seeds", "lungs_only_controls", "external", "data", "train",
             "audit"}
_PARTS = {"data": DataConfig, "train": TrainConfig, "audit": AuditConfig}


@dataclass(frozen=True)
class Experiment:
    """A grid: datasets x models x seeds (x lungs-only controls), plus which checkpoints are scored
    on which other datasets. `external` lists, in any mix: "auto" (every other dataset of the
    experiment that shares at least two classes), a dataset name (an external set such as
    `external-covid-normal`: scored by every dataset of the experiment whose classes include all
    of the set's), or explicit (train dataset, test dataset) pairs. "none" or an empty list: no
    external validation."""

    name: str
    datasets: tuple[str, ...]
    models: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    description: str = ""
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    audit: AuditConfig = AuditConfig()
    lungs_only_controls: bool = False
    external: tuple[str | tuple[str, str], ...] = ("auto",)
    data_by_dataset: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()  # [data.<dataset>] overrides

    def dataset_data(self, dataset: str) -> DataConfig:
        """[data] with the dataset's own overrides, named `dataset`."""
        own = dict(dict(self.data_by_dataset).get(dataset, ()))
        return dataclasses.replace(self.data, name=dataset, **own)

    def specs(self, **top: Any) -> list[JobSpec]:
        """Every job of the grid; `top` sets JobSpec's own fields (device, checkpoint_dir, progress)."""
        out = []
        for dataset in self.datasets:
            for lungs_only in (False, True) if self.lungs_only_controls else (self.data.lungs_only,):
                data = dataclasses.replace(self.dataset_data(dataset), lungs_only=lungs_only)
                for seed in self.seeds:
                    train = dataclasses.replace(self.train, seed=seed)
                    out += [JobSpec.for_model(m, data, train=train, audit=self.audit, **top) for m in self.models]
        return out

    def external_sets(self) -> list[str]:
        """The named external sets (neither "auto" nor pairs): datasets to load only for scoring."""
        return [e for e in self.external if isinstance(e, str) and e != "auto"]

    def external_pairs(self, classes: dict[str, list[str]]) -> list[tuple[str, str]]:
        """(train dataset, test dataset) pairs to score, in order, without repeats; `classes` maps
        each dataset of the experiment and each named external set to its classes."""
        pairs = []
        for entry in self.external:
            if entry == "auto":
                pairs += [(a, b) for a in self.datasets for b in self.datasets
                          if a != b and len(set(classes[a]) & set(classes[b])) >= 2]
            elif isinstance(entry, str):
                pairs += [(a, entry) for a in self.datasets if set(classes[entry]) <= set(classes[a])]
            else:
                pairs.append(tuple(entry))
        return list(dict.fromkeys(pairs))

    def with_overrides(self, *, data_root: str | None = None, cache_dir: str | None = None,
                       external_root: str | None = None) -> Experiment:
        """Where the data is is the machine's business, not the experiment's."""
        data = dataclasses.replace(self.data, data_root=data_root or self.data.data_root,
                                   cache_dir=cache_dir or self.data.cache_dir,
                                   external_root=external_root or self.data.external_root)
        return dataclasses.replace(self, data=data)


def shipped_experiments() -> list[str]:
    folder = paths.config_file(EXPERIMENTS_DIR)
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def load_experiment(name_or_path: str) -> Experiment:
    """A shipped experiment by name, or a TOML file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise BenchmarkError(f"experiment file {path} not found")
        text, name = path.read_text(), path.stem
    else:
        entry = paths.config_file(EXPERIMENTS_DIR) / f"{name_or_path}.toml"
        if not entry.is_file():
            raise UnknownNameError("experiment (shipped name or .toml path)", name_or_path, shipped_experiments())
        text, name = entry.read_text(), name_or_path
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BenchmarkError(f"experiment {name_or_path}: not valid TOML ({exc})") from None
    return experiment_from_table(name, table)


def experiment_from_table(name: str, table: dict[str, Any]) -> Experiment:
    unknown = set(table) - _TOP_KEYS
    if unknown:
        raise BenchmarkError(f"experiment {name}: unknown keys {sorted(unknown)}; valid: {sorted(_TOP_KEYS)}")
    for key in ("datasets", "models"):
        if not table.get(key):
            raise BenchmarkError(f"experiment {name}: '{key}' must list at least one entry")
    parts, by_dataset = {}, ()
    for part, cls in _PARTS.items():
        values = dict(table.get(part, {}))
        if part == "data":
            values, by_dataset = _data_overrides(name, values, table.get("datasets") or [])
        fields = {f.name for f in dataclasses.fields(cls)} - {"name", "lungs_only", "seed"}
        bad = set(values) - fields
        if bad:
            raise BenchmarkError(f"experiment {name}: [{part}] has unknown keys {sorted(bad)}; valid: {sorted(fields)}")
        if part == "audit" and "cam_methods" in values:
            from benchmark.cams.names import parse_cam_methods
            values["cam_methods"] = parse_cam_methods(",".join(values["cam_methods"]))
        parts[part] = cls(**values)
    models = tuple(m for item in table["models"] for m in resolve_models(item))
    external = parse_external(name, table.get("external", "auto"))
    return Experiment(name=name, datasets=tuple(table["datasets"]), models=tuple(dict.fromkeys(models)),
                      seeds=tuple(int(s) for s in table.get("seeds", [0])), description=table.get("description", ""),
                      lungs_only_controls=bool(table.get("lungs_only_controls", False)), external=external,
                      data_by_dataset=by_dataset, **parts)


def _data_overrides(name: str, values: dict[str, Any], datasets: list[str]):
    """[data] split into its own fields and its per-dataset tables ([data.<dataset>]), each checked."""
    nested = {k: v for k, v in values.items() if isinstance(v, dict)}
    fields = {f.name for f in dataclasses.fields(DataConfig)} - {"name", "lungs_only"}
    out = []
    for dataset, own in nested.items():
        if dataset not in datasets:
            raise BenchmarkError(f"experiment {name}: [data.{dataset}] names no dataset of the experiment; "
                                 f"its datasets: {list(datasets)}")
        bad = set(own) - fields
        if bad:
            raise BenchmarkError(f"experiment {name}: [data.{dataset}] has unknown keys {sorted(bad)}; "
                                 f"valid: {sorted(fields)}")
        out.append((dataset, tuple(sorted(own.items()))))
    return {k: v for k, v in values.items() if k not in nested}, tuple(out)


def parse_external(name: str, value: Any) -> tuple[str | tuple[str, str], ...]:
    """`external` of an experiment file: "auto", "none", or a list of "auto", dataset names and
    {train = ..., test = ...} tables."""
    if value == "none":
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        items = None
    out: list = []
    for item in items or [None]:
        if isinstance(item, str) and item and item != "none":
            out.append(item)
        elif isinstance(item, dict) and set(item) == {"train", "test"}:
            out.append((item["train"], item["test"]))
        else:
            raise BenchmarkError(f"experiment {name}: external must be 'auto', 'none' or a list of 'auto', "
                                 f"dataset names and {{train = ..., test = ...}} tables; got {value!r}")
    return tuple(out)


def external_spec(spec: JobSpec, dataset: str, like: DataConfig | None = None) -> JobSpec:
    """The spec whose dataset is `dataset` as scored by `spec`'s model: `spec`'s data options, or,
    where the experiment trains on `dataset` too, the selection of those runs (`like`: its cap,
    phantom size and split seed), so an auto set is the dataset its own runs saw. An external
    preset (one read from the external root) is scored whole, never capped."""
    from benchmark.data.presets import presets

    data = dataclasses.replace(spec.data, name=dataset)
    if like is not None:
        data = dataclasses.replace(data, max_per_class=like.max_per_class, n_phantom=like.n_phantom,
                                   data_seed=like.data_seed)
    if presets().get(dataset, {}).get("root") == "external":
        data = dataclasses.replace(data, max_per_class=None)
    return dataclasses.replace(spec, data=data)
