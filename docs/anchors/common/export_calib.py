"""Export ptqbench's calibration batch to a .pt file, for a released-code anchor to load (patch P5).

    python docs/anchors/common/export_calib.py --model deit_tiny --size 32 --seed 0 --out calib.pt [--check]

Writes {"images": float [N,3,H,W], "labels": long [N] (standard 1000-class index, the line of
synsets.txt), "ids": list[str] (paths relative to the split), "seed": int, "size": int, "split": str,
"transform": str}.

Nothing here reimplements ptqbench's data path: the job config is composed from conf/ as
`python -m ptqbench model=MODEL calib.size=N calib.seed=S` composes it; the model and its timm eval
transform come from `Classification.build_model` (the transform is its `context`); the images and ids
from `ptqbench.data.calibration_batch` on an `ImageNetFolder` of `calib.split`, the function the
classification task's `calibration_data` calls. `--check` additionally runs the task's own
`calibration_data` (cache disabled) and requires the two tensors to be bit-identical;
`--compare FILE` compares with a calibration entry a ptqbench run cached
(`<results>/cache/calib/<key>.pt`).

Data: `data.root` (default $PTQBENCH_DATA/imagenet-mini); weights as ptqbench finds them
($PTQBENCH_DATA/weights). Only the transform needs the model; its weights are loaded anyway because
that is the code path ptqbench runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[3]


def compose_settings(overrides: list[str]):
    """The typed settings of the job `python -m ptqbench OVERRIDES` would run."""
    from ptqbench.config_store import composed_job_settings

    return composed_job_settings(overrides)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="deit_tiny")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--method", default="repq",
                   help="any method that calibrates; the calibration batch does not depend on it (default repq)")
    p.add_argument("--check", action="store_true",
                   help="also build the batch through Classification.calibration_data and require bit equality")
    p.add_argument("--compare", default=None, help="a ptqbench cache entry (cache/calib/<key>.pt) to compare with")
    p.add_argument("overrides", nargs="*", help="extra ptqbench overrides, e.g. data.root=/path")
    args = p.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from ptqbench.cache import ContentCache
    from ptqbench.data import ImageNetFolder, calibration_batch, calibration_indices, resolve_root
    from ptqbench.tasks import get_task
    from ptqbench.tasks.classification import ImageNetData

    settings = compose_settings([f"model={args.model}", f"method={args.method}", f"calib.size={args.size}",
                                 f"calib.seed={args.seed}", "logger=none", *args.overrides])
    task = get_task(settings.task.name)
    if task.name != "classification":
        raise SystemExit(f"task={task.name}: only the classification task has an image calibration batch")
    built = task.build_model(settings, torch.device("cpu"))
    transform = built.context  # timm.data.create_transform(**resolve_data_config({}, model=model))

    root = resolve_root(settings.data.root)
    ds = ImageNetFolder(root, settings.calib.split, transform=transform)
    images, ids = calibration_batch(ds, settings.calib.size, settings.calib.seed)
    idx = calibration_indices(ds, settings.calib.size, settings.calib.seed)
    labels = torch.tensor([ds.samples[i][1] for i in idx], dtype=torch.long)
    assert [ds.image_id(i) for i in idx] == ids

    if args.check:
        data = ImageNetData(root, None, ImageNetFolder(root, settings.calib.split))
        ref = task.calibration_data(settings, data, built, ContentCache(Path("/nonexistent"), enabled=False))
        same = ref.inputs.dtype == images.dtype and torch.equal(ref.inputs.cpu(), images) and list(ref.ids) == ids
        print(f"check vs Classification.calibration_data: {'bit-identical' if same else 'DIFFERENT'} "
              f"(shape {tuple(images.shape)}, {images.dtype})")
        if not same:
            return 1
    if args.compare:
        entry = torch.load(args.compare, map_location="cpu", weights_only=False)
        same = torch.equal(entry["images"], images) and list(entry["ids"]) == ids
        print(f"check vs cached entry {args.compare}: {'bit-identical' if same else 'DIFFERENT'}")
        if not same:
            return 1

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"images": images.contiguous(), "labels": labels, "ids": list(ids), "seed": settings.calib.seed,
                "size": settings.calib.size, "split": settings.calib.split, "transform": repr(transform)}, out)
    print(f"wrote {out}: {tuple(images.shape)} images, seed {settings.calib.seed}, split {settings.calib.split}, "
          f"labels {labels[:4].tolist()}..., transform {repr(transform).splitlines()[1:3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
