"""``qcli bench``: FP32 vs INT8 latency and accuracy side by side, with gates."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from qcli.cli import render
from qcli.cli.common import arch_spec, parse_batch_sizes, recipe
from qcli.cli.options import ArchKwargsOpt, ArchOpt, ConfigOpt, ModelArg, OutputFormat, QuietOpt
from qcli.errors import GateFailed, QcliError


def bench_command(
    model: ModelArg,
    artifact: Annotated[
        Path | None,
        typer.Argument(metavar="INT8_ARTIFACT", exists=True, dir_okay=False, help="INT8 artifact from `qcli convert`."),
    ] = None,
    eval_dir: Annotated[
        Path | None,
        typer.Option(
            "--eval-dir",
            exists=True,
            file_okay=False,
            help="Samples for accuracy: class sub-folders give top-1/top-5; otherwise fidelity to FP32.",
        ),
    ] = None,
    calib_dir: Annotated[
        Path | None,
        typer.Option(
            "--calib-dir",
            exists=True,
            file_okay=False,
            help="Without ARTIFACT: calibrate on this folder and quantize first.",
        ),
    ] = None,
    batch_sizes: Annotated[
        str | None, typer.Option("--batch-sizes", help="Comma-separated batch sizes (default 1,16).")
    ] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="torch intra-op threads (default: torch's).")] = None,
    warmup: Annotated[int | None, typer.Option("--warmup", help="Untimed calls per variant first (default 3).")] = None,
    runs: Annotated[
        int | None, typer.Option("--runs", help="Timed calls per variant and batch size (default 20).")
    ] = None,
    eval_limit: Annotated[int | None, typer.Option("--eval-limit", help="Evaluate at most N samples.")] = None,
    max_drop: Annotated[
        float | None, typer.Option("--max-drop", help="Fail (exit 3) if accuracy drops more than X points.")
    ] = None,
    min_speedup: Annotated[
        float | None, typer.Option("--min-speedup", help="Fail (exit 3) if INT8 is under Y times FP32 compiled.")
    ] = None,
    baseline: Annotated[
        Path | None,
        typer.Option(
            "--baseline",
            dir_okay=False,
            help="Earlier report (from -o) to compare with; regressions beyond the tolerances exit 3, e.g. --baseline main.json.",
        ),
    ] = None,
    latency_tolerance: Annotated[
        float | None,
        typer.Option(
            "--latency-tolerance",
            help="With --baseline: allowed INT8 latency rise / speed-up fall, a fraction (default 0.10).",
        ),
    ] = None,
    accuracy_tolerance: Annotated[
        float | None,
        typer.Option(
            "--accuracy-tolerance", help="With --baseline: allowed INT8 accuracy fall in points (default 0.5)."
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Also write the JSON report to this file, e.g. -o bench.json.")
    ] = None,
    per_layer: Annotated[
        bool,
        typer.Option(
            "--per-layer",
            help="Also show each layer's INT8 error against FP32 (recorded at convert), e.g. --per-layer.",
        ),
    ] = False,
    report_html: Annotated[
        Path | None,
        typer.Option(
            "--report",
            dir_okay=False,
            help="Also write a self-contained HTML page with plots, e.g. --report report.html.",
        ),
    ] = None,
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    config: ConfigOpt = None,
    format: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="table, json or markdown.")
    ] = OutputFormat.table,
    quiet: QuietOpt = False,
) -> None:
    """Measure FP32 eager, FP32 compiled and INT8 interleaved in one process, and their accuracy.

    Example: qcli bench digits.safetensors digits-int8.pt2 --arch qcli.demo.model:DigitNet --eval-dir eval/ --max-drop 0.5
    """
    from qcli.api import bench_model

    rec = recipe(config)
    sizes_opt = rec.option("bench", "batch_sizes", batch_sizes, None) or "1,16"  # a string or a TOML list
    sizes = parse_batch_sizes(sizes_opt)
    gate_error: GateFailed | None = None
    try:
        report = bench_model(
            model,
            artifact,
            arch=arch_spec(arch, arch_kwargs),
            eval_dir=eval_dir,
            calib_dir=calib_dir,
            recipe=rec,
            batch_sizes=sizes,
            threads=rec.option("bench", "threads", threads, None),
            warmup=rec.option("bench", "warmup", warmup, 3),
            runs=rec.option("bench", "runs", runs, 20),
            eval_limit=eval_limit,
            max_drop=rec.option("bench", "max_drop", max_drop, None),
            min_speedup=rec.option("bench", "min_speedup", min_speedup, None),
            baseline=baseline,
            latency_tolerance=rec.option("bench", "latency_tolerance", latency_tolerance, 0.10),
            accuracy_tolerance=rec.option("bench", "accuracy_tolerance", accuracy_tolerance, 0.5),
            track=render.tracker(quiet, "evaluating"),
        )
    except GateFailed as exc:
        if exc.report is None:
            raise
        gate_error, report = exc, exc.report
    report["report_html"] = str(report_html) if report_html is not None else None
    for warning in report.get("warnings") or []:
        print(f"qcli: warning: {warning}", file=sys.stderr)
    if report_html is not None:
        from qcli.report import html_report

        write_text(report_html, html_report(report))
    if output is not None:
        write_text(output, render.to_json(report) + "\n")
    if format is OutputFormat.json:
        print(render.to_json(report))
    else:
        tables, lines = render.bench_tables(report)
        if per_layer:
            extra_tables, extra_lines = render.per_layer_table(
                report.get("per_layer"), report.get("suggested_exclude") or []
            )
            tables, lines = tables + extra_tables, extra_lines + lines
        render.emit(tables, lines, format.value)
    if gate_error is not None:
        raise gate_error


def write_text(path: Path, text: str) -> None:
    """Write a report atomically (it is written even when a gate fails)."""
    from qcli.files import atomic_output

    try:
        with atomic_output(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise QcliError(f"cannot write the report to '{path}': {exc.strerror}") from None
