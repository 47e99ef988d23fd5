"""docs/screenshots.py: its page builder, its errors, and `dvc exp show` rendered by Chromium
(with a stand-in `dvc`; the real screenshots need a repo after `dvc exp run`, see the script)."""

from __future__ import annotations

import importlib.util
import shutil
import stat
from pathlib import Path

import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "screenshots.py"
spec = importlib.util.spec_from_file_location("screenshots", SCRIPT)
screenshots = importlib.util.module_from_spec(spec)
spec.loader.exec_module(screenshots)
needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium on PATH")
WIDE = "  Experiment  embedded.F  embedded.MAE  <b>&".ljust(screenshots.COLUMNS - 1, "─") + "┐"


def fake_dvc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    """A `dvc` first on PATH that runs `script` (sh)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dvc").write_text(f"#!/bin/sh\n{script}\n")
    (bin_dir / "dvc").chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(shutil.which('sh')).parent}")


def test_the_page_escapes_the_text_and_keeps_200_column_lines_whole():
    page = screenshots.terminal_page("dvc exp show", f"{WIDE}\n<script>")
    assert f"{WIDE.replace('<b>&', '&lt;b&gt;&amp;')}\n&lt;script&gt;" in page  # one line, escaped
    assert "<script>" not in page and "white-space:pre" in page
    width, height = screenshots.page_size(WIDE, "dvc exp show")
    assert width >= screenshots.COLUMNS * screenshots.CHAR_PX and height >= 2 * screenshots.LINE_PX


@pytest.mark.parametrize("missing", ["chromium", "dvc", "mlflow.db"])
def test_a_missing_tool_or_store_is_one_line_naming_it(tmp_path, monkeypatch, capsys, missing):
    monkeypatch.setattr(screenshots, "which", lambda tool: None if tool == missing else f"/bin/{tool}")
    if missing != "mlflow.db":
        (tmp_path / "mlflow.db").touch()
    assert screenshots.main(["--repo", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("screenshots.py: error:") and missing in error and error.count("\n") == 1
    assert not (tmp_path / "out").exists()  # nothing started


def test_dvc_output_wider_than_columns_is_an_error(tmp_path, monkeypatch):
    fake_dvc(tmp_path, monkeypatch, f"printf '%0{screenshots.COLUMNS + 1}d\\n' 0")
    with pytest.raises(screenshots.ScreenshotError, match="ignored COLUMNS"):
        screenshots.exp_show(tmp_path, tmp_path, [])


@needs_chromium
def test_exp_show_runs_dvc_at_200_columns_and_draws_its_lines_whole(tmp_path, monkeypatch):
    """A stand-in `dvc` notes its COLUMNS and arguments and prints a 200-column line ending in ┐."""
    fake_dvc(tmp_path, monkeypatch, f'echo "$COLUMNS $*" > "$0.args"; echo "{WIDE}"; echo more')
    png = screenshots.exp_show(tmp_path, tmp_path, ["--only-changed"])
    assert (tmp_path / "bin" / "dvc.args").read_text() == "200 exp show --no-pager --only-changed\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "exp-show.png"]  # the page is gone
    pixels = Image.open(png).convert("L")
    assert pixels.size == (int(screenshots.COLUMNS * screenshots.CHAR_PX) + 48, 200)  # 3 lines: the least height
    ink = [(x, y) for x in range(pixels.width) for y in range(pixels.height) if pixels.getpixel((x, y)) > 128]
    assert max(x for x, _ in ink) > 16 + 199 * 8.3  # the ┐ of column 200, on the same line (DejaVu: 8.43 px)
    assert max(y for _, y in ink) > 16 + 2 * screenshots.LINE_PX  # the third line, painted
