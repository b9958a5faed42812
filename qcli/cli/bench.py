"""``qcli bench``: FP32 vs INT8 latency and accuracy side by side, with gates."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from qcli.cli import render
from qcli.cli.common import arch_spec, flags_named, gated, parse_batch_sizes, recipe_of
from qcli.cli.options import (
    BENCH,
    BENCH_BATCH_SIZES,
    DEFAULT_INCONCLUSIVE,
    ArchKwargsOpt,
    ArchOpt,
    ConfigOpt,
    ForceOpt,
    Inconclusive,
    MaxLengthOpt,
    MetricOpt,
    ModelArg,
    OutputFormat,
    OutputNameOpt,
    QuietOpt,
    TaskOpt,
    ThreadsOpt,
    TrustModelOpt,
)
from qcli.errors import QcliError
from qcli.options import BenchOptions, JudgeOptions

if TYPE_CHECKING:
    from qcli.reports import BenchReport


ArtifactArg = Annotated[
    Path | None,
    typer.Argument(metavar="INT8_ARTIFACT", exists=True, dir_okay=False, help="INT8 artifact from `qcli convert`."),
]

EvalDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--eval-dir",
        exists=True,
        file_okay=False,
        help="Samples for accuracy: class sub-folders give top-1/top-5; otherwise fidelity to FP32.",
    ),
]

CalibDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--calib-dir",
        exists=True,
        file_okay=False,
        help="Without ARTIFACT: calibrate on this folder and quantize first.",
    ),
]

BatchSizesOpt = Annotated[str, typer.Option("--batch-sizes", help="Comma-separated batch sizes.")]

WarmupOpt = Annotated[int, typer.Option("--warmup", help="Untimed calls per variant first.")]

RunsOpt = Annotated[
    int,
    typer.Option("--runs", help="At least this many rounds (one timed call of each variant) per batch size."),
]

PrecisionOpt = Annotated[
    float,
    typer.Option(
        "--precision",
        help="Keep measuring until each INT8/FP32 ratio's 95% interval is within this fraction (0.05 = +-5%).",
    ),
]

TimeBudgetOpt = Annotated[
    float | None,
    typer.Option(
        "--time-budget", help="Stop measuring a batch size after S seconds (default: 30 rounds' worth, 10-120 s)."
    ),
]

InconclusiveOpt = Annotated[
    Inconclusive,
    typer.Option(
        "--inconclusive",
        help="What a gate the measurements cannot decide counts as: error (exit 4), pass or fail (exit 3).",
    ),
]

EvalLimitOpt = Annotated[int | None, typer.Option("--eval-limit", help="Evaluate at most N samples.")]

MaxDropOpt = Annotated[
    float | None,
    typer.Option("--max-drop", help="Fail (exit 3) if the --metric (top-1 by default) drops more than X points."),
]

MinSpeedupOpt = Annotated[
    float | None, typer.Option("--min-speedup", help="Fail (exit 3) if INT8 is under Y times FP32 compiled.")
]

BaselineOpt = Annotated[
    Path | None,
    typer.Option(
        "--baseline",
        dir_okay=False,
        help="Earlier report (from -o) to compare with; regressions beyond the tolerances exit 3, e.g. --baseline main.json.",
    ),
]

LatencyToleranceOpt = Annotated[
    float,
    typer.Option("--latency-tolerance", help="With --baseline: allowed INT8 latency rise / speed-up fall, a fraction."),
]

AccuracyToleranceOpt = Annotated[
    float,
    typer.Option("--accuracy-tolerance", help="With --baseline: allowed INT8 accuracy fall in points."),
]

OutputOpt = Annotated[
    Path | None, typer.Option("--output", "-o", help="Also write the JSON report to this file, e.g. -o bench.json.")
]

PerLayerOpt = Annotated[
    bool,
    typer.Option(
        "--per-layer",
        help="Also show each layer's INT8 error against FP32 (recorded at convert), e.g. --per-layer.",
    ),
]

ReportHtmlOpt = Annotated[
    Path | None,
    typer.Option(
        "--report",
        dir_okay=False,
        help="Also write a self-contained HTML page with plots, e.g. --report report.html.",
    ),
]

FormatOpt = Annotated[OutputFormat, typer.Option("--format", "-f", help="table, json or markdown.")]


def bench_command(
    ctx: typer.Context,
    model: ModelArg,
    artifact: ArtifactArg = None,
    eval_dir: EvalDirOpt = None,
    calib_dir: CalibDirOpt = None,
    batch_sizes: BatchSizesOpt = BENCH_BATCH_SIZES,
    threads: ThreadsOpt = None,
    warmup: WarmupOpt = BENCH.warmup,
    runs: RunsOpt = BENCH.runs,
    precision: PrecisionOpt = BENCH.precision,
    time_budget: TimeBudgetOpt = None,
    inconclusive: InconclusiveOpt = DEFAULT_INCONCLUSIVE,
    eval_limit: EvalLimitOpt = None,
    max_drop: MaxDropOpt = None,
    output_name: OutputNameOpt = None,
    metric: MetricOpt = None,
    min_speedup: MinSpeedupOpt = None,
    baseline: BaselineOpt = None,
    latency_tolerance: LatencyToleranceOpt = BENCH.latency_tolerance,
    accuracy_tolerance: AccuracyToleranceOpt = BENCH.accuracy_tolerance,
    output: OutputOpt = None,
    per_layer: PerLayerOpt = False,
    report_html: ReportHtmlOpt = None,
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    config: ConfigOpt = None,
    format: FormatOpt = OutputFormat.table,
    force: ForceOpt = False,
    trust_model: TrustModelOpt = False,
    task: TaskOpt = None,
    max_length: MaxLengthOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Measure FP32 eager, FP32 compiled and INT8 interleaved in one process, and their accuracy.

    Example: qcli bench digits.safetensors digits-int8.pt2 --arch qcli.demo.model:DigitNet --eval-dir eval/ --max-drop 0.5
    """
    from qcli.api import bench_model

    with flags_named(ctx):
        check_outputs([output, report_html], [model, artifact, baseline], force)
        options = BenchOptions(
            batch_sizes=parse_batch_sizes(batch_sizes),
            threads=threads,
            warmup=warmup,
            runs=runs,
            eval_limit=eval_limit,
            max_drop=max_drop,
            min_speedup=min_speedup,
            baseline=baseline,
            latency_tolerance=latency_tolerance,
            accuracy_tolerance=accuracy_tolerance,
            precision=precision,
            time_budget=time_budget,
            inconclusive=inconclusive.value,
            judge=JudgeOptions(output_name, metric),
        )
        report, gate_error = gated(
            lambda: bench_model(
                model,
                artifact,
                arch=arch_spec(arch, arch_kwargs),
                eval_dir=eval_dir,
                calib_dir=calib_dir,
                recipe=recipe_of(ctx, max_length),
                options=options,
                trust_model=trust_model,
                task=task.value if task is not None else None,
                track=render.tracker(quiet, "evaluating"),
            )
        )
    report.report_html = str(report_html) if report_html is not None else None
    for warning in report.warnings:
        print(f"qcli: warning: {warning}", file=sys.stderr)
    try:
        write_outputs(report, report_html, output)
    except QcliError as exc:
        if gate_error is None:
            raise
        print(f"qcli: error: {exc}", file=sys.stderr)  # then the gate's own line and exit 3
    show(report, format, per_layer)
    if gate_error is not None:
        raise gate_error


def check_outputs(outputs: list[Path | None], inputs: list[Path | None], force: bool) -> None:
    """Before minutes of benchmarking: each report file is new (or ``--force``), writable, and
    none of the files being read."""
    from qcli.errors import OutputError
    from qcli.files import check_output

    read = {p.resolve() for p in inputs if p is not None}
    for path in outputs:
        if path is None:
            continue
        if path.resolve() in read:
            raise OutputError(f"'{path}' is an input of this run; write the report to another file", path=path)
        check_output(path, force)
    given = [p.resolve() for p in outputs if p is not None]
    if len(given) != len(set(given)):
        raise OutputError("-o and --report name the same file; give each its own", path=outputs[0])


def write_outputs(report: BenchReport, report_html: Path | None, output: Path | None) -> None:
    """The HTML page and the JSON file (written even when a gate failed)."""
    if report_html is not None:
        from qcli.report import html_report

        write_text(report_html, html_report(report))
    if output is not None:
        write_text(output, render.to_json(report) + "\n")


def show(report: BenchReport, format: OutputFormat, per_layer: bool) -> None:
    if format is OutputFormat.json:
        print(render.to_json(report))
        return
    from qcli import tables

    shown, lines = tables.bench_tables(report), tables.measurement_lines(report) + tables.gate_lines(report)
    if report.report_html:
        lines.insert(0, f"HTML report: {report.report_html}")
    if per_layer:
        extra_tables, extra_lines = render.per_layer_table(report.per_layer, report.suggested_exclude)
        shown, lines = shown + extra_tables, extra_lines + lines
    render.emit(shown, lines, format.value)


def write_text(path: Path, text: str) -> None:
    """Write a report atomically (it is written even when a gate fails)."""
    from qcli.files import atomic_output

    try:
        with atomic_output(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise QcliError(f"cannot write the report to '{path}': {exc.strerror}") from None
