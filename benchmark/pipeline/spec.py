"""What one (model, dataset) job is: a model name plus the data, training and audit configs.

The stored form (`runs.config_json`) and the run id stay flat (one key per option, the
preset under "data"), so databases written before the configs were split read the same.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.config import AuditConfig, DataConfig, TrainConfig, device_option, option
from benchmark.data.presets import preset_input_size
from benchmark.models import get_spec

# Stored flat key -> DataConfig field where they differ (the preset is `--data` on the CLI).
_FLAT_NAMES = {"name": "data"}
_PARTS = {"data": DataConfig, "train": TrainConfig, "audit": AuditConfig}
# The options that make a run a different run (what rerun-skipping compares); flat names.
IDENTITY = ("model", "data", "epochs", "seed", "pretrained", "image_size", "batch_size", "lr",
            "patience", "lungs_only", "data_seed", "max_per_class", "n_phantom")


@dataclass(frozen=True)
class JobSpec:
    model: str
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    audit: AuditConfig = AuditConfig()
    device: str = device_option()
    checkpoint_dir: str | None = option(None, "checkpoint folder (default $CXR_CHECKPOINTS or checkpoints)")
    progress: bool = option(True, "no progress bars", flag="--no-progress")

    @classmethod
    def for_model(cls, model: str, data: DataConfig = DataConfig(), **kwargs) -> JobSpec:
        """A spec with the input size resolved, so that it is part of the run's identity."""
        size = resolve_input_size(model, data.name, data.image_size)
        return cls(model=model, data=dataclasses.replace(data, image_size=size), **kwargs)

    def flat(self) -> dict[str, Any]:
        """One key per option (what `runs.config_json` stores)."""
        out: dict[str, Any] = {"model": self.model}
        for part in _PARTS:
            for k, v in dataclasses.asdict(getattr(self, part)).items():
                out[_FLAT_NAMES.get(k, k)] = v
        out.update(device=self.device, checkpoint_dir=self.checkpoint_dir, progress=self.progress)
        return out

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> JobSpec:
        """The spec stored by `flat()`; unknown keys (from other versions) are ignored."""
        back = {v: k for k, v in _FLAT_NAMES.items()}
        values = {back.get(k, k): (tuple(v) if isinstance(v, list) else v) for k, v in flat.items()}
        parts = {part: cfg(**{f.name: values[f.name] for f in dataclasses.fields(cfg) if f.name in values})
                 for part, cfg in _PARTS.items()}
        top = {k: values[k] for k in ("device", "checkpoint_dir", "progress") if k in values}
        return cls(model=values["model"], **parts, **top)

    def identity(self) -> dict[str, Any]:
        flat = self.flat()
        return {k: flat[k] for k in IDENTITY}

    @property
    def run_id(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, default=str).encode()
        name = f"{Path(self.data.name).name}-{self.model}" + ("-lungsonly" if self.data.lungs_only else "")
        return f"{name}-{hashlib.sha1(blob).hexdigest()[:10]}"


def resolve_input_size(model: str, data: str, image_size: int | None) -> int:
    """--image-size, else the dataset preset's default (phantom: 128), else the architecture's own."""
    return image_size or preset_input_size(data) or get_spec(model).input_size


def spec_from_run(run: dict) -> JobSpec:
    """The JobSpec a `runs` row was made from."""
    return JobSpec.from_flat(json.loads(run["config_json"]))
