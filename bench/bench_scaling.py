"""Scaling of the training stages: a plain PyTorch loop against the pipeline's Ray Train loop.

The same model, data, batch and optimiser run as
  - plain:  `btbnet.train.train_epoch` in this process (one thread), no Ray;
  - ray N:  `pipeline.training.trainer.run_training` (the stages' own loop: DDP, seeded sampler,
            checkpoints, MLflow) with N workers of one CPU each, on a local Ray instance, or
            with `--address` on a running cluster (e.g. two `ray start` nodes).
Per-step time is taken inside the loop, after 5 warm-up steps: for Ray, from the timestamps of
the steps rank 0 logs to MLflow (every 5th); the plain loop times the same steps. The fixed
cost of a Ray run (start-up of the worker group, DDP set-up, checkpoints, tear-down) is its
wall time minus its steps.
Also: `ray.init()` of a fresh local instance against connecting to a running one, the start-up
cost a stage pays (reuse one instance across stages by exporting RAY_ADDRESS).

    python bench/bench_scaling.py [--workers 1 2] [--steps 40] [--address HOST:PORT] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from btbnet import BTBNetConfig, build_model  # noqa: E402
from btbnet.data import InputConfig  # noqa: E402
from btbnet.train import LoopConfig, OptimConfig, make_optimizer, train_epoch  # noqa: E402
from pipeline.runtime import cluster  # noqa: E402
from pipeline.training.config import RayConfig, StageSpec, TrainConfig  # noqa: E402
from pipeline.training.store import RunStore  # noqa: E402
from pipeline.training.trainer import run_training  # noqa: E402
from pipeline.training.worker import make_loader  # noqa: E402

DATA = REPO / "data/embedded/defocus/train"
MODEL = BTBNetConfig(width=0.0625)
BATCH, SIZE = 4, 64


def spec(workers: int, steps: int, tmp: Path) -> StageSpec:
    train = TrainConfig(
        optim=OptimConfig(),
        loop=LoopConfig(epochs=1, batch_size=BATCH, max_steps_per_epoch=steps),
        input=InputConfig(image_size=SIZE, augment=True),
        ray=RayConfig(num_workers=workers, cpus_per_worker=1, checkpoint_every_steps=100, max_failures=0, storage=str(tmp / "runs")),
    )
    return StageSpec(name="bench", data=DATA, polarity="blurred", out=tmp / "m.pt", metrics=tmp / "m.json", plots=tmp / "plots", train=train, model=MODEL)


WARMUP = 5


def plain_step_seconds(steps: int) -> float:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    s = spec(1, steps, Path(tempfile.mkdtemp()))
    model = build_model(MODEL)
    loader = make_loader(s.dataset(), s.train, rank=0, world=1)
    times: list[float] = []
    train_epoch(model, loader, make_optimizer(model, s.train.optim), s.train.optim, max_steps=steps,
                on_step=lambda i, terms: times.append(time.perf_counter()))  # fmt: skip
    return (times[-1] - times[WARMUP]) / (steps - 1 - WARMUP)


def ray_step_seconds(workers: int, steps: int, local: bool) -> tuple[float, float]:
    """(seconds per step after the warm-up, fixed seconds of the run) of the stages' loop."""
    with tempfile.TemporaryDirectory() as tmp:
        s = spec(workers, steps, Path(tmp))
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        with mlflow.start_run() as run:
            started = time.perf_counter()
            run_training(s, (mlflow.get_tracking_uri(), run.info.run_id), Path(tmp) / "out.pt", local, RunStore(s.train.ray.storage), f"{workers}-{steps}")
            wall = time.perf_counter() - started
        history = {m.step: m.timestamp for m in mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "step/total")}
        first, last = WARMUP, max(history)
        per_step = (history[last] - history[first]) / 1000 / (last - first)
        return per_step, wall - steps * per_step


def init_seconds(address: str | None) -> float:
    code = f"import time, ray; t = time.perf_counter(); ray.init(address={address!r}, logging_level='ERROR'); print(time.perf_counter() - t)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=40, help="steps per run (the first 5 are warm-up)")
    parser.add_argument("--address", help="a running Ray cluster (RAY_ADDRESS) instead of a local instance")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    plain = plain_step_seconds(args.steps)
    rows.append({"run": "plain loop, 1 thread", "workers": 1, "s_per_step": plain, "images_per_s": BATCH / plain})
    local = cluster.init_ray(address=args.address)
    for n in args.workers:
        per_step, fixed = ray_step_seconds(n, args.steps, local)
        rows.append({"run": f"ray, {n} worker{'s' * (n > 1)}{'' if local else ' (cluster)'}", "workers": n, "s_per_step": per_step,
                     "images_per_s": BATCH / per_step, "fixed_s": fixed})  # fmt: skip
    for row in rows:
        row["vs_plain"] = plain / row["s_per_step"]
        row["efficiency"] = row["vs_plain"] / row["workers"]
    import ray

    ray.shutdown()
    init = {"fresh_local_s": init_seconds("local")}
    if args.address:
        init["connect_s"] = init_seconds(args.address)
    print(f"model {MODEL.variant} width {MODEL.width}, {SIZE}² images, batch {BATCH} (split over the workers), {args.steps} steps")
    print(f"{'run':32} {'s/step':>8} {'images/s':>9} {'× plain':>8} {'eff.':>6} {'fixed s':>8}")
    for r in rows:
        print(f"{r['run']:32} {r['s_per_step']:8.3f} {r['images_per_s']:9.1f} {r['vs_plain']:8.2f} {r['efficiency']:6.2f} {r.get('fixed_s', 0):8.1f}")
    print("ray.init: " + ", ".join(f"{k} {v:.1f}" for k, v in init.items()))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "init": init}, indent=2) + "\n")


if __name__ == "__main__":
    main()
