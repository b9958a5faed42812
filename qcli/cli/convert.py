"""``qcli convert``: write the INT8 artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qcli.cli import render
from qcli.cli.common import arch_spec, calibration_options, parse_batch_sizes, recipe
from qcli.cli.options import (
    ArchKwargsOpt,
    ArchOpt,
    BatchSizeOpt,
    ConfigOpt,
    ForceOpt,
    Form,
    LimitOpt,
    Method,
    ModelArg,
    ModeOpt,
    OutputFormat,
    QuietOpt,
    SeedOpt,
)


def convert_command(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Artifact to write (.pt2).")],
    stats: Annotated[
        Path | None, typer.Option("--stats", exists=True, dir_okay=False, help="Statistics from `qcli calibrate`.")
    ] = None,
    calib_dir: Annotated[
        Path | None, typer.Option("--calib-dir", exists=True, file_okay=False, help="Calibrate on this folder first.")
    ] = None,
    mode: ModeOpt = None,
    method: Annotated[
        Method | None,
        typer.Option(
            "--method",
            help="Activation ranges from the calibration histograms: histogram (torch's least-L2 search, default), "
            "minmax, percentile, entropy (KL, as TensorRT), mse, or auto (per tensor, the one whose next layer errs least), e.g. --method entropy.",
        ),
    ] = None,
    percentile: Annotated[
        float | None,
        typer.Option("--percentile", help="With --method percentile: keep this percent, e.g. 99.99 (default)."),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude",
            help="Keep modules matching this glob in FP32 (repeatable; names as `qcli inspect` lists them), e.g. --exclude 'stem.*' --exclude fc.",
        ),
    ] = None,
    max_drop: Annotated[
        float | None,
        typer.Option(
            "--max-drop",
            help="With --eval-dir: keep the most harmful layers in FP32 until INT8 is within X points of FP32 "
            "(exit 3 if it never is; the best artifact is still written), e.g. --max-drop 1.",
        ),
    ] = None,
    eval_dir: Annotated[
        Path | None,
        typer.Option(
            "--eval-dir",
            exists=True,
            file_okay=False,
            help="Samples for --max-drop (class sub-folders: top-1; else agreement with FP32).",
        ),
    ] = None,
    eval_limit: Annotated[
        int | None,
        typer.Option("--eval-limit", help="With --max-drop: evaluate at most N samples per trial, e.g. 500."),
    ] = None,
    max_trials: Annotated[
        int | None, typer.Option("--max-trials", help="With --max-drop: at most N conversions tried (default 20).")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="With --max-drop: stop searching after S seconds, e.g. 600.")
    ] = None,
    bias_correction: Annotated[
        bool | None,
        typer.Option(
            "--bias-correction/--no-bias-correction",
            help="Shift each INT8 layer's bias by its mean output error on the calibration samples (static mode), e.g. --bias-correction.",
        ),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(
            "--weights",
            help="INT8 weight scales: per-channel (default) or per-tensor (symmetric; in torch 2.13 per-tensor "
            "weights miss the fused INT8 kernels and run slower), e.g. --weights per-tensor.",
        ),
    ] = None,
    form: Annotated[
        Form | None,
        typer.Option(
            "--form",
            help="package (AOTInductor, deployable), program (exported, portable) or both (program at NAME.program.pt2).",
        ),
    ] = None,
    package_batch_sizes: Annotated[
        str | None,
        typer.Option(
            "--package-batch-sizes", help="Batch sizes the package is compiled for, one model each (default 1,16)."
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            help="torch threads while compiling the package; use the count it will run with (default: torch's).",
        ),
    ] = None,
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    config: ConfigOpt = None,
    limit: LimitOpt = None,
    seed: SeedOpt = None,
    batch_size: BatchSizeOpt = None,
    force: ForceOpt = False,
    save_config: Annotated[
        Path | None,
        typer.Option(
            "--save-config",
            dir_okay=False,
            help="Also write the effective configuration as a TOML recipe, e.g. --save-config used.toml (reuse with --config).",
        ),
    ] = None,
    format: Annotated[OutputFormat, typer.Option("--format", "-f", help="table or json.")] = OutputFormat.table,
    quiet: QuietOpt = False,
) -> None:
    """Quantize MODEL to INT8 (static by default) and write an artifact plain PyTorch can run.

    Example: qcli convert digits.safetensors --arch qcli.demo.model:DigitNet --stats stats.safetensors -o digits-int8.pt2
    """
    from qcli.api import convert_model_file
    from qcli.errors import GateFailed

    rec = recipe(config)
    options = calibration_options(rec, "convert", limit, seed, batch_size, mode)
    gate_error: GateFailed | None = None
    try:
        report = convert_model_file(
            model,
            output,
            stats=stats,
            calib_dir=calib_dir,
            arch=arch_spec(arch, arch_kwargs),
            recipe=rec,
            options=options,
            form=rec.option("convert", "form", form.value if form else None, "package"),
            force=force,
            save_config=save_config,
            method=rec.option("convert", "method", method.value if method else None, "histogram"),
            percentile=rec.option("convert", "percentile", percentile, 99.99),
            exclude=exclude or rec.option("convert", "exclude", None, None) or (),
            max_drop=rec.option("convert", "max_drop", max_drop, None),
            eval_dir=eval_dir,
            eval_limit=eval_limit,
            max_trials=rec.option("convert", "max_trials", max_trials, 20),
            timeout=rec.option("convert", "timeout", timeout, None),
            bias_correction=rec.option("convert", "bias_correction", bias_correction, False),
            weights=rec.option("convert", "weights", weights, "per-channel"),
            package_batch_sizes=parse_batch_sizes(
                rec.option("convert", "package_batch_sizes", package_batch_sizes, None) or "1,16"
            ),
            threads=rec.option("convert", "threads", threads, None),
            track=render.tracker(quiet, "calibrating"),
        )
    except GateFailed as exc:  # the best artifact was written; show what was tried, then exit 3
        if exc.report is None:
            raise
        gate_error, report = exc, exc.report
    show(report, format)
    if gate_error is not None:
        raise gate_error


def show(report: dict, format: OutputFormat) -> None:
    if format is OutputFormat.json:
        print(render.to_json(report))
        return
    search = report.get("search")
    if search:
        rows = [
            [str(i), t["reason"], str(len(t["excluded"])), render.fmt(t["drop"], 2), render.fmt(t["seconds"], 1)]
            for i, t in enumerate(search["trials"])
        ]
        render.emit(
            [
                (
                    f"--max-drop {search['max_drop']:g} search ({search['stopped_by']})",
                    ["trial", "change", "FP32 layers", "drop", "s"],
                    rows,
                )
            ],
            [
                f"kept in FP32: {', '.join(search['best']['excluded']) or 'nothing'}; drop {search['best']['drop']:.2f} points"
            ],
            "table",
        )
    for name, out in report["outputs"].items():
        render.stdout.print(
            f"wrote {out['path']} ({name}, {render.fmt_bytes(out['size_bytes'])})", markup=False, highlight=False
        )
    render.stdout.print(
        f"{report['quantized_layers']} of {len(report['layers'])} conv/linear layers INT8 ({report['mode']}); "
        f"model file was {render.fmt_bytes(report['model']['size_bytes'])}",
        markup=False,
        highlight=False,
    )
    if report["saved_config"]:
        render.stdout.print(f"wrote {report['saved_config']} (effective configuration)", markup=False, highlight=False)
