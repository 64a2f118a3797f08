"""Model-randomisation sanity check for CAM methods (Adebayo et al. 2018, "Sanity checks for
saliency maps"): the maths only, without the DB or the data.

A method explains a model only if its maps depend on what the model learned. So each method's maps
of the trained model are compared, image by image, with its maps of the same architecture whose
weights are all re-initialised (the paper's full, not cascading, randomisation): the Spearman rank
correlation of the two maps, flattened. A method whose maps barely change (high rank correlation)
draws the image's structure, not the model's reasons.

Conventions: ties get average ranks (scipy.stats.rankdata, as spearmanr); a map that is constant (e.g. all
zero after the ReLU) has no ranking to share, so its correlation with a non-constant map is 0,
and two constant maps count as unchanged (1).
"""
from __future__ import annotations

import copy

import numpy as np
import torch

#: seed of the re-initialised weights: the randomised model is the same on every run and machine
RANDOM_WEIGHTS_SEED = 0


def randomized_copy(model: torch.nn.Module, seed: int = RANDOM_WEIGHTS_SEED) -> torch.nn.Module:
    """A deep copy of `model` with every learned weight re-initialised; `model` is not touched.

    Every submodule with `reset_parameters` (convolutions, linear layers, norms) draws its
    framework default initialisation again; a parameter no such module owns gets N(0, 0.02).
    BatchNorm running statistics are reset too. The draws happen on the CPU under a forked RNG
    seeded with `seed`, so the copy is the same whatever the device and the global RNG state is
    left as it was. The copy is in eval mode, on the model's device.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    clone = copy.deepcopy(model).cpu()
    covered: set[int] = set()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in clone.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
                covered.update(id(p) for p in module.parameters(recurse=False))
            if isinstance(module, torch.nn.modules.batchnorm._NormBase) and module.track_running_stats:
                module.reset_running_stats()
        with torch.no_grad():
            for p in clone.parameters():
                if id(p) not in covered:
                    p.normal_(0.0, 0.02)
    for p in clone.parameters():
        p.grad = None
    return clone.to(device).eval()


def rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation between a[i] and b[i] (N x h x w or N x d) for each i, in [-1, 1].

    Equal to scipy.stats.spearmanr on each pair of flattened maps; constant maps follow the
    module's convention (0 against a non-constant map, 1 against another constant map)."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    if a.shape != b.shape:
        raise ValueError(f"maps to compare must have one shape, got {a.shape} and {b.shape}")
    from scipy.stats import rankdata

    out = np.empty(len(a))
    for i in range(len(a)):
        ra, rb = rankdata(a[i]), rankdata(b[i])  # ties share their average rank
        ra, rb = ra - ra.mean(), rb - rb.mean()
        na, nb = np.sqrt((ra ** 2).sum()), np.sqrt((rb ** 2).sum())
        if na == 0 or nb == 0:
            out[i] = 1.0 if na == nb else 0.0
        else:
            out[i] = float(np.clip((ra * rb).sum() / (na * nb), -1.0, 1.0))
    return out
