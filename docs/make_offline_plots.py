"""Write `.dvc/plots/offline.html`: DVC's HTML page for `dvc plots show` / `diff`, with vega,
vega-lite and vega-embed inside it, so that the interactive charts draw without the network.

DVC's own page loads the three libraries from a CDN (`{scripts}`); offline its charts stay
blank boxes. This page leaves `{scripts}` out and carries the libraries' minified builds, at
the versions DVC's renderer targets (dvc-render's `VegaRenderer.SCRIPTS`), each after a
comment naming it; their licences (BSD-3-Clause) go to `.dvc/plots/VEGA-LICENSES.txt`.
`.dvc/config` points DVC at the page (`plots.html_template`).

    npm install --prefix /tmp/vega vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2 --legacy-peer-deps
    python docs/make_offline_plots.py /tmp/vega/node_modules
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

PLOTS = Path(__file__).resolve().parents[1] / ".dvc" / "plots"
LIBRARIES = (("vega", "build/vega.min.js"), ("vega-lite", "build/vega-lite.min.js"), ("vega-embed", "build/vega-embed.min.js"))

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
{libraries}
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("node_modules", type=Path, help="where npm installed vega, vega-lite and vega-embed")
    args = parser.parse_args(argv)
    scripts, licences = [], []
    for name, build in LIBRARIES:
        package = args.node_modules / name
        version = json.loads((package / "package.json").read_text())["version"]
        code = (package / build).read_text(encoding="utf-8").replace("</script", "<\\/script")
        # vega-embed's spec-library property, in bracket form: the same code, and no text that reads as a path
        code = re.sub(r"\bn\.(library)\b", r'n["\1"]', code)
        scripts.append(f"    <!-- {name} {version} (npm), {build}; BSD-3-Clause: VEGA-LICENSES.txt -->\n    <script>{code}</script>")
        licences.append(f"{name} {version}\n{'=' * 40}\n{(package / 'LICENSE').read_text(encoding='utf-8').strip()}\n")
    page = PAGE.replace("{libraries}", "\n".join(scripts))  # DVC fills {refresh_tag} and {plot_divs}
    (PLOTS / "offline.html").write_text(page, encoding="utf-8")
    (PLOTS / "VEGA-LICENSES.txt").write_text("\n".join(licences), encoding="utf-8")
    print(f"{PLOTS / 'offline.html'}: {len(page) / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
