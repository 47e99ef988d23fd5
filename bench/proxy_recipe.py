"""Proxy runs for choosing a recipe on the validation split: a short training in one process,
scored on held-out photographs, every run kept in MLflow.

A proxy is the pipeline's chain in miniature, without Ray or DVC: optionally pre-training on a
synthetic set (`python -m pipeline.synthesize`'s output, or any image/ + gt/ folder with
255 = in focus), then fine-tuning on Shi's training pairs minus the validation stems, with the
library's own model, data and training code (`btbnet.train.train_epoch`), then scoring the
validation photographs with both protocols of `btbnet.metrics` at each `--eval-size` and test-
time views setting. Params, the loss per step and every score go to MLflow (experiment
`btbnet-proxies`, `--tracking-uri`, default the repo's store), so runs compare side by side in
`mlflow ui`; `--json` writes the scores too.

    python bench/proxy_recipe.py --name lite0-lens --model '{"variant": "efficientnet-lite0", "width": 0.25,
        "scales": [1], "rrnet_steps": 1}' --backbone-weights imagenet --pretrain data/synthetic-lens
        --pretrain-steps 600 --finetune-steps 1200 --optim '{"optimizer": "adamw", "lr_backbone": 0.001,
        "lr_new": 0.003, "schedule": "cosine", "warmup_steps": 50, "iou_weight": 1.0}'

Select with the validation split (`data/splits/cuhk_val.txt`), never a test set; one seed per
run, so differences of 0.01 are within noise (docs/real-data.md, "How the recipe was found").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from btbnet.config import BTBNetConfig, from_mapping, to_dict  # noqa: E402
from btbnet.data import InputConfig, PairDataset, read_stems  # noqa: E402
from btbnet.evaluation import evaluate  # noqa: E402
from btbnet.model import build_model  # noqa: E402
from btbnet.predict import predict_map, with_views  # noqa: E402
from btbnet.train import OptimConfig, make_optimizer, make_scheduler, train_epoch  # noqa: E402

EXPERIMENT = "btbnet-proxies"


def fit(model: torch.nn.Module, dataset: PairDataset, optim: OptimConfig, steps: int, batch: int, seed: int,
        log: Any, phase: str, offset: int) -> float:  # fmt: skip
    """`steps` optimiser steps on `dataset` (epochs re-drawn until done); the last loss."""
    optimizer = make_optimizer(model, optim)
    scheduler = make_scheduler(optimizer, optim, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    done, epoch, last = 0, 0, float("nan")
    while done < steps:
        dataset.set_epoch(epoch)
        loader = DataLoader(dataset, batch_size=batch, sampler=RandomSampler(dataset, generator=generator), drop_last=True)

        def on_step(i: int, terms: dict[str, float]) -> None:
            if (done + i) % 20 == 0:
                log({f"{phase}/{k}": v for k, v in terms.items()}, offset + done + i)

        terms = train_epoch(model, loader, optimizer, optim, on_step=on_step, max_steps=steps - done, scheduler=scheduler)
        done += min(len(loader), steps - done)
        epoch, last = epoch + 1, terms["total"]
        print(f"{phase}: {done}/{steps} steps, epoch {epoch}, loss {last:.4f}", flush=True)
    return last


def score(model: torch.nn.Module, data: Path, stems: list[str], sizes: list[int | None], views: list[str]) -> dict[str, float]:
    """`val/<size>/<views>/<metric>` for each size the model sees the photos at and each views setting."""
    model.eval()
    out = {}
    for size in sizes:
        for setting in views:
            tta = with_views(model, setting)
            result = evaluate({"m": lambda image: predict_map(tta, image, max_size=size)}, data, "blurred", stems=stems,
                              progress=False).results["m"]  # fmt: skip
            paper, ddff = result["paper"], result["ddff"]
            key = f"val/{size or 'native'}/{setting}"
            out |= {f"{key}/f": paper["f_measure"], f"{key}/f_img": paper["f_measure_per_image"], f"{key}/f_max": paper["f_max"],
                    f"{key}/mae": paper["mae"], f"{key}/f_ddff": ddff["f_measure"]}  # fmt: skip
            print(f"{key}: F {paper['f_measure']:.3f}  F/img {paper['f_measure_per_image']:.3f}  max-F {paper['f_max']:.3f}  "
                  f"MAE {paper['mae']:.3f}  F ddff {ddff['f_measure']:.3f}", flush=True)  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True, help="the MLflow run's name")
    p.add_argument("--model", default="{}", help="BTBNetConfig fields as JSON")
    p.add_argument("--optim", default="{}", help="OptimConfig fields as JSON (both phases)")
    p.add_argument("--input", default='{"max_size": 320, "crop_size": 192}', help="InputConfig fields as JSON (both phases)")
    p.add_argument("--backbone-weights", default=None, help='"imagenet" or a path (btbnet.build_model)')
    p.add_argument("--pretrain", type=Path, default=None, help="synthetic image/ + gt/ folder (255 = in focus)")
    p.add_argument("--pretrain-steps", type=int, default=0)
    p.add_argument("--finetune", type=Path, default=REPO / "data/external/cuhk/train", help="Shi's training folder")
    p.add_argument("--val-stems", type=Path, default=REPO / "data/splits/cuhk_val.txt", help="held out of training, scored")
    p.add_argument("--finetune-steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--eval-size", type=int, nargs="+", default=[416], help="longer side the validation photos are seen at")
    p.add_argument("--views", nargs="+", default=["none"], help="test-time views settings scored (btbnet.predict.VIEWS)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save", type=Path, default=None, help="write the trained checkpoint here")
    p.add_argument("--tracking-uri", default=f"sqlite:///{REPO / 'mlflow.db'}")
    p.add_argument("--json", type=Path, default=None, help="append the run's params and scores as a JSON line")
    args = p.parse_args(argv)

    import mlflow

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = from_mapping(BTBNetConfig, json.loads(args.model), "model.")
    optim = from_mapping(OptimConfig, json.loads(args.optim), "optim.")
    inputs = from_mapping(InputConfig, json.loads(args.input), "input.")
    val = read_stems(args.val_stems)
    model = build_model(config, backbone_weights=args.backbone_weights)
    params = {"model": to_dict(config), "optim": to_dict(optim), "input": to_dict(inputs), "backbone_weights": args.backbone_weights,
              "pretrain": str(args.pretrain), "pretrain_steps": args.pretrain_steps, "finetune_steps": args.finetune_steps,
              "batch_size": args.batch_size, "seed": args.seed, "threads": args.threads}  # fmt: skip

    mlflow.set_tracking_uri(args.tracking_uri)
    mlflow.set_experiment(EXPERIMENT)
    started = time.monotonic()
    with mlflow.start_run(run_name=args.name):
        mlflow.log_params({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in params.items()})

        def log(metrics: dict[str, float], step: int) -> None:
            mlflow.log_metrics(metrics, step=step)

        seconds = {}
        if args.pretrain is not None and args.pretrain_steps:
            synthetic = inputs.dataset(args.pretrain, "in_focus", seed=args.seed)
            t = time.monotonic()
            fit(model, synthetic, optim, args.pretrain_steps, args.batch_size, args.seed, log, "pretrain", 0)
            seconds["pretrain_s"] = time.monotonic() - t
        shi = inputs.dataset(args.finetune, "blurred", exclude=val, seed=args.seed)
        t = time.monotonic()
        fit(model, shi, optim, args.finetune_steps, args.batch_size, args.seed + 1, log, "finetune", args.pretrain_steps)
        seconds["finetune_s"] = time.monotonic() - t
        t = time.monotonic()
        scores = score(model, args.finetune, val, args.eval_size, args.views)
        seconds["score_s"] = time.monotonic() - t
        mlflow.log_metrics(scores | seconds)
        if args.save:
            from btbnet.checkpoint import save_checkpoint

            save_checkpoint(model, args.save, **({"max_size": inputs.max_size} if inputs.max_size else {}))
    print(f"{args.name}: {json.dumps(seconds)} ({time.monotonic() - started:.0f} s in all)")
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps({"name": args.name, "params": params, "scores": scores, "seconds": seconds}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
