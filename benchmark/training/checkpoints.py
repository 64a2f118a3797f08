"""Checkpoints: safetensors weights plus a JSON sidecar; nothing is ever unpickled.

The sidecar says everything needed to rebuild and use the model (architecture, classes, input
size, normalisation) and where it came from (dataset, metrics, git commit).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from benchmark import paths
from benchmark.errors import BenchmarkError

log = logging.getLogger(__name__)

SIDECAR_VERSION = 1


def git_commit(short: bool = True) -> str:
    """The repository's HEAD commit ('' outside a checkout or without git)."""
    try:
        out = subprocess.run(["git", "rev-parse", *(["--short"] if short else []), "HEAD"],
                             capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def save_checkpoint(model: torch.nn.Module, stem: str | Path, meta: dict) -> Path:
    """Write <stem>.safetensors and <stem>.json atomically; returns the .safetensors path."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    weights = stem.with_suffix(".safetensors")
    sidecar = stem.with_suffix(".json")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = weights.with_suffix(".safetensors.tmp")
    save_file(state, str(tmp))
    os.replace(tmp, weights)
    meta = {"format_version": SIDECAR_VERSION, "weights_file": weights.name, **meta}
    tmp_json = sidecar.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(meta, indent=2, default=str))
    os.replace(tmp_json, sidecar)
    return weights


def read_sidecar(path: str | Path) -> dict:
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        raise BenchmarkError(f"checkpoint sidecar {sidecar} is missing: "
                             "a checkpoint is <name>.safetensors + <name>.json")
    try:
        meta = json.loads(sidecar.read_text())
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"checkpoint sidecar {sidecar} is not valid JSON: {exc}") from exc
    for key in ("architecture", "classes", "input_size"):
        if key not in meta:
            raise BenchmarkError(f"checkpoint sidecar {sidecar} lacks {key!r}")
    return meta


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, sidecar) from a .safetensors (or its .json) path."""
    from benchmark.models import create_model

    path = Path(path)
    weights = path.with_suffix(".safetensors")
    meta = read_sidecar(weights)
    if not weights.is_file():
        raise BenchmarkError(f"checkpoint weights {weights} are missing")
    model = create_model(meta["architecture"], num_classes=len(meta["classes"]))
    try:
        state = load_file(str(weights), device="cpu")
        model.load_state_dict(state)
    except Exception as exc:  # safetensors raises several types on a bad file
        raise BenchmarkError(f"checkpoint {weights} cannot be loaded: {exc}") from exc
    model.pretrained = bool(meta.get("pretrained", False))
    return model.to(device).eval(), meta


def list_checkpoints(root: str | Path | None = None) -> list[dict]:
    """Sidecars of every classifier checkpoint under root (default: paths.checkpoints_dir()), with their path."""
    out = []
    for sidecar in sorted(paths.checkpoints_dir(root).rglob("*.json")):
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if "architecture" in meta and sidecar.with_suffix(".safetensors").is_file():
            out.append({**meta, "path": str(sidecar.with_suffix(".safetensors"))})
    return out
