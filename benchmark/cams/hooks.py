"""Forward hooks that belong to one call: they see only the tensors of the thread that made them.

The dashboard shares one cached model between browser sessions (Streamlit threads). A plain
forward hook on a shared layer sees every thread's forward pass, so two sessions explaining the
same checkpoint at once would read each other's activations and come back with another request's
map, or fail (tests/test_cam_threads.py runs such requests from 8 threads). Here every hook
runs its function only in the thread that registered it; the call that registers it removes
it before returning.

Registration and removal hold one process-wide lock: torch numbers hooks with a plain class
counter (`RemovableHandle.next_id += 1`), so two threads registering at once can draw the
same id, and one hook would then replace, or remove, the other.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator

import torch
from torch.utils.hooks import RemovableHandle

# reentrant: BaseCAM.__del__ releases hooks, and a garbage collection may run it in a thread
# that already holds the lock
_REGISTRATION = threading.RLock()


def scoped_forward_hook(module: torch.nn.Module, fn: Callable) -> RemovableHandle:
    """`module.register_forward_hook(fn)`, but `fn` runs only for forwards of the calling thread."""
    owner = threading.get_ident()

    def hook(mod, inputs, output):
        if threading.get_ident() == owner:
            return fn(mod, inputs, output)
        return None

    with _REGISTRATION:
        return module.register_forward_hook(hook)


def remove_hooks(handles: Iterable[RemovableHandle]) -> None:
    handles = list(handles)
    if not handles:
        return
    with _REGISTRATION:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def capture_layer_output(layer: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """The outputs of `layer` in this thread's forward passes; the hook is removed on any exit."""
    outputs: list[torch.Tensor] = []
    handle = scoped_forward_hook(layer, lambda module, inputs, output: outputs.append(output))
    try:
        yield outputs
    finally:
        remove_hooks([handle])
        outputs.clear()
