"""`python -m pipeline.commands.batch_predict`: maps of a folder on Ray Data, resumable, named from the inputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from btbnet import BTBNetConfig, build_model, load_checkpoint, save_checkpoint
from btbnet.config import ConfigError
from btbnet.data import load_rgb
from btbnet.cli import main as btbnet_main
from btbnet.files import Job
from btbnet.predict import MAX_PIXELS, predict_map, with_views
from pipeline.commands import batch_predict
from pipeline.commands.batch_predict import Predictor, Summary, Timing, main, plan

from .pipeline_helpers import REPO, describe, error_line, stage_env

SHAPES = {"a": (12, 16), "b": (24, 32), "c": (12, 16), "d": (20, 20), "e": (15, 20)}  # at max_size 16: 3 × 12×16


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny model trained (so it says) at 16 px: batch_predict's default scale for it."""
    torch.manual_seed(0)
    model = build_model(BTBNetConfig(variant="fast", width=0.0625, scales=(1.0, 0.6), rrnet_steps=1))
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.pt", max_size=16)


@pytest.fixture()
def images(tmp_path) -> Path:
    """tmp_path/in: five small PNGs of three sizes for the model."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for stem, shape in SHAPES.items():
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(folder / f"{stem}.png")
    return folder


def reference_maps(checkpoint: Path, folder: Path, out: Path) -> dict[str, np.ndarray]:
    """What `btbnet predict FOLDER --model CKPT --out OUT` writes, stem → map."""
    assert btbnet_main(["predict", str(folder), "--model", str(checkpoint), "--out", str(out)]) == 0
    return {p.stem: np.asarray(Image.open(p)) for p in sorted(out.iterdir())}


def read_maps(out: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))}


def assert_same_maps(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """The same files; each map equal to within one grey level (the actors run oneDNN's kernels,
    the tests torch's native ones: float rounding may flip a .5)."""
    assert sorted(got) == sorted(expected)
    for stem, focus in got.items():
        assert focus.shape == expected[stem].shape and focus.dtype == np.uint8
        assert np.abs(focus.astype(int) - expected[stem].astype(int)).max() <= 1, stem
        assert np.mean(focus != expected[stem]) < 0.02, stem


def test_predictor_writes_the_maps_itself_and_returns_only_names_and_times(checkpoint, images, tmp_path):
    bad = images / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    torch.set_num_threads(2)  # (conftest restores the count)
    predictor = Predictor(str(checkpoint), max_size=16, max_pixels=MAX_PIXELS, batch_size=3)
    assert torch.get_num_threads() == 1  # one CPU per actor
    sources = [images / f"{stem}.png" for stem in SHAPES] + [bad]
    rows = predictor({"source": np.array([str(s) for s in sources]),
                      "map": np.array([str(out / f"{s.stem}.png") for s in sources])})  # fmt: skip
    assert set(rows) == {"source", "seconds", "error"}
    assert sorted(rows["source"]) == sorted(map(str, sources))
    errors = dict(zip(rows["source"], rows["error"]))
    assert errors.pop(str(bad)).startswith(f"{bad}: ") and set(errors.values()) == {""}
    assert all(isinstance(s, float) and s >= 0 for s in rows["seconds"])
    assert sorted(p.name for p in out.iterdir()) == [f"{stem}.png" for stem in SHAPES]  # no temporary files
    bad.unlink()
    assert_same_maps(read_maps(out), reference_maps(checkpoint, images, tmp_path / "ref"))


def test_the_predictor_averages_the_views_it_is_given(checkpoint, images, tmp_path):
    predictor = Predictor(str(checkpoint), max_size=None, max_pixels=MAX_PIXELS, batch_size=2, tta="dihedral")
    sources = [images / f"{stem}.png" for stem in SHAPES]
    predictor({"source": np.array([str(s) for s in sources]), "map": np.array([str(tmp_path / s.name) for s in sources])})
    model = with_views(load_checkpoint(checkpoint), "dihedral")
    for source in sources:
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / source.name)), predict_map(model, load_rgb(source)))


def test_plan_skips_the_maps_already_there_and_clears_a_killed_runs_temporary_files(images, tmp_path):
    out = tmp_path / "out"
    todo, skipped = plan(images, out, 16, MAX_PIXELS)
    assert [job.source.name for job in todo] == [f"{stem}.png" for stem in SHAPES] and skipped == 0
    assert todo[0] == Job(images / "a.png", out / "a.png", None)
    out.mkdir()
    (out / "b.png").write_bytes(b"done")
    stale = out / ".c.png.0123abcd.tmp"
    stale.write_bytes(b"half a PNG")
    todo, skipped = plan(images, out, 16, MAX_PIXELS)
    assert [job.source.stem for job in todo] == ["a", "c", "d", "e"] and skipped == 1
    assert not stale.exists() and (out / "b.png").exists()


def test_bad_input_is_one_line_and_exit_2_before_ray_starts(checkpoint, images, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(batch_predict, "connect", lambda address: pytest.fail("Ray started"))
    out = str(tmp_path / "out")

    def error(*argv: str) -> str:
        assert main([*argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        return err

    assert error(str(tmp_path / "nope"), out, "--model", str(checkpoint)) == f"batch_predict: error: {tmp_path / 'nope'}: no such folder\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert error(str(empty), out, "--model", str(checkpoint)).startswith(f"batch_predict: error: {empty}: folder has no images")
    assert error(str(images), out, "--model", str(tmp_path / "missing.pt")) == (
        f"batch_predict: error: {tmp_path / 'missing.pt'}: checkpoint not found\n"
    )
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    assert "not a btbnet checkpoint" in error(str(images), out, "--model", str(tmp_path / "garbage.pt"))
    assert error(str(images), out, "--model", str(checkpoint), "--max-size", "32", "--max-pixels", "300") == (
        f"batch_predict: error: {images / 'b.png'}: 32×24 px is 768 pixels for the model, over the budget of 300; "
        "use --max-size 20 to downscale, or --max-pixels 768 to raise the budget\n"
    )
    with pytest.raises(ConfigError, match=r"^tta: must be one of \['dihedral', 'flip', 'none'\], got 'rot90'"):
        batch_predict.batch_predict(images, tmp_path / "out", str(checkpoint), tta="rot90")
    Image.new("RGB", (8, 8)).save(images / "a.jpg")  # a.jpg and a.png would both write a.png
    assert "same file name stem" in error(str(images), out, "--model", str(checkpoint))
    assert not (tmp_path / "out").exists()


def test_nothing_to_do_does_not_start_ray(checkpoint, images, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(batch_predict, "connect", lambda address: pytest.fail("Ray started"))
    out = tmp_path / "out"
    reference_maps(checkpoint, images, out)
    capsys.readouterr()
    assert main([str(images), str(out), "--model", str(checkpoint)]) == 0
    assert capsys.readouterr().out == f"batch_predict: 0 done, 5 skipped, – images/s (0.0 s) -> {out}\n"


def test_summary_line_and_the_rate_after_the_first_batch(tmp_path):
    timing = Timing(seconds=10.0, first_s=6.0, first_images=4)
    assert timing.steady_rate(24) == 5.0  # 20 images in the last 4 s
    assert timing.steady_rate(4) is None and Timing().steady_rate(0) is None
    summary = Summary(done=24, skipped=3, errors=["x: bad"], timing=timing)
    assert summary.line(tmp_path) == (
        f"batch_predict: 24 done, 3 skipped, 1 failed, 2.40 images/s (10.0 s, the first back after 6.0 s) -> {tmp_path}"
    )


def run_module(*argv: str) -> subprocess.CompletedProcess[str]:
    """`python -m pipeline.commands.batch_predict ARGV` in the repo, without $RAY_ADDRESS: its own local Ray."""
    return subprocess.run([sys.executable, "-m", "pipeline.commands.batch_predict", *argv], cwd=REPO, env=stage_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def summary_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, describe(done)
    lines = [line for line in done.stdout.splitlines() if line.startswith("batch_predict: ")]
    assert len(lines) == 1, describe(done)
    return lines[0]


@pytest.mark.slow  # two local Ray instances: ~30 s each on a busy 2-core machine
def test_ray_run_writes_the_maps_of_btbnet_predict_and_resumes(checkpoint, images, tmp_path):
    out = tmp_path / "out"
    args = (str(images), str(out), "--model", str(checkpoint), "--batch-size", "2", "--actors", "2")
    first = summary_line(run_module(*args))
    assert first.startswith("batch_predict: 5 done, 0 skipped, ") and first.endswith(f" -> {out}")
    assert sorted(p.name for p in out.iterdir()) == [f"{stem}.png" for stem in SHAPES]  # named from the inputs only
    expected = reference_maps(checkpoint, images, tmp_path / "ref")
    assert_same_maps(read_maps(out), expected)
    written = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    again = summary_line(run_module(*args))  # everything is there: nothing redone
    assert again.startswith("batch_predict: 0 done, 5 skipped, ")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == written

    (out / "c.png").unlink()  # as if the run had been killed before writing it
    (images / "zz.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # unreadable: the others are still written
    resumed = run_module(*args)
    assert resumed.returncode == 2, describe(resumed)
    assert "batch_predict: 1 done, 4 skipped, 1 failed, " in resumed.stdout
    line = error_line(resumed.stderr, "batch_predict")
    assert line.startswith(f"batch_predict: error: {images / 'zz.png'}: cannot read image (") and line.endswith(
        "; the other maps are written"
    )
    now = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert {k: v for k, v in now.items() if k != "c.png"} == {k: v for k, v in written.items() if k != "c.png"}
    assert now.keys() == written.keys()  # c.png redone, nothing for zz.png, no temporary files
    assert_same_maps(read_maps(out), expected)
