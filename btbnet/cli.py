"""Command line: `btbnet predict …`, `btbnet export …` and `btbnet summary …` (also `python -m btbnet`).

    btbnet predict IMAGE_OR_DIR... [--model NAME_OR_CKPT] [--out DIR] [--overlay] [--max-size N] [--max-pixels M] [--tta none|flip|dihedral] [--batch-size N] [--device cpu|cuda] [--precision fp32|bf16|fp16] [--channels-last] [--compile]
    btbnet export --format onnx|torchscript [--model NAME_OR_CKPT] [--out PATH]
    btbnet summary [--variant paper|fast] [--width W] [--scales 1 0.8 0.6] [--rrnet-steps N] [--size S]
    btbnet --version

Errors in the user's input (a missing or unreadable file, a bad setting or checkpoint) print
one line, `btbnet: error: <message>`, on stderr and exit with status 2, as argparse does.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from . import __version__
from .config import VARIANTS, BTBNetConfig, ConfigError
from .data import DataError
from .export import DEFAULT_OUT, FORMATS, MissingPackage, export_model, require
from .files import predict_paths, writable_folder
from .predict import DEFAULT_TTA, MAX_PIXELS, VIEWS, OverBudget, use_all_cores, with_views
from .pretrained import DEFAULT, MODELS, load_model
from .speed import PRECISIONS, SpeedConfig
from .summary import summarize

PROG = "btbnet"
EXIT_USAGE = 2
# What a user's mistake raises (or a missing optional package); anything else is a bug and
# keeps its traceback.
USER_ERRORS = (FileNotFoundError, DataError, ConfigError, ValueError, OSError, MissingPackage)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return int(exc.code or 0)
    try:
        return args.run(args)
    except USER_ERRORS as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Defocus blur detection with the multi-stream BTBNet (Zhao et al., CVPR 2018)."
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_predict_command(commands)
    add_export_command(commands)
    add_summary_command(commands)
    return parser


def add_predict_command(commands: Any) -> None:
    predict = commands.add_parser(
        "predict",
        help="write a focus map (255 = in focus) per image",
        description="Write OUT/<stem>.png, an 8-bit grey focus map (255 = in focus), for every image.",
    )
    predict.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders of images")
    add_model_argument(predict)
    predict.add_argument("--out", default="maps", metavar="DIR", help="output folder, created if missing (default: maps)")
    predict.add_argument(
        "--overlay", action="store_true", help="also write OUT/<stem>_overlay.png: image | focus map | the image with its blurred part marked, with headers and a legend"
    )
    predict.add_argument(
        "--max-size", type=positive_int, metavar="N",
        help="run the model on images downscaled to at most N px (default: a released model's scale, 416 px for btbnet-lite0 and btbnet-cpu; a checkpoint's training scale)",
    )  # fmt: skip
    predict.add_argument(
        "--max-pixels", type=positive_int, metavar="M", default=MAX_PIXELS,
        help="refuse, before any work, an image the model would see at more than M pixels after --max-size "
        f"(default: {MAX_PIXELS:,}; memory grows with them, ~0.35 GB per megapixel for btbnet-cpu)",
    )  # fmt: skip
    add_tta_argument(predict)
    predict.add_argument(
        "--batch-size", type=positive_int, default=1, metavar="N",
        help="run up to N images the model sees at the same size (after --max-size) through it together; "
        "the same maps as 1 (the default); a batch stays within --max-pixels",
    )  # fmt: skip
    predict.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs (default: cpu)")
    predict.add_argument(
        "--precision", choices=sorted(PRECISIONS), default="fp32",
        help="the forward pass's precision (autocast; default fp32; bf16 on GPUs with tensor cores)",
    )  # fmt: skip
    predict.add_argument("--channels-last", action="store_true", help="NHWC memory layout (faster on GPUs)")
    predict.add_argument("--compile", action="store_true", help="torch.compile the model (pays off over many images of one size)")
    predict.set_defaults(run=run_predict)


def add_export_command(commands: Any) -> None:
    export = commands.add_parser(
        "export",
        help="write the model as an ONNX or TorchScript file for any batch and image size",
        description="Write the model as one file taking RGB [N, 3, H, W] in [0, 1] (any N, H, W) to the "
        "in-focus probability [N, 1, H, W], then run that file at two sizes against PyTorch and print "
        "the max abs difference.",
    )
    export.add_argument("--format", choices=FORMATS, required=True, help="file format")
    add_model_argument(export)
    export.add_argument(
        "--out", metavar="PATH",
        help=f"output file (default: {' or '.join(f'{v} for {k}' for k, v in DEFAULT_OUT.items())})",
    )  # fmt: skip
    export.set_defaults(run=run_export)


def add_summary_command(commands: Any) -> None:
    summary = commands.add_parser(
        "summary",
        help="print the parameter count and GMACs of a model configuration as one JSON line",
        description="Print one JSON line: the configuration, params and gmacs (billions of MACs per image).",
    )
    defaults = BTBNetConfig()
    summary.add_argument("--variant", choices=VARIANTS, default=defaults.variant)
    summary.add_argument("--width", type=float, default=defaults.width, help="channel multiplier (1.0 = paper)")
    summary.add_argument("--scales", type=float, nargs="+", default=list(defaults.scales), metavar="S")
    summary.add_argument("--rrnet-steps", type=int, default=defaults.rrnet_steps, metavar="N")
    summary.add_argument("--size", type=positive_int, default=320, metavar="S", help="image side in px (default: 320)")
    summary.set_defaults(run=run_summary)


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """--model NAME_OR_CKPT, as `load_model` takes it."""
    parser.add_argument(
        "--model", default=DEFAULT, metavar="NAME_OR_CKPT",
        help=f"a released model ({', '.join(sorted(MODELS))}; default {DEFAULT}), a checkpoint written by btbnet training, "
        "or an MLflow model URI the pipeline logged (models:/btbnet@candidate; needs mlflow)",
    )  # fmt: skip


def add_tta_argument(parser: argparse.ArgumentParser) -> None:
    """--tta VIEWS, as `btbnet.predict.with_views` takes it."""
    parser.add_argument(
        "--tta", choices=list(VIEWS), default=DEFAULT_TTA,
        help=f"average the maps of flipped (flip: 2 views) or also turned (dihedral: 8 views) copies of each image; "
        f"time × the views, memory as one (default: {DEFAULT_TTA})",
    )  # fmt: skip


def run_predict(args: argparse.Namespace) -> int:
    # predict_paths checks every input and output name before it writes the first file; the
    # output folder is checked first of all, before the model loads.
    writable_folder(args.out)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available on this machine")
    model, scale = load_model(args.model, map_location=args.device)
    speed = SpeedConfig(precision=args.precision, channels_last=args.channels_last, compile=args.compile)
    model = speed.prepare(with_views(model, args.tta))
    max_size = args.max_size or scale
    use_all_cores()  # unless OMP_NUM_THREADS says otherwise
    start = time.perf_counter()
    try:
        written = predict_paths(
            model, args.inputs, args.out, overlay=args.overlay, max_size=max_size, device=args.device,
            max_pixels=args.max_pixels, batch_size=args.batch_size, speed=speed,
        )  # fmt: skip
    except OverBudget as exc:
        raise ValueError(exc.advise("--max-size {}", "--max-pixels {}")) from None
    seconds, images = time.perf_counter() - start, len(written) // (2 if args.overlay else 1)
    print(f"wrote {len(written)} file(s) to {args.out} ({images} images in {seconds:.2f} s, {images / seconds:.1f} images/s)")
    return 0


def run_export(args: argparse.Namespace) -> int:
    require(args.format)  # before loading the model
    model, _ = load_model(args.model)
    print(export_model(model, args.out or DEFAULT_OUT[args.format], args.format).line())
    return 0


def run_summary(args: argparse.Namespace) -> int:
    config = BTBNetConfig(
        variant=args.variant, width=args.width, scales=tuple(args.scales), rrnet_steps=args.rrnet_steps
    )
    print(json.dumps(summarize(config, args.size)))
    return 0


def version() -> str:
    """The installed distribution's version, or the package's own where btbnet is not installed."""
    try:
        return importlib.metadata.version(PROG)
    except importlib.metadata.PackageNotFoundError:
        return __version__


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value
