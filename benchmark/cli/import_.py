"""`import`: a model trained elsewhere (a torchvision or timm state dict) made a checkpoint of the tool's own."""
from __future__ import annotations

from benchmark.pipeline.imported import import_model


def cmd_import(args) -> int:
    """Write the checkpoint and print its path (then `evaluate --checkpoint PATH --data ...` audits it)."""
    path, meta = import_model(args.arch, args.weights, args.classes, library=args.library,
                              input_size=args.input_size, norm=args.normalization, mean=args.mean, std=args.std,
                              out=args.out, checkpoint_dir=args.checkpoint_dir)
    norm = meta["normalization"]
    print(f"{meta['library']} {meta['architecture']}: classes {', '.join(meta['classes'])}; "
          f"{meta['input_size']} px, {meta['in_chans']} input channel(s), normalization {norm['name']} "
          f"(mean {norm['mean']}, std {norm['std']}); CAM layer {meta['cam_target_layer']}, classifier "
          f"{meta['classifier']} (GAP head: {'yes' if meta['gap_head'] else 'no'})"
          + (f"; prefix '{meta['prefix_removed']}' removed" if meta["prefix_removed"] else ""))
    print(f"next: cxr-audit evaluate --checkpoint {path} --data DATASET")
    print(path)
    return 0
