"""Command line: `btbnet predict`, `btbnet summary`, errors, and both entry points."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from btbnet import BTBNetConfig, build_model, load_checkpoint, save_checkpoint
from btbnet.cli import main
from btbnet.data import load_rgb
from btbnet.overlay import layout
from btbnet.predict import DEFAULT_TTA, predict_map, with_views
from btbnet.pretrained import load_pretrained
from btbnet.summary import count_parameters

REPO = Path(__file__).resolve().parents[1]
CONSOLE_SCRIPT = Path(sys.executable).parent / "btbnet"


def default_map(model, image, **kwargs):
    """The map `btbnet predict` writes without --tta (its test-time views, DEFAULT_TTA)."""
    return predict_map(with_views(model, DEFAULT_TTA), image, **kwargs)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(BTBNetConfig(variant="fast", width=0.0625, scales=(1.0, 0.6), rrnet_steps=1))
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture()
def images(tmp_path) -> dict[str, tuple[int, int]]:
    """Three images in tmp_path/in: RGB JPEG, grey PNG, RGBA PNG; name → (H, W)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (14, 20, 3), dtype=np.uint8)).save(folder / "rgb.jpg")
    Image.fromarray(rng.integers(0, 256, (17, 9), dtype=np.uint8)).save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 256, (12, 12, 4), dtype=np.uint8)).save(folder / "alpha.png")
    return {"rgb.jpg": (14, 20), "grey.png": (17, 9), "alpha.png": (12, 12)}


def test_predict_writes_a_map_per_image_consistent_with_predict_map(checkpoint, images, tmp_path, capsys):
    inputs = [str(tmp_path / "in" / name) for name in images]
    out = tmp_path / "out"
    assert main(["predict", *inputs, "--model", str(checkpoint), "--out", str(out)]) == 0
    assert "wrote 3 file(s)" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["alpha.png", "grey.png", "rgb.png"]
    model = load_checkpoint(checkpoint)
    for name, (h, w) in images.items():
        with Image.open(out / f"{Path(name).stem}.png") as img:
            assert img.mode == "L" and img.size == (w, h)
            focus = np.asarray(img)
        np.testing.assert_array_equal(focus, default_map(model, load_rgb(tmp_path / "in" / name)))


def test_predict_folder_with_overlay_and_max_size(checkpoint, images, tmp_path):
    out = tmp_path / "out"
    argv = ["predict", str(tmp_path / "in"), "--model", str(checkpoint), "--out", str(out), "--overlay",
            "--max-size", "10"]
    assert main(argv) == 0
    model = load_checkpoint(checkpoint)
    for name, (h, w) in images.items():
        stem = Path(name).stem
        with Image.open(out / f"{stem}_overlay.png") as img:
            grid = layout((h, w))
            assert img.mode == "RGB" and img.size == (grid.size[1], grid.size[0]) and min(grid.tile) == 256
        with Image.open(out / f"{stem}.png") as img:
            assert img.size == (w, h)
            expected = default_map(model, load_rgb(tmp_path / "in" / name), max_size=10)
            np.testing.assert_array_equal(np.asarray(img), expected)
    assert len(list(out.iterdir())) == 6


def test_batch_size_writes_the_maps_of_batch_size_1(checkpoint, tmp_path, capsys):
    rng = np.random.default_rng(3)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(5):  # all seen at 12×16 with --max-size 16
        Image.fromarray(rng.integers(0, 256, (12 + 3 * (i % 2), 16 + 4 * (i % 2), 3), dtype=np.uint8)).save(folder / f"{i}.png")
    common = ["predict", str(folder), "--model", str(checkpoint), "--max-size", "16"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    assert main([*common, "--out", str(tmp_path / "four"), "--batch-size", "4"]) == 0
    summary = capsys.readouterr().out.splitlines()[-1]
    assert re.fullmatch(rf"wrote 5 file\(s\) to {re.escape(str(tmp_path / 'four'))} \(5 images in [\d.]+ s, [\d.]+ images/s\)", summary)
    for i in range(5):
        one = np.asarray(Image.open(tmp_path / "one" / f"{i}.png")).astype(int)
        four = np.asarray(Image.open(tmp_path / "four" / f"{i}.png")).astype(int)
        assert np.abs(one - four).max() <= 1  # to float rounding: identical here
    assert main([*common, "--out", str(tmp_path / "x"), "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err


def test_tta_writes_the_mean_map_of_the_views(images, tmp_path, capsys):
    common = ["predict", str(tmp_path / "in"), "--model", "btbnet-cpu"]  # a trained model: views disagree
    model = load_pretrained("btbnet-cpu")
    for views in ("none", "flip", "dihedral"):
        assert main([*common, "--out", str(tmp_path / views), "--tta", views]) == 0
        for name in images:
            image = load_rgb(tmp_path / "in" / name)
            got = np.asarray(Image.open(tmp_path / views / f"{Path(name).stem}.png"))
            np.testing.assert_array_equal(got, predict_map(with_views(model, views), image))
    plain, eight = (np.asarray(Image.open(tmp_path / v / "rgb.png")).astype(int) for v in ("none", "dihedral"))
    assert np.abs(plain - eight).max() > 5
    assert main([*common, "--out", str(tmp_path / "x"), "--tta", "rot90"]) == 2
    assert "--tta: invalid choice: 'rot90'" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_corrupt_image_exits_2_naming_it_and_writes_nothing(checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    out = tmp_path / "out"
    assert main(["predict", str(bad), "--model", str(checkpoint), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("btbnet: error: ") and str(bad) in err
    assert "Traceback" not in err
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("content", [None, b"not a checkpoint"], ids=["missing", "garbage"])
def test_bad_checkpoint_exits_2_naming_it(images, tmp_path, capsys, content):
    ckpt = tmp_path / "model.pt"
    if content is not None:
        ckpt.write_bytes(content)
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "in"), "--model", str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("btbnet: error: ") and str(ckpt) in err
    assert not out.exists()


@pytest.mark.parametrize(
    "kind, reason",
    [("pickle", "refused: it holds Python objects, not plain weights"), ("truncated", "truncated or corrupt archive"),
     ("jpeg", "not a torch.save archive")],
    ids=["pickle", "truncated", "jpeg"],
)  # fmt: skip
def test_unreadable_checkpoint_is_one_short_line(checkpoint, images, tmp_path, capsys, kind, reason):
    ckpt = tmp_path / "model.pt"
    if kind == "pickle":
        torch.save({"config": object(), "state_dict": {}}, ckpt)  # weights_only=True refuses it
    elif kind == "truncated":
        ckpt.write_bytes(checkpoint.read_bytes()[:2000])
    else:
        shutil.copy(tmp_path / "in" / "rgb.jpg", ckpt)
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "in"), "--model", str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"btbnet: error: {ckpt}: not a btbnet checkpoint ({reason})\n"
    assert not out.exists()


@pytest.fixture
def large_image(tmp_path) -> Path:
    """A 60×40 photo: over a budget lowered to 1,000 pixels."""
    path = tmp_path / "large.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(path)
    return path


def test_image_over_the_pixel_budget_exits_2_before_any_work(checkpoint, large_image, tmp_path, capsys, monkeypatch):
    from btbnet import files

    out = tmp_path / "out"
    argv = ["predict", str(large_image), "--model", str(checkpoint), "--out", str(out)]
    with monkeypatch.context() as patch:
        patch.setattr(files, "load_rgb", lambda path: pytest.fail(f"decoded {path}"))
        assert main([*argv, "--max-pixels", "1000"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"btbnet: error: {large_image}: 60×40 px is 2,400 pixels for the model, over the budget of 1,000; "
        "use --max-size 38 to downscale, or --max-pixels 2400 to raise the budget\n"
    )
    assert not out.exists()
    # both ways past it work
    assert main([*argv, "--max-pixels", "1000", "--max-size", "38"]) == 0
    assert main([*argv, "--max-pixels", "2400"]) == 0
    assert [p.name for p in out.iterdir()] == ["large.png"]


def test_the_default_pixel_budget_applies_and_is_documented(checkpoint, large_image, tmp_path, capsys, monkeypatch):
    from btbnet import cli
    from btbnet.predict import MAX_PIXELS

    assert main(["predict", "--help"]) == 0
    assert f"(default: {MAX_PIXELS:,};" in " ".join(capsys.readouterr().out.split())
    monkeypatch.setattr(cli, "MAX_PIXELS", 1000)
    assert main(["predict", str(large_image), "--model", str(checkpoint), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(large_image) in err and "--max-pixels 2400" in err


def test_missing_input_and_duplicate_stems_exit_2(checkpoint, images, tmp_path, capsys):
    out = tmp_path / "out"
    missing = tmp_path / "missing.png"
    assert main(["predict", str(missing), "--model", str(checkpoint), "--out", str(out)]) == 2
    assert str(missing) in capsys.readouterr().err
    shutil.copy(tmp_path / "in" / "grey.png", tmp_path / "rgb.png")  # clashes with in/rgb.jpg
    assert main(["predict", str(tmp_path / "in"), str(tmp_path / "rgb.png"), "--model", str(checkpoint),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "rgb.jpg" in err and "rgb.png" in err
    assert not out.exists()


def test_usage_errors_exit_2(checkpoint, tmp_path, capsys):
    assert main(["predict", "x.png", "--model", str(checkpoint), "--out", str(tmp_path), "--max-size", "0"]) == 2
    assert "--max-size" in capsys.readouterr().err
    assert main(["predict", "x.png", "--model", "no-such-model", "--out", str(tmp_path)]) == 2
    assert "no-such-model" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["--help"]) == 0


def test_summary_prints_one_json_line_with_the_parameter_count(capsys):
    argv = ["summary", "--variant", "fast", "--width", "0.125", "--scales", "1", "0.5", "--rrnet-steps", "2",
            "--size", "64"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    summary = json.loads(out)
    config = BTBNetConfig(variant="fast", width=0.125, scales=(1, 0.5), rrnet_steps=2)
    assert summary["params"] == count_parameters(build_model(config))
    assert summary["gmacs"] > 0
    settings = (summary["variant"], summary["width"], summary["scales"], summary["rrnet_steps"], summary["size"])
    assert settings == ("fast", 0.125, [1.0, 0.5], 2, 64)


def test_summary_bad_setting_exits_2_naming_the_key(capsys):
    assert main(["summary", "--scales", "1", "-0.5"]) == 2
    assert capsys.readouterr().err.startswith("btbnet: error: scales:")


def run_command(command: list[str]) -> dict:
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_module_entry_point():
    summary = run_command([sys.executable, "-m", "btbnet", "summary", "--width", "0.0625", "--size", "32"])
    assert summary["size"] == 32 and summary["params"] > 0 and summary["width"] == 0.0625


@pytest.mark.skipif(not CONSOLE_SCRIPT.exists(), reason=f"console script not installed at {CONSOLE_SCRIPT}")
def test_console_script():
    summary = run_command([str(CONSOLE_SCRIPT), "summary", "--width", "0.0625", "--size", "32"])
    assert summary["size"] == 32 and summary["params"] > 0


@pytest.fixture
def released_tiny(checkpoint, tmp_path, monkeypatch):
    """`checkpoint` registered as the released default model, run at 24 px."""
    import hashlib

    from btbnet import pretrained

    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(checkpoint, weights / "tiny.pt")
    digest = hashlib.sha256((weights / "tiny.pt").read_bytes()).hexdigest()
    monkeypatch.setattr(pretrained, "WEIGHTS", weights)
    monkeypatch.setitem(pretrained.MODELS, pretrained.DEFAULT, pretrained.Released("tiny.pt", digest, 24, "test"))
    return weights / "tiny.pt"


def test_predict_without_model_uses_the_released_one_at_its_scale(released_tiny, tmp_path, monkeypatch):
    image = np.random.default_rng(0).integers(0, 256, (30, 48, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "photo.png"]) == 0
    written = np.asarray(Image.open(tmp_path / "maps" / "photo.png"))  # the default --out
    expected = default_map(load_checkpoint(released_tiny), image, max_size=24)  # the release's run scale
    np.testing.assert_array_equal(written, expected)
    assert not np.array_equal(written, default_map(load_checkpoint(released_tiny), image))


def test_an_altered_released_file_is_refused(released_tiny, tmp_path, capsys):
    released_tiny.write_bytes(released_tiny.read_bytes()[:-10])
    assert main(["predict", "x.png", "--out", str(tmp_path)]) == 2
    assert "is not the released" in capsys.readouterr().err


def test_a_checkpoint_predicts_at_the_scale_it_was_trained_at(tmp_path):
    torch.manual_seed(0)
    model = build_model(BTBNetConfig(variant="fast", width=0.0625, scales=(1.0,), rrnet_steps=0))
    ckpt = save_checkpoint(model, tmp_path / "m.pt", max_size=16)
    image = np.random.default_rng(1).integers(0, 256, (20, 40, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "p.png")
    assert main(["predict", str(tmp_path / "p.png"), "--model", str(ckpt), "--out", str(tmp_path / "o")]) == 0
    written = np.asarray(Image.open(tmp_path / "o" / "p.png"))
    np.testing.assert_array_equal(written, default_map(load_checkpoint(ckpt), image, max_size=16))
    assert main(["predict", str(tmp_path / "p.png"), "--model", str(ckpt), "--out", str(tmp_path / "n"), "--max-size", "40"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "n" / "p.png")), default_map(load_checkpoint(ckpt), image))


def test_version_prints_the_installed_version(capsys):
    import importlib.metadata

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"btbnet {importlib.metadata.version('btbnet')}\n"


def test_version_falls_back_to_the_package_version_when_not_installed(monkeypatch, capsys):
    import importlib.metadata

    import btbnet

    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"btbnet {btbnet.__version__}\n"


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_export_without_model_exports_the_released_one(released_tiny, tmp_path, capsys):
    from btbnet.model import FocusMap

    out = tmp_path / "released.pt"
    assert main(["export", "--format", "torchscript", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"torchscript {out}: max abs difference vs PyTorch ")
    x = torch.rand(1, 3, 36, 20)
    with torch.inference_mode():
        expected = FocusMap(load_checkpoint(released_tiny))(x)
        assert torch.allclose(torch.jit.load(str(out))(x), expected, atol=1e-5)


def test_predict_reads_a_model_from_the_mlflow_registry(tmp_path, monkeypatch):
    """`--model models:/btbnet@candidate`: the checkpoint the pipeline logs with the model
    (an extra file) is loaded as plain weights; the map equals the checkpoint's own."""
    import mlflow

    from btbnet.model import FocusMap

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    model = build_model(BTBNetConfig(width=0.0625, scales=(1.0,), rrnet_steps=0))
    checkpoint = save_checkpoint(model, tmp_path / "finetune.pt", max_size=64)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("btbnet", artifact_location=(tmp_path / "mlruns").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.pytorch.log_model(FocusMap(model), name="btbnet-finetune", extra_files=[str(checkpoint)],
                                        registered_model_name="btbnet", serialization_format="pickle", pip_requirements=["torch"])  # fmt: skip
    mlflow.tracking.MlflowClient().set_registered_model_alias("btbnet", "candidate", str(info.registered_model_version))
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(image)
    for model_arg, out in (("models:/btbnet@candidate", "from_registry"), (str(checkpoint), "from_file")):
        assert main(["predict", str(image), "--model", model_arg, "--out", str(tmp_path / out)]) == 0
    assert (tmp_path / "from_registry/photo.png").read_bytes() == (tmp_path / "from_file/photo.png").read_bytes()


def test_an_unknown_mlflow_model_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main(["predict", str(tmp_path / "x.png"), "--model", "models:/nope@candidate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("btbnet: error: models:/nope@candidate: cannot read this MLflow model"), err


def test_out_is_checked_before_any_work(checkpoint, images, tmp_path, capsys):
    """A file where the output folder should be, or a place that cannot be written, is one line
    before the model loads (a missing model would otherwise be the error) and before any image."""
    (tmp_path / "maps.png").write_bytes(b"a file")
    unwritable = Path("/proc/btbnet-maps")  # /proc takes no new files, whoever asks
    for out, message in [(tmp_path / "maps.png", "not a folder (a file has that name)"), (unwritable, "cannot write there (")]:
        assert main(["predict", str(tmp_path / "in"), "--model", str(tmp_path / "no-model.pt"), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"btbnet: error: {out}: {message}"), err
    assert (tmp_path / "maps.png").read_bytes() == b"a file"


def test_a_phone_photo_gets_an_upright_map(checkpoint, tmp_path):
    """Orientation = 6: stored 30×20 (W×H) sideways, shown 20×30; the map and its overlay are shown-size."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "phone.jpg", exif=exif)
    assert main(["predict", str(tmp_path / "phone.jpg"), "--model", str(checkpoint), "--out", str(tmp_path / "out"), "--overlay", "--tta", "none"]) == 0
    with Image.open(tmp_path / "out" / "phone.png") as focus:
        assert focus.size == (20, 30)
    with Image.open(tmp_path / "out" / "phone_overlay.png") as picture:
        assert (picture.height, picture.width) == layout((30, 20)).size  # three upright tiles side by side


def test_an_animation_is_one_line_named_on_its_own_or_in_a_folder(checkpoint, tmp_path, capsys):
    frames = [Image.new("RGB", (8, 6), c) for c in ("red", "green")]
    (tmp_path / "in").mkdir()
    frames[0].save(tmp_path / "in" / "moving.gif", save_all=True, append_images=frames[1:])
    for target in (tmp_path / "in" / "moving.gif", tmp_path / "in"):
        assert main(["predict", str(target), "--model", str(checkpoint), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == f"btbnet: error: {tmp_path / 'in' / 'moving.gif'}: 2 frames (an animation or a multi-page file); save the one to use as a still image"
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
