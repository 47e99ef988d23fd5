"""The pieces of resumable training that need no Ray: the run key, the resumable sampler, the
state saved beside each checkpoint, the run store, and the fit's wait that a signal always
interrupts (tests/test_scale_out.py and tests/test_reliability.py run them on Ray)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from btbnet import BTBNetConfig, build_model
from btbnet.checkpoint import save_checkpoint
from btbnet.data import DataError, InputConfig
from btbnet.train import LoopConfig, OptimConfig, make_optimizer, make_scheduler, train_epoch
from pipeline.training.config import RayConfig, StageSpec, TrainConfig
from pipeline.training.store import DATA_CACHE, RunStore, local_folder, run_key, ship_inputs
from pipeline.training.trainer import fit_interruptibly
from pipeline.training.worker import ResumableSampler, load_state, make_loader, save_state
from tests.pipeline_helpers import REPO

DATA = REPO / "data/embedded/defocus/train"


@pytest.fixture()
def spec(tmp_path) -> StageSpec:
    data = tmp_path / "data"
    shutil.copytree(DATA, data)
    train = TrainConfig(OptimConfig(), LoopConfig(batch_size=2, max_steps_per_epoch=4), InputConfig(image_size=16), RayConfig(num_workers=1))
    return StageSpec("pretrain", data, "blurred", tmp_path / "m.pt", tmp_path / "m.json", tmp_path / "plots", train, BTBNetConfig(width=0.0625, scales=(1.0,), rrnet_steps=0))


def test_the_run_key_changes_with_settings_and_data_content_only(spec):
    key = run_key(spec)
    assert run_key(spec) == key and len(key) == 16
    other_lr = dataclasses.replace(spec, train=dataclasses.replace(spec.train, optim=OptimConfig(lr_new=2e-3)))
    assert run_key(other_lr) != key
    image = next((spec.data / "image").iterdir())
    image.touch()  # a new mtime, the same bytes: the same stage
    assert run_key(spec) == key
    image.write_bytes(image.read_bytes() + b"\0")
    assert run_key(spec) != key


def test_the_sampler_resumes_the_same_order_part_way(spec):
    dataset = spec.dataset()
    sampler = ResumableSampler(dataset, num_replicas=2, rank=1, shuffle=True, seed=3)
    sampler.set_epoch(5)
    whole = list(sampler)
    sampler.skip = 6
    assert list(sampler) == whole[6:] and len(sampler) == len(whole) - 6


def test_saved_state_restores_the_run_exactly(spec, tmp_path):
    """Train 2 steps, save, train 2 more: a fresh model restored from the save and trained on
    the same 2 batches ends with the same weights (optimiser momentum and schedule included)."""
    torch.manual_seed(0)
    t = spec.train

    def fresh():
        model = build_model(spec.model)
        optimizer = make_optimizer(model, t.optim)
        return model, optimizer, make_scheduler(optimizer, t.optim, total_steps=4)

    model, optimizer, scheduler = fresh()
    loader = make_loader(spec.dataset(), t, rank=0, world=1)
    train_epoch(model, loader, optimizer, t.optim, max_steps=2, scheduler=scheduler)
    save_checkpoint(model, tmp_path / "model.pt")
    save_state(tmp_path, optimizer, scheduler, epoch=0, step=2)
    loader.sampler.skip = 2 * t.loop.batch_size
    train_epoch(model, loader, optimizer, t.optim, max_steps=2, scheduler=scheduler)

    again, optimizer2, scheduler2 = fresh()
    assert load_state(tmp_path, again, optimizer2, scheduler2) == (0, 2)
    train_epoch(again, loader, optimizer2, t.optim, max_steps=2, scheduler=scheduler2)
    assert scheduler2.last_epoch == scheduler.last_epoch == 4
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_the_run_store_lists_and_removes_the_runs_of_one_stage(tmp_path):
    store = RunStore(str(tmp_path / "runs"))
    for name in ("pretrain-aaaa", "pretrain-bbbb", "finetune-aaaa"):
        (tmp_path / "runs" / name).mkdir()
    (tmp_path / "runs" / "pretrain-file").write_text("not a run")
    assert store.runs("pretrain") == ["pretrain-aaaa", "pretrain-bbbb"]
    store.remove("pretrain-aaaa")
    assert store.runs("pretrain") == ["pretrain-bbbb"] and store.runs("finetune") == ["finetune-aaaa"]
    assert Path(RunStore(None).uri).name == ".ray_runs"


def test_a_data_uri_is_copied_once_per_version_of_its_content(tmp_path):
    source = tmp_path / "bucket" / "train"
    shutil.copytree(DATA, source)
    first = local_folder(source.as_uri())  # file://…: the same pyarrow path as s3://…
    assert first.parent == DATA_CACHE and sorted(p.name for p in first.iterdir()) == ["gt", "image"]
    assert (first / "image" / "defocus_0000.png").read_bytes() == (source / "image" / "defocus_0000.png").read_bytes()
    assert local_folder(source.as_uri()) == first  # cached
    (source / "gt" / "defocus_0000.png").write_bytes(b"changed")
    assert local_folder(source.as_uri()) != first  # a new version, a new copy
    assert local_folder(source) == source  # a path is used where it is
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no files there"):
        local_folder(empty.as_uri())


def tree(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def test_a_storage_uri_ships_every_local_input_to_the_workers(spec, tmp_path):
    """With `ray.storage` a URI, the workers get URIs only (no path of the driver's disk), with
    the same content; a second stage run with the same inputs uploads nothing again."""
    init = tmp_path / "init.pt"
    save_checkpoint(build_model(spec.model), init)
    spec = dataclasses.replace(spec, init_checkpoint=init, backbone_weights="imagenet")
    store = RunStore((tmp_path / "bucket").as_uri())
    shipped = ship_inputs(spec, spec.data, store)
    assert str(shipped.data).startswith(store.uri + "/inputs/") and str(shipped.init_checkpoint).startswith(store.uri + "/inputs/")
    assert shipped.backbone_weights == "imagenet"  # a name each node resolves for itself
    assert tree(local_folder(shipped.data)) | {".complete": b""} == tree(spec.data) | {".complete": b""}
    assert local_folder(shipped.init_checkpoint).read_bytes() == init.read_bytes()
    assert local_folder(shipped.init_checkpoint).name == "init.pt"
    uploaded = {f: f.stat().st_mtime_ns for f in (tmp_path / "bucket").rglob("*") if f.is_file()}
    assert ship_inputs(spec, spec.data, store) == shipped
    assert {f: f.stat().st_mtime_ns for f in (tmp_path / "bucket").rglob("*") if f.is_file()} == uploaded  # not again
    image = next((spec.data / "image").iterdir())
    image.write_bytes(image.read_bytes() + b"\0")
    assert ship_inputs(spec, spec.data, store).data != shipped.data  # new content, new copy
    assert ship_inputs(spec, spec.data, RunStore(str(tmp_path / "runs"))) == spec  # a path storage: a shared file system


def test_workers_copying_one_data_uri_at_once_all_get_the_whole_copy(tmp_path):
    """Train workers of one machine (or two nodes on one machine) copy a URI at the same time:
    none may replace a copy another one already reads."""
    from concurrent.futures import ThreadPoolExecutor

    source = tmp_path / "bucket" / "train"
    shutil.copytree(DATA, source)
    with ThreadPoolExecutor(6) as pool:
        copies = list(pool.map(lambda _: local_folder(source.as_uri()), range(6)))
    assert len(set(copies)) == 1 and tree(copies[0]) == tree(source)
    assert not [p for p in DATA_CACHE.iterdir() if p.name.startswith(f".{copies[0].name}-")]  # no leftovers


class Trainer:
    """A stand-in for Ray Train's TorchTrainer: `fit` blocks on `gate`, then returns or raises."""

    def __init__(self, outcome: object):
        self.gate, self.outcome, self.thread = threading.Event(), outcome, None

    def fit(self) -> object:
        self.thread = threading.current_thread()
        self.gate.wait()  # a wait in C, as Ray's ray.get is
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


def test_the_fit_runs_off_the_main_thread_and_its_result_or_error_comes_back():
    done = Trainer("result")
    done.gate.set()
    assert fit_interruptibly(done) == "result" and done.thread is not threading.main_thread()
    failed = Trainer(RuntimeError("worker group failed"))
    failed.gate.set()
    with pytest.raises(RuntimeError, match="worker group failed"):
        fit_interruptibly(failed)


def test_a_signal_interrupts_the_stage_while_the_fit_waits():
    """SIGINT (a terminal's Ctrl-C) while the fit is blocked: KeyboardInterrupt in the main
    thread within the poll interval, the fit left to the stage's clean-up (Ray's shutdown)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's, even in a run started with SIGINT ignored (`pytest &`); restored by conftest
    stuck = Trainer("never")
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    release = threading.Timer(10, stuck.gate.set)  # a fit the signal did not interrupt ends, and the test fails
    release.start()
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            fit_interruptibly(stuck, poll_s=0.1)
    finally:
        release.cancel()
        stuck.gate.set()
    assert time.monotonic() - started < 3
