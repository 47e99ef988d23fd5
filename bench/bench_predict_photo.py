"""`btbnet predict photo.jpg` with its defaults on a 640×427 photograph: seconds per photo.

The target (docs/models.md): under 1 s per 640×427 photo on 2 CPU cores with the default model
and its default views (`--tta dihedral`: 8 flipped / turned passes averaged). Two figures:

    per photo   in this process, as the CLI runs it (`use_all_cores`, the released model's scale,
                its default views, `btbnet.files.predict_paths`: decode, 8 forward passes, the
                map resized back, PNG written): the median of `--repeats` photos after a warm-up
    command     the whole `btbnet predict photo.jpg --out DIR` process, cold: Python, torch and
                the model's loading included (the median of `--commands` runs)

The photograph is Shi-sized (640×427) and synthetic unless `--photo` names one: a sharp
textured half beside a blurred one, so the work is that of any photo of that size.

    python bench/bench_predict_photo.py [--model btbnet-lite0] [--photo P.jpg] [--tta dihedral]
                                        [--repeats 10] [--commands 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from btbnet.files import predict_paths  # noqa: E402
from btbnet.predict import DEFAULT_TTA, use_all_cores, with_views  # noqa: E402
from btbnet.pretrained import DEFAULT, load_model  # noqa: E402


def shi_sized_photo(path: Path, size: tuple[int, int] = (640, 427)) -> Path:
    """A 640×427 JPEG: random texture, its right half blurred."""
    rng = np.random.default_rng(0)
    texture = Image.fromarray(rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    blurred = texture.filter(ImageFilter.GaussianBlur(6))
    texture.paste(blurred.crop((size[0] // 2, 0, *size)), (size[0] // 2, 0))
    texture.save(path, quality=92)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT, help="a released model's name or a checkpoint")
    parser.add_argument("--photo", type=Path, default=None, help="a photograph (default: a synthetic 640×427 one)")
    parser.add_argument("--tta", default=DEFAULT_TTA, help="test-time views (btbnet.predict.VIEWS)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--commands", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    use_all_cores()
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        tmp = Path(tmp)
        photo = args.photo or shi_sized_photo(tmp / "photo.jpg")
        model, scale = load_model(args.model)
        views = with_views(model, args.tta)
        predict_paths(views, [photo], tmp / "warm", max_size=scale, progress=False)  # warm-up
        per_photo = []
        for i in range(args.repeats):
            started = time.perf_counter()
            predict_paths(views, [photo], tmp / f"out{i}", max_size=scale, progress=False)
            per_photo.append(time.perf_counter() - started)
        command = [str(Path(sys.executable).parent / "btbnet"), "predict", str(photo), "--model", args.model, "--tta", args.tta]
        whole = []
        for i in range(args.commands):
            started = time.perf_counter()
            subprocess.run([*command, "--out", str(tmp / f"cmd{i}")], check=True, capture_output=True)
            whole.append(time.perf_counter() - started)
        size = Image.open(photo).size

    result = {
        "model": args.model, "tta": args.tta, "photo": f"{size[0]}×{size[1]}", "seen_at": scale,
        "per_photo_s": statistics.median(per_photo), "command_s": statistics.median(whole),
        "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
    }  # fmt: skip
    print(f"{args.model}, --tta {args.tta}, {result['photo']} seen at {scale} px: "
          f"{result['per_photo_s']:.3f} s per photo (median of {args.repeats}), "
          f"{result['command_s']:.2f} s for the whole command (median of {args.commands}), {os.cpu_count()} CPUs")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
