"""A user's weights file as a state dict, and how it fits a net: read safely, prefixes aligned, diffs explained.

Files are never unpickled: `.safetensors` goes through safetensors, anything else through
`torch.load(weights_only=True)`, which refuses Python objects other than tensors and plain
containers (a whole pickled `nn.Module`, a custom class). Training checkpoints that wrap the
state dict (`{"state_dict": ...}` from Lightning, `{"model": ...}`, `{"model_state_dict": ...}`)
are unwrapped; prefixes added by wrappers (`module.` from DataParallel/DDP, `_orig_mod.` from
torch.compile, `model.`/`net.` from a LightningModule or this tool's own checkpoints) are
stripped when that is what makes the keys fit.
"""
from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from benchmark.errors import BenchmarkError

#: Keys under which training checkpoints keep the state dict, tried in this order.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "weights", "params")
#: Prefixes that wrappers add in front of every key (stripped only when the keys then fit better).
KNOWN_PREFIXES = ("module.", "_orig_mod.", "model.", "net.", "encoder.", "backbone.")
_SHOWN = 8  # keys listed per kind in an error message
_SAVE_HINT = "Save the weights alone: torch.save(model.state_dict(), 'weights.pt'), or as .safetensors"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors`, `.pt`, `.pth` or `.bin` file, without unpickling anything."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"weights file {path} not found")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises several types on a bad file
            raise BenchmarkError(f"{path} is not a readable safetensors file: {exc}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc) or "Unsupported global" in str(exc):  # a class or function it would build
            raise BenchmarkError(
                f"{path} was refused: it holds pickled Python objects besides tensors ({_error_of(exc)}: a whole "
                "model saved with torch.save(model), or a custom class), and this tool loads weights only with "
                f"torch.load(weights_only=True), which never runs code from the file. {_SAVE_HINT}") from None
        raise BenchmarkError(f"{path} was refused: it is not a PyTorch weights file that torch.load(weights_only=True) "
                             f"reads ({_error_of(exc)}). {_SAVE_HINT}") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        raise BenchmarkError(f"{path} is not a PyTorch weights file ({_first_line(exc)}). {_SAVE_HINT}") from None
    return unwrap(obj, path)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _error_of(exc: Exception) -> str:
    """The unpickler's own complaint, without torch's advice on weights_only around it."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    return text.split(marker, 1)[1].strip().splitlines()[0][:200] if marker in text else _first_line(exc)


def _is_state_dict(obj) -> bool:
    return (isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) for k in obj)
            and all(isinstance(v, torch.Tensor) for v in obj.values()))


def unwrap(obj, path: str | Path = "weights") -> dict[str, torch.Tensor]:
    """The state dict inside what torch.load returned: itself, or under one of WRAPPER_KEYS."""
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if _is_state_dict(obj.get(key)):
                return dict(obj[key])
        keys = ", ".join(map(str, list(obj)[:10]))
        raise BenchmarkError(f"{path} holds a dict ({keys}) but no state dict of tensors, at the top or under "
                             f"one of {', '.join(WRAPPER_KEYS)}")
    raise BenchmarkError(f"{path} holds a {type(obj).__name__}, not a state dict (a dict of name -> tensor)")


def align_prefixes(state: dict[str, torch.Tensor], expected: set[str]) -> tuple[dict[str, torch.Tensor], str]:
    """Strip prefixes every key shares (`module.`, `model.`, ...) while that makes more keys fit
    `expected`; returns the state and the prefix removed ('' when none)."""
    removed = ""
    while state and all("." in k for k in state):
        heads = {k.split(".", 1)[0] for k in state}
        if len(heads) != 1:
            break
        prefix = heads.pop() + "."
        stripped = {k[len(prefix):]: v for k, v in state.items()}
        before, after = len(state.keys() & expected), len(stripped.keys() & expected)
        if not (after > before or (after == before and prefix in KNOWN_PREFIXES)):
            break
        state, removed = stripped, removed + prefix
    return state, removed


@dataclass
class KeyDiff:
    """How a state dict differs from a net's: names on one side only, and shapes that disagree."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, file shape, net shape)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def size(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.mismatched)

    def describe(self) -> str:
        parts = []
        for what, keys in (("missing from the file", self.missing),
                           ("in the file but not in the net", self.unexpected)):
            if keys:
                more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
                parts.append(f"{len(keys)} keys {what}: {', '.join(keys[:_SHOWN])}{more}")
        if self.mismatched:
            shown = "; ".join(f"{k}: file {list(a)} vs net {list(b)}" for k, a, b in self.mismatched[:_SHOWN])
            more = f" and {len(self.mismatched) - _SHOWN} more" if len(self.mismatched) > _SHOWN else ""
            parts.append(f"{len(self.mismatched)} shapes differ: {shown}{more}")
        return "; ".join(parts)


def key_diff(state: dict[str, torch.Tensor], net: nn.Module) -> KeyDiff:
    """What strict loading would complain about. BatchNorm's `num_batches_tracked` counters, which
    some exports drop, do not count as missing (the net keeps its own)."""
    own = net.state_dict()
    diff = KeyDiff(
        missing=[k for k in own if k not in state and not k.endswith("num_batches_tracked")],
        unexpected=[k for k in state if k not in own],
        mismatched=[(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
                    if k in own and tuple(v.shape) != tuple(own[k].shape)])
    return diff


def load_strict(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load every tensor of `state` into `net` (after key_diff said it fits); counters the file lacks stay."""
    own = net.state_dict()
    full = {k: state.get(k, own[k]) for k in own}
    net.load_state_dict(full, strict=True)
