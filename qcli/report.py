"""``bench --report report.html``: one self-contained page (inline CSS and SVG, no script, no
network) with the bench report's figures as plots: latency per batch size, accuracy and fidelity,
file sizes, gates and baseline comparisons, and the environment."""

from __future__ import annotations

import math
from html import escape
from typing import Any

from qcli import tables
from qcli.reports import BenchReport, plain
from qcli.tables import Table

COLORS = {"fp32_eager": "#9aa5b1", "fp32_compiled": "#3e6fb0", "int8": "#e07b24", "fp32": "#3e6fb0"}
LABELS = tables.VARIANTS

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 960px;
       color: #1f2933; background: #fff; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #e4e7eb; }
.sub { color: #616e7c; margin-top: 0; }
table { border-collapse: collapse; margin: .5rem 0; } td, th { padding: .25rem .8rem; border-bottom: 1px solid #e4e7eb; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.verdict { display: inline-block; padding: .3rem .8rem; border-radius: 4px; font-weight: 600; }
.pass { background: #e3f9e5; color: #207227; } .fail { background: #ffe3e3; color: #a61b1b; }
.charts { display: flex; flex-wrap: wrap; gap: 1.5rem; } svg text { font: 12px system-ui, sans-serif; fill: #1f2933; }
.legend span { display: inline-block; margin-right: 1rem; } .swatch { display: inline-block; width: .8rem; height: .8rem; margin-right: .3rem; vertical-align: -1px; }
.note { color: #616e7c; } .bad { color: #a61b1b; font-weight: 600; }
"""


def html_report(report: BenchReport) -> str:
    """The whole page as a string."""
    gates = report.gates
    name = escape(_name(report.model.path))
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>qcli bench: {name}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>qcli bench: {name}</h1>",
        f'<p class="sub">INT8 artifact {escape(_name(report.artifact.path))} ({escape(report.artifact.form)}, '
        f"{escape(str(report.artifact.mode))}) against the FP32 model, measured in one process, interleaved, "
        f"{report.environment.threads} threads.</p>",
        f'<p><span class="verdict {"pass" if gates.passed else "fail"}">{_verdict(report)}</span></p>',
    ]
    notes = gates.failures + gates.inconclusive + report.warnings
    if notes:
        parts.append("<ul>" + "".join(f"<li>{escape(f)}</li>" for f in notes) + "</ul>")
    parts += _latency(report)
    parts += _accuracy(report)
    parts += _per_layer(report.per_layer)
    parts += _sizes(report)
    parts += _baseline(report)
    parts += _environment(report)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _verdict(report: BenchReport) -> str:
    gates = report.gates
    if gates.verdict == "inconclusive":
        return f"gates undecided ({'exit 4' if gates.on_inconclusive == 'error' else 'counted as ' + gates.on_inconclusive + 'ed'})"
    return "gates passed" if gates.passed else "gates failed"


def _name(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def _table(table: Table) -> str:
    """A shared table (``qcli.tables``) as HTML; every cell is escaped."""
    head = "".join(f"<th>{escape(h)}</th>" for h in table.headers)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="bad">{escape(c)}</td>' if c == "REGRESSED" else f"<td>{escape(c)}</td>" for c in row)
        + "</tr>"
        for row in table.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def bar_chart(
    title: str,
    bars: list[tuple[str, float, str]],
    unit: str,
    width: int = 420,
    errors: list[tuple[float, float] | None] | None = None,
) -> str:
    """Horizontal bars (label, value, color) with their values written at the end, as inline SVG;
    ``errors`` gives each bar's interval (low, high), drawn as a whisker with caps."""
    label_w = max(110, 7 * max((len(label) for label, _, _ in bars), default=0) + 10)
    row_h, top = 26, 28
    height = top + row_h * len(bars) + 8
    intervals = errors or [None] * len(bars)
    finite = [v for _, v, _ in bars if math.isfinite(v) and v > 0]
    finite += [hi for iv in intervals if iv is not None for hi in iv[1:] if math.isfinite(hi)]
    scale = (width - label_w - 90) / max(finite) if finite else 0
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{escape(title)}">',
        f'<text x="0" y="16" font-weight="600">{escape(title)}</text>',
    ]
    for i, ((label, value, color), interval) in enumerate(zip(bars, intervals, strict=True)):
        y = top + i * row_h
        w = max(1.0, value * scale) if math.isfinite(value) and value > 0 else 0
        out.append(f'<text x="0" y="{y + 15}">{escape(label)}</text>')
        tip = f"{escape(label)}: {value:.4g} {escape(unit)}"
        end = label_w + w
        if interval is not None and all(math.isfinite(v) for v in interval):
            lo, hi = (label_w + max(0.0, v) * scale for v in interval)
            tip += f" (95% interval {interval[0]:.4g}-{interval[1]:.4g})"
            mid = y + row_h / 2 - 1
            out.append(
                f'<path class="interval" d="M{lo:.1f} {mid - 5:.1f}v10M{lo:.1f} {mid:.1f}H{hi:.1f}M{hi:.1f} {mid - 5:.1f}v10" '
                f'stroke="#222" stroke-width="1.2" fill="none"><title>{tip}</title></path>'
            )
            end = max(end, hi)
        out.append(
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" fill="{color}">'
            f"<title>{tip}</title></rect>"
        )
        shown = f"{value:.2f}x" if unit == "x" else f"{value:.3g} {escape(unit)}"
        out.append(f'<text x="{end + 6:.1f}" y="{y + 15}">{shown}</text>')
    out.append("</svg>")
    return "".join(out)


def _legend(keys: list[str]) -> str:
    items = "".join(
        f'<span><i class="swatch" style="background:{COLORS[k]}"></i>{escape(LABELS.get(k, k))}</span>' for k in keys
    )
    return f'<p class="legend">{items}</p>'


def _latency(report: BenchReport) -> list[str]:
    charts = []
    for timing in report.latency:
        keys = [k for k in LABELS if k in timing.variants]
        bars = [(LABELS[k], timing.variants[k].p50_ms, COLORS[k]) for k in keys]
        errors = [_p50_interval(timing.variants[k]) for k in keys]
        charts.append(bar_chart(f"batch {timing.batch_size}: median latency", bars, "ms", errors=errors))
    speedups = [
        (f"batch {t.batch_size}", t.speedups["fp32_compiled"]) for t in report.latency if "fp32_compiled" in t.speedups
    ]
    if speedups:
        bars = [(label, found.value, COLORS["int8"]) for label, found in speedups]
        errors = [(found.low, found.high) for _, found in speedups]
        charts.append(bar_chart("INT8 speed-up over FP32 compiled", bars, "x", errors=errors))
    return [
        "<h2>Latency</h2>",
        _legend(list(LABELS)),
        '<p class="sub">Whiskers: 95% intervals (bootstrap over measurement rounds).</p>',
        f'<div class="charts">{"".join(charts)}</div>',
        _table(tables.latency_table(report)),
        *(f'<p class="note">{escape(line)}</p>' for line in tables.measurement_lines(report)),
    ]


def _p50_interval(latency: Any) -> tuple[float, float] | None:
    if latency.p50_low_ms is None or latency.p50_high_ms is None:
        return None
    return (latency.p50_low_ms, latency.p50_high_ms)


def _accuracy(report: BenchReport) -> list[str]:
    acc, table = report.accuracy, tables.accuracy_table(report)
    if acc is None or table is None:
        return ["<h2>Accuracy</h2>", '<p class="note">Not measured: pass --eval-dir to compare outputs.</p>']
    charts = []
    for key, label in (("top1", "top-1 %"), ("top5", "top-5 %")):
        fp, q = getattr(acc, f"fp32_{key}"), getattr(acc, f"int8_{key}")
        if fp is not None and q is not None:
            charts.append(bar_chart(label, [("FP32", fp, COLORS["fp32"]), ("INT8", q, COLORS["int8"])], "%"))
    if acc.top1_agreement is not None:
        charts.append(bar_chart("top-1 agreement with FP32", [("INT8", acc.top1_agreement, COLORS["int8"])], "%"))
    if len(acc.outputs) > 1:
        bars = [(o.name[-22:], max(0.0, o.sqnr_db), COLORS["int8"]) for o in acc.outputs]
        charts.append(bar_chart("SQNR per output (higher is better)", bars, "dB"))
    outputs = tables.outputs_table(report)
    title = "Accuracy" if acc.labeled else "Fidelity to FP32 (unlabeled samples)"
    judged = "".join(f'<p class="sub">{escape(line)}.</p>' for line in tables.judged_line(report))
    return [
        f"<h2>{title}</h2>",
        judged,
        f'<div class="charts">{"".join(charts)}</div>',
        _table(table),
        *([_table(outputs)] if outputs is not None else []),
    ]


def _per_layer(layers: list[dict[str, Any]] | None) -> list[str]:
    """Per-layer output SQNR, worst first, when the report carries it."""
    if not layers:
        return []
    bars = [
        (la["name"][-22:], max(0.0, la["output_sqnr_db"]), COLORS["int8"])
        for la in layers
        if la.get("output_sqnr_db") is not None
    ]
    return [
        "<h2>Per-layer error</h2>",
        '<p class="sub">Each quantized layer\'s INT8 output against FP32 on calibration samples, worst first; '
        "the figure includes the error earlier layers passed on. Layers under 20 dB are worth trying with "
        "<code>--exclude</code>.</p>",
        bar_chart("output SQNR per layer (higher is better)", bars, "dB", width=680),
    ]


def _sizes(report: BenchReport) -> list[str]:
    items = [
        ("FP32 file", report.model.size_bytes, COLORS["fp32_eager"]),
        ("FP32 compiled", report.fp32_compiled_size_bytes, COLORS["fp32_compiled"]),
        ("INT8 artifact", report.artifact.size_bytes, COLORS["int8"]),
    ]
    bars = [(label, size / 2**20, color) for label, size, color in items if size]
    resources = tables.resources_table(report)
    return [
        "<h2>File sizes, loading and memory</h2>",
        bar_chart("size on disk", bars, "MiB"),
        _table(tables.sizes_table(report)),
        *([_table(resources)] if resources is not None else []),
    ]


def _baseline(report: BenchReport) -> list[str]:
    baseline, table = report.baseline, tables.baseline_table(report.baseline)
    if baseline is None or table is None:
        return []
    return [
        "<h2>Against the baseline</h2>",
        f'<p class="sub">{escape(_name(baseline.path))}; tolerances: latency {baseline.latency_tolerance:g}, '
        f"accuracy {baseline.accuracy_tolerance:g} points.</p>",
        _table(table),
    ]


def _environment(report: BenchReport) -> list[str]:
    env = plain(report.environment)
    rows = [[str(k), ", ".join(v) if isinstance(v, list) else str(v)] for k, v in env.items()]
    return ["<h2>Environment</h2>", _table(Table("Environment", ["", "value"], rows))]
