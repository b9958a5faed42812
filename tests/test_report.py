"""The HTML report: self-contained, and rendered for real in headless Chromium.

Chromium comes from Debian's `chromium` package; `make test` installs it. Run directly with pytest
on a machine without it, the browser test is skipped, except under CI (CI=true), where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from PIL import Image

from qcli.report import bar_chart

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
INT8_ORANGE = (0xE0, 0x7B, 0x24)


def test_the_page_is_self_contained(bench_run):
    html = bench_run[1]["html"].read_text()
    assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html), "the page must not load anything"
    assert "<script" not in html and "@import" not in html and "url(" not in html
    assert html.count("<svg") >= 5  # two latency charts, accuracy (top-1, top-5, agreement), sizes
    for section in (
        "Latency",
        "Accuracy",
        "File sizes",
        "Environment",
        "failed",
        "--min-speedup",
    ):  # or "counted as failed"
        assert section in html


def test_per_layer_chart_when_the_report_has_it(bench_run):
    import json

    from qcli.report import html_report
    from qcli.reports import BenchReport

    report = json.loads(bench_run[1]["json"].read_text())
    assert report["per_layer"], "the demo artifact carries a per-layer report"
    html = html_report(BenchReport.from_dict(report))
    assert "Per-layer error" in html
    worst = report["per_layer"][0]["name"]
    assert f">{worst}</text>" in html and html.count("<rect") >= len(report["per_layer"]) + 5


def test_bar_chart_scales_and_escapes():
    svg = bar_chart("a <b>", [("x&y", 2.0, "#000"), ("z", 1.0, "#111")], "ms", width=300)
    widths = [float(w) for w in re.findall(r'<rect x="\d+" y="[\d.]+" width="([\d.]+)"', svg)]
    assert widths[0] == pytest.approx(2 * widths[1], rel=0.01)
    assert "a &lt;b&gt;" in svg and "x&amp;y" in svg


def render(page, screenshot, user_data) -> list[str]:
    """Screenshot ``page`` in headless Chromium; return the console messages it logged."""
    proc = subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--proxy-server=127.0.0.1:9", "--hide-scrollbars", f"--user-data-dir={user_data}",
            "--enable-logging=stderr", "--v=0", "--window-size=1000,2400", f"--screenshot={screenshot}",
            page.as_uri(),
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("CI") != "true", reason="chromium is not installed (make test installs it)"
)
def test_report_renders_in_chromium_without_errors(bench_run, tmp_path):
    assert CHROMIUM, "chromium is missing: `make test` installs Debian's chromium package"
    # the check can fail: a page with a script error is caught
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><p>x</p><script>undefinedFunction()</script>")
    assert any("undefinedFunction" in line for line in render(bad, tmp_path / "bad.png", tmp_path / "ud0"))

    shot = tmp_path / "report.png"
    console = render(bench_run[1]["html"], shot, tmp_path / "ud1")
    assert console == []
    image = Image.open(shot).convert("RGB")
    assert image.size == (1000, 2400)
    colors = image.getcolors(maxcolors=1 << 20)
    non_white = sum(n for n, c in colors if sum(c) < 3 * 245)
    assert non_white > 0.02 * image.width * image.height, "the page rendered (almost) blank"
    orange = sum(n for n, c in colors if all(abs(a - b) <= 12 for a, b in zip(c, INT8_ORANGE, strict=True)))
    assert orange > 2000, "the INT8 bars are not drawn"
    print(f"report screenshot: {shot}")
