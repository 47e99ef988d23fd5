"""Test-time views: what averaging flipped / turned copies buys in accuracy, and costs in time.

Scores a model on a test folder (image/ + gt/, `btbnet.evaluation.evaluate`, both protocols of
`btbnet.metrics`, at each image's native resolution) once per `--tta` setting of
`btbnet predict` (`btbnet.predict.VIEWS`: none, flip, dihedral), the model seeing each image at
`--max-size` (default: the model's own scale, as `btbnet predict`), and times the forward passes.

    python bench/bench_tta.py [--model NAME_OR_CKPT] [--data FOLDER] [--polarity blurred|in_focus]
                              [--stems SPLIT_FILE] [--views none flip dihedral] [--max-size N]
                              [--threads N] [--json OUT]

Defaults score the embedded test pairs (`data/embedded/defocus/test`). The figures in the README
come from the validation split of Shi's set with the model fine-tuned without it:
`--model models/finetune.pt --data data/external/cuhk/train --stems data/splits/cuhk_val.txt`
in a workspace of `python infra/preset.py cpu`. Select with a validation split, never a test set.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from btbnet.evaluation import evaluate  # noqa: E402
from btbnet.predict import VIEWS, predict_map, with_views  # noqa: E402
from btbnet.pretrained import DEFAULT, load_model  # noqa: E402


def score(model: torch.nn.Module, views: str, data: Path, polarity: str, stems: list[str] | None,
          max_size: int | None) -> dict[str, Any]:  # fmt: skip
    """One row: the paper and ddff figures of `model` under `views`, and seconds per image."""
    tta = with_views(model, views)
    seconds: list[float] = []

    def predict(image: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        focus = predict_map(tta, image, max_size=max_size)
        seconds.append(time.perf_counter() - start)
        return focus

    result = evaluate({views: predict}, data, polarity, stems=stems, progress=False).results[views]
    paper, ddff = result["paper"], result["ddff"]
    return {
        "tta": views, "views": len(VIEWS[views]), "images": paper["images"],
        "f_measure": paper["f_measure"], "f_measure_per_image": paper["f_measure_per_image"],
        "f_max": paper["f_max"], "mae": paper["mae"], "ddff_f_measure": ddff["f_measure"],
        "s_per_image": float(np.median(seconds)),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT, help=f"released model name or checkpoint (default {DEFAULT})")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "embedded" / "defocus" / "test")
    parser.add_argument("--polarity", default="blurred", choices=("blurred", "in_focus"), help="what white means in the masks")
    parser.add_argument("--stems", type=Path, help="a split file: score only these stems")
    parser.add_argument("--views", nargs="+", default=list(VIEWS), choices=list(VIEWS))
    parser.add_argument("--max-size", type=int, help="longer side the model sees (default: the model's own scale: a release's, or a checkpoint's training scale)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, scale = load_model(args.model)
    max_size = args.max_size or scale
    stems = args.stems.read_text().split() if args.stems else None
    print(f"# {args.model} on {args.data} ({len(stems) if stems else 'all'} images) at max_size {max_size}, "
          f"{args.threads} threads, {platform.processor() or platform.machine()}")  # fmt: skip
    print("| tta | views | F | F/img | max-F | MAE | F ddff | s / image |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for views in args.views:
        r = score(model, views, args.data, args.polarity, stems, max_size)
        rows.append(r)
        print(f"| {views} | {r['views']} | {r['f_measure']:.3f} | {r['f_measure_per_image']:.3f} | {r['f_max']:.3f} | "
              f"{r['mae']:.3f} | {r['ddff_f_measure']:.3f} | {r['s_per_image']:.3f} |", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
