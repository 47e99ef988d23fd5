"""The README's picture: photograph | ground truth | the model's map, one row per photograph.

The photographs are the first `--count` stems of a split file (default: the first four of the
validation split, `data/splits/cuhk_val.txt`); the model must not have trained on them. The
README's picture comes from the model that `python infra/preset.py cpu` fine-tunes without
that split, in that preset's workspace:

    python docs/make_example.py --model models/finetune.pt --data data/external/cuhk/train --max-size 416

Each tile is shrunk to `--width` px wide for display; the model sees the photograph at
`--max-size` (default: the model's own scale, as `btbnet predict`: a checkpoint's training
scale); white = in focus in the truth and the map.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from btbnet.data import read_stems  # noqa: E402
from btbnet.evaluation import evaluate  # noqa: E402
from btbnet.images import resize  # noqa: E402
from btbnet.io import save_png  # noqa: E402
from btbnet.predict import predict_map  # noqa: E402
from btbnet.pretrained import DEFAULT, load_model  # noqa: E402
from pipeline.runtime.figures import image_grid  # noqa: E402


def example(model_name: str, data: Path, stems: list[str], polarity: str, width: int,
            max_size: int | None = None) -> tuple[np.ndarray, dict]:  # fmt: skip
    """The picture (uint8 [H, W, 3]) and the model's paper-protocol figures on those photographs."""
    model, scale = load_model(model_name)
    found = evaluate({"model": lambda image: predict_map(model, image, max_size=max_size or scale)}, data, polarity,
                     examples=len(stems), stems=stems, progress=False)  # fmt: skip
    rows = [[resize(tile, (round(tile.shape[0] * width / tile.shape[1]), width), Image.Resampling.BILINEAR) for tile in row]
            for row in found.examples]  # fmt: skip
    return image_grid(rows, gap=1), found.results["model"]["paper"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT, help=f"released model name or checkpoint (default {DEFAULT})")
    parser.add_argument("--data", type=Path, required=True, help="a folder of image/ + gt/ (Shi's set: masks 255 = blurred)")
    parser.add_argument("--polarity", default="blurred", choices=("blurred", "in_focus"), help="what white means in the masks")
    parser.add_argument("--stems", type=Path, default=REPO / "data" / "splits" / "cuhk_val.txt", help="split file")
    parser.add_argument("--count", type=int, default=4, help="photographs: the split's first COUNT stems")
    parser.add_argument("--width", type=int, default=289, help="px, width of each tile")
    parser.add_argument("--max-size", type=int, help="longer side (px) the model sees (default: the model's own scale)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "example.png")
    args = parser.parse_args(argv)
    stems = read_stems(args.stems)[: args.count]
    picture, paper = example(args.model, args.data, stems, args.polarity, args.width, args.max_size)
    save_png(picture, args.out)
    print(f"{args.out}: {', '.join(stems)}: F {paper['f_measure']:.3f}, MAE {paper['mae']:.3f}")


if __name__ == "__main__":
    main()
