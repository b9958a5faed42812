"""The rows of every report table, built once: the terminal (Rich), Markdown and the HTML page
all render these ``Table`` objects, so a figure reads the same in each format.

Cells are text already formatted; renderers only lay them out (and escape them, for HTML).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qcli.bench import Interval, Latency
    from qcli.reports import BaselineReport, BenchReport

VARIANTS = {"fp32_eager": "FP32 eager", "fp32_compiled": "FP32 compiled", "int8": "INT8"}


@dataclass(frozen=True)
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]


def fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    """A number for a table cell; ``-`` for a figure that was not measured."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def fmt_bytes(n: int | float | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(size) < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _spread(lat: Latency) -> str:
    return "-" if lat.p10_ms is None else f"{lat.p10_ms:.3f}-{lat.p90_ms:.3f}"


def _ratio(found: Interval | None, value: float | None) -> str:
    if found is None:
        return fmt(value, 2, "x")
    return f"{found.value:.2f}x [{found.low:.2f}, {found.high:.2f}]"


def latency_table(report: BenchReport) -> Table:
    """Median, p10-p90 and calls per variant; INT8's speed-up with its 95% interval."""
    env = report.environment
    rows = []
    for timing in report.latency:
        for name in VARIANTS:
            lat = timing.variants.get(name)
            if lat is None:
                continue
            ratio = (
                _ratio(timing.speedups.get("fp32_compiled"), timing.speedup("fp32_compiled")) if name == "int8" else "-"
            )
            calls = "-" if lat.calls is None else str(lat.calls)
            row = [str(timing.batch_size), name, fmt(lat.p50_ms, 3), _spread(lat), calls, fmt(lat.throughput, 1)]
            rows.append([*row, ratio])
    return Table(
        f"Latency ({env.threads} threads, {env.cpu_capability}, torch {env.torch_version}; 95% intervals)",
        ["batch", "variant", "p50 ms", "p10-p90 ms", "calls", "samples/s", "INT8 vs FP32 compiled"],
        rows,
    )


def measurement_lines(report: BenchReport) -> list[str]:
    """How long each batch size was measured and why it stopped."""
    lines = []
    for t in report.latency:
        if t.seconds is None:
            continue
        why = {"precision": "every ratio known to the precision asked", "time budget": "time budget spent"}
        lines.append(
            f"batch {t.batch_size}: {t.runs} rounds in {t.seconds:.1f} s ({why.get(str(t.stopped_by), t.stopped_by)})"
        )
    return lines


def accuracy_table(report: BenchReport) -> Table | None:
    acc = report.accuracy
    if acc is None:
        return None
    rows = []
    score = acc.score
    if score is not None and score.metric not in ("top1", "top5", "agreement", "sqnr", "cosine", "spearman"):
        unit = f" {score.unit}" if score.unit else ""
        change = _diff(score.int8, score.fp32)
        on = f" ({score.output})" if score.output else ""
        rows.append([f"{score.metric}{on}{unit}", fmt(score.fp32, 4), fmt(score.int8, 4), fmt(change, 4)])
    if acc.fp32_top1 is not None:
        rows.append(["top-1 %", fmt(acc.fp32_top1), fmt(acc.int8_top1), fmt(_diff(acc.int8_top1, acc.fp32_top1))])
        if acc.fp32_top5 is not None:
            rows.append(["top-5 %", fmt(acc.fp32_top5), fmt(acc.int8_top5), fmt(_diff(acc.int8_top5, acc.fp32_top5))])
    if acc.top1_agreement is not None:
        rows.append(["top-1 agreement %", "100.00", fmt(acc.top1_agreement), "-"])
    several = len(acc.outputs) > 1
    worst = acc.worst_output
    of = f" (worst: {worst.name})" if several and worst is not None and score is not None and not score.output else ""
    rows.append([f"SQNR dB{of}", "-", fmt(acc.sqnr_db, 1), "-"])
    rows.append([f"cosine{of}", "1.0000", fmt(acc.cosine, 4), "-"])
    if acc.pairs:
        change = _diff(acc.int8_spearman, acc.fp32_spearman)
        rows.append(
            [f"Spearman ({acc.pairs} pairs)", fmt(acc.fp32_spearman, 4), fmt(acc.int8_spearman, 4), fmt(change, 4)]
        )
    return Table(f"Accuracy on {acc.samples} samples", ["metric", "FP32", "INT8", "change"], rows)


def outputs_table(report: BenchReport) -> Table | None:
    """Fidelity of every output of the model to FP32's (shown when there are several)."""
    acc = report.accuracy
    if acc is None or len(acc.outputs) < 2:
        return None
    rows = [
        [o.name, "x".join(str(d) for d in o.shape) or "scalar", fmt(o.sqnr_db, 1), fmt(o.cosine, 4),
         f"{o.max_abs_error:.3g}", fmt(o.top1_agreement)]
        for o in acc.outputs
    ]  # fmt: skip
    return Table(
        "Fidelity per output", ["output", "shape", "SQNR dB", "cosine", "max abs error", "top-1 agreement %"], rows
    )


def judged_line(report: BenchReport) -> list[str]:
    """What --max-drop judges: the metric, the output and the points lost."""
    acc = report.accuracy
    if acc is None or acc.score is None:
        return []
    score, worst = acc.score, acc.worst_output
    if score.output and len(acc.outputs) > 1:
        on = f"output '{score.output}'"
    elif worst is not None and len(acc.outputs) > 1:
        on = f"every output (the worst counts: '{worst.name}')"
    else:
        on = "the output"
    return [f"accuracy judged by {score.metric} on {on}: drop {score.drop:.2f} points"]


def sizes_table(report: BenchReport) -> Table:
    rows = [
        ["FP32 model file", fmt_bytes(report.model.size_bytes)],
        [f"FP32 compiled ({report.fp32_compiled_form or 'package'})", fmt_bytes(report.fp32_compiled_size_bytes)],
        [f"INT8 artifact ({report.artifact.form})", fmt_bytes(report.artifact.size_bytes)],
    ]
    return Table("Sizes", ["file", "size"], rows)


def resources_table(report: BenchReport) -> Table | None:
    """Loading and first call: what a service pays before its first answer."""
    r = report.resources
    if r is None:
        return None
    rows = [
        ["FP32 model", fmt(r.fp32_model_load_seconds, 3), fmt(r.fp32_model_rss_mib, 1), "-"],
        [f"FP32 compiled ({report.fp32_compiled_form or 'package'})", fmt(r.fp32_compiled_load_seconds, 3), fmt(r.fp32_compiled_rss_mib, 1),
         fmt(r.fp32_compiled_first_call_ms, 2)],
        [f"INT8 artifact ({report.artifact.form})", fmt(r.int8_load_seconds, 3), fmt(r.int8_rss_mib, 1),
         fmt(r.int8_first_call_ms, 2)],
    ]  # fmt: skip
    title = f"Loading and first call (peak memory of the run {fmt(r.peak_rss_mib, 1)} MiB)"
    return Table(title, ["variant", "load s", "memory added MiB", "first call ms"], rows)


def baseline_table(baseline: BaselineReport | None) -> Table | None:
    if baseline is None:
        return None
    rows = [
        [
            c.figure,
            fmt(float(c.baseline), 3),
            fmt(float(c.current), 3),
            f"{c.change * 100:+.1f}%" if c.unit == "%" else f"{c.change:+.2f} points",
            "REGRESSED" if c.regressed else "UNDECIDED" if c.verdict == "inconclusive" else "ok",
        ]
        for c in baseline.comparisons
    ]
    return Table(f"Against baseline {baseline.path}", ["figure", "baseline", "now", "change", "verdict"], rows)


def bench_tables(report: BenchReport) -> list[Table]:
    """Latency, accuracy, sizes and the baseline comparison, in that order (those measured)."""
    tables = [
        latency_table(report),
        accuracy_table(report),
        outputs_table(report),
        sizes_table(report),
        resources_table(report),
        baseline_table(report.baseline),
    ]
    return [t for t in tables if t is not None]


def gate_lines(report: BenchReport) -> list[str]:
    """The noise flag and each gate's verdict, as lines under the tables."""
    gates = report.gates
    lines = judged_line(report)
    lines += [f"DISTURBED: {t.noise.reason}" for t in report.latency if t.noise and t.noise.reason][:1]
    lines += [f"GATE FAILED: {f}" for f in gates.failures]
    lines += [f"GATE UNDECIDED: {f}" for f in gates.inconclusive]
    if gates.inconclusive and not gates.failures:
        counted = {"error": "exit 4", "pass": "counted as passed (--inconclusive pass)", "fail": "counted as failed"}
        lines.append(f"gates undecided: {counted[gates.on_inconclusive]}")
    elif not gates.failures and (gates.max_drop is not None or gates.min_speedup is not None or report.baseline):
        lines.append("gates passed")
    return lines
