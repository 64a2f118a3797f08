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
from typing import TYPE_CHECKING

from benchmark import faults, paths
from benchmark.errors import BenchmarkError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SIDECAR_VERSION = 1


def save_file(tensors: dict, filename: str) -> None:
    """safetensors' writer, imported when weights are written: torch loads only where weights are
    written or read, so listing checkpoints (the dashboard's server) imports none."""
    from safetensors.torch import save_file as write

    write(tensors, filename)


def load_file(filename: str, device: str = "cpu") -> dict:
    """safetensors' reader (tensors only: nothing is unpickled), imported when weights are read."""
    from safetensors.torch import load_file as read

    return read(filename, device=device)


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
    meta = {"format_version": SIDECAR_VERSION, "weights_file": weights.name, **meta}
    write_atomic(weights, lambda tmp: save_file(state, str(tmp)), point="checkpoint")
    write_atomic(sidecar, lambda tmp: tmp.write_text(json.dumps(meta, indent=2, default=str)))
    return weights


def write_atomic(target: Path, write, *, point: str | None = None) -> None:
    """`write(tmp)` into `<target>.tmp`, then rename it over `target`: a kill or a full disk leaves the
    old file (or none), never half a file; the temporary file is removed when the write fails."""
    tmp = target.with_name(target.name + ".tmp")
    try:
        write(tmp)
        if point:
            faults.pause_point(point)  # test-only: a kill -9 here must leave the old file whole
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


#: Largest input size a sidecar may ask for: the image reader's longest side (imageio max_side).
MAX_INPUT_SIZE = 2048


def read_sidecar(path: str | Path) -> dict:
    """The sidecar of a checkpoint, checked: a BenchmarkError names the file and the field when it
    is missing, not JSON, or holds a field of the wrong type or value (see `check_sidecar`)."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        raise BenchmarkError(f"checkpoint sidecar {sidecar} is missing: "
                             "a checkpoint is <name>.safetensors + <name>.json")
    try:
        meta = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BenchmarkError(f"checkpoint sidecar {sidecar} is not valid JSON: {exc}") from exc
    check_sidecar(meta, sidecar)
    return meta


def check_sidecar(meta, sidecar: str | Path) -> None:
    """Every field a model is rebuilt and used from, checked before anything is built: the
    architecture is registered (or the sidecar describes an imported net), classes are a list of
    distinct non-empty names, the input size a whole number of pixels the reader can supply."""

    def bad(what: str) -> BenchmarkError:
        return BenchmarkError(f"checkpoint sidecar {sidecar}: {what}")

    if not isinstance(meta, dict):
        raise bad(f"must hold a JSON object, not {type(meta).__name__}")
    for key in ("architecture", "classes", "input_size"):
        if key not in meta:
            raise bad(f"lacks {key!r}")
    version = meta.get("format_version", SIDECAR_VERSION)
    if not _is_int(version) or version < 1:
        raise bad(f"format_version must be a positive whole number, got {version!r}")
    if version > SIDECAR_VERSION:
        raise bad(f"format_version {version} is newer than this program reads ({SIDECAR_VERSION}); update it")
    arch = meta["architecture"]
    if not isinstance(arch, str) or not arch:
        raise bad(f"architecture must be a model name, got {arch!r}")
    classes = meta["classes"]
    if not isinstance(classes, list) or not classes:
        raise bad(f"classes must be a non-empty list of class names, got {classes!r}")
    if not all(isinstance(c, str) and c for c in classes):
        raise bad(f"classes must be non-empty strings, got {classes!r}")
    if len(set(classes)) != len(classes):
        raise bad(f"classes must be distinct, got {classes!r}")
    size = meta["input_size"]
    if not _is_int(size) or not 1 <= size <= MAX_INPUT_SIZE:
        raise bad(f"input_size must be a whole number of pixels from 1 to {MAX_INPUT_SIZE}, got {size!r}")
    if "pretrained" in meta and not isinstance(meta["pretrained"], bool):
        raise bad(f"pretrained must be true or false, got {meta['pretrained']!r}")
    if meta.get("origin") == "imported":
        _check_imported(meta, bad)
        return
    from benchmark.errors import UnknownNameError
    from benchmark.models import get_spec

    try:
        spec = get_spec(arch)
    except UnknownNameError as exc:
        raise bad(f"architecture: {exc}") from None
    if size < spec.min_input_size:
        raise bad(f"input_size {size} is below {spec.name}'s smallest input ({spec.min_input_size} px)")


def _check_imported(meta: dict, bad) -> None:
    for key in ("library", "cam_target_layer", "classifier"):
        if not isinstance(meta.get(key), str) or not meta.get(key):
            raise bad(f"an imported checkpoint needs {key!r} as a non-empty string, got {meta.get(key)!r}")
    if not isinstance(meta.get("gap_head"), bool):
        raise bad(f"gap_head must be true or false, got {meta.get('gap_head')!r}")
    norm = meta.get("normalization")
    if not isinstance(norm, dict) or not _is_int(norm.get("in_chans")) or norm["in_chans"] not in (1, 3):
        raise bad(f"normalization must be an object with in_chans 1 or 3, got {norm!r}")
    for key in ("mean", "std"):
        values = norm.get(key)
        if (not isinstance(values, list) or len(values) != norm["in_chans"]
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
            raise bad(f"normalization.{key} must be {norm['in_chans']} number(s), got {values!r}")
    if any(v <= 0 for v in norm["std"]):
        raise bad(f"normalization.std must be positive, got {norm['std']!r}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, sidecar) from a .safetensors (or its .json) path."""
    from benchmark.models import create_model

    path = Path(path)
    weights = path.with_suffix(".safetensors")
    meta = read_sidecar(weights)
    if not weights.is_file():
        raise BenchmarkError(f"checkpoint weights {weights} are missing")
    if meta.get("origin") == "imported":  # any torchvision/timm architecture (`cxr-audit import`)
        from benchmark.models.imported import model_from_sidecar
        model = model_from_sidecar(meta)
    else:
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
        if not sidecar.with_suffix(".safetensors").is_file():
            continue  # other JSON files (e.g. the segmenter's own sidecar beside no classifier)
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not isinstance(meta, dict) or "architecture" not in meta:
            continue
        try:
            check_sidecar(meta, sidecar)
        except BenchmarkError as exc:
            log.warning("skipping checkpoint: %s", exc)
            continue
        out.append({**meta, "path": str(sidecar.with_suffix(".safetensors"))})
    return out


def checkpoint_files(weights: str | Path) -> dict[str, bytes]:
    """A checkpoint's two files as bytes ({".safetensors": ..., ".json": ...}), to send to another machine."""
    weights = Path(weights).with_suffix(".safetensors")
    return {suffix: weights.with_suffix(suffix).read_bytes() for suffix in (".safetensors", ".json")}


def write_checkpoint_files(files: dict[str, bytes], stem: str | Path) -> Path:
    """Write what `checkpoint_files` read as <stem>.safetensors + <stem>.json (atomically, weights
    first, as save_checkpoint does); returns the .safetensors path. The bytes are only written, never loaded."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".safetensors", ".json"):
        data = files[suffix]
        write_atomic(stem.with_suffix(suffix), lambda tmp, data=data: tmp.write_bytes(data))
    return stem.with_suffix(".safetensors")
