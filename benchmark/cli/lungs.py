"""`lungs train` and `lungs predict`: the project's lung segmenter."""
from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark import paths
from benchmark.audit.lung_masks import segmenter_row
from benchmark.cli.options import config_flags, config_from_args
from benchmark.data.imageio import read_image
from benchmark.errors import ImageRejected
from benchmark.lungseg import LungTrainConfig, fit_lung_segmenter, load_segmenter, predict_lung_masks
from benchmark.store import write_segmenter


def train_command(data_root: str | None, out: str | None, cfg: LungTrainConfig) -> str:
    """The command line that trains `cfg` (stored in the sidecar: how to reproduce the segmenter)."""
    words = ["python", "-m", "benchmark", "lungs", "train"]
    words += ["--data-root", str(data_root)] if data_root else []
    words += ["--out", str(out)] if out else []
    return shlex.join(words + config_flags(cfg))


def cmd_lungs_train(args) -> int:
    out = paths.user_segmenter_stem(args.out)
    cfg = config_from_args(LungTrainConfig, args)
    root = paths.data_root(args.data_root)
    _, report = fit_lung_segmenter(root, cfg, out_stem=out, command=train_command(args.data_root, args.out, cfg))
    dice = report.get("heldout_cohen_dice_native")
    print(f"lung segmenter saved to {out}.safetensors; held-out cohen Dice (native size): "
          f"{dice:.3f}" if dice is not None else f"lung segmenter saved to {out}.safetensors "
          "(no cohen masks found: phantom only)")
    if args.db:
        write_segmenter(args.db, segmenter_row(out))  # the row runs record, from the saved sidecar
    return 0


def cmd_lungs_predict(args) -> int:
    model, _ = load_segmenter(paths.segmenter_stem(args.segmenter), device="cpu")
    src = Path(args.path)
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done = 0
    for f in files:
        try:
            img = read_image(f)
        except ImageRejected as exc:
            print(f"{f}: skipped: {exc.reason}")
            continue
        mask = predict_lung_masks(model, img[None])[0]
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / f"{f.stem}.png")
        done += 1
    print(f"{done} masks written to {out}")
    return 0
