"""``qcli convert``: write the INT8 artifact."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from qcli import tables
from qcli.cli import render
from qcli.cli.common import arch_spec, flags_named, gated, parse_batch_sizes, parse_shapes, recipe_of
from qcli.cli.options import (
    CALIBRATION,
    CONVERT,
    DEFAULT_FORM,
    DEFAULT_METHOD,
    DEFAULT_MODE,
    PACKAGE_BATCH_SIZES,
    SEARCH_MAX_TRIALS,
    ArchKwargsOpt,
    ArchOpt,
    BatchSizeOpt,
    ConfigOpt,
    ForceOpt,
    Form,
    LimitOpt,
    MaxLengthOpt,
    Method,
    MetricOpt,
    ModelArg,
    ModeOpt,
    OutputFormat,
    OutputNameOpt,
    QuietOpt,
    SeedOpt,
    TaskOpt,
    ThreadsOpt,
    TrustModelOpt,
)
from qcli.options import CalibrationOptions, ConvertOptions, InputShape, JudgeOptions, SearchOptions

if TYPE_CHECKING:
    from qcli.reports import ConvertReport


OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="Artifact to write (.pt2).")]

StatsOpt = Annotated[
    Path | None, typer.Option("--stats", exists=True, dir_okay=False, help="Statistics from `qcli calibrate`.")
]

CalibDirOpt = Annotated[
    Path | None, typer.Option("--calib-dir", exists=True, file_okay=False, help="Calibrate on this folder first.")
]

MethodOpt = Annotated[
    Method,
    typer.Option(
        "--method",
        help="Activation ranges from the calibration histograms: histogram (torch's least-L2 search), "
        "minmax, percentile, entropy (KL, as TensorRT), mse, or auto (per tensor, the one whose next layer errs least), e.g. --method entropy.",
    ),
]

PercentileOpt = Annotated[
    float, typer.Option("--percentile", help="With --method percentile: keep this percent of the values.")
]

ExcludeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude",
        help="Keep modules matching this glob in FP32 (repeatable; names as `qcli inspect` lists them), e.g. --exclude 'stem.*' --exclude fc.",
    ),
]

MaxDropOpt = Annotated[
    float | None,
    typer.Option(
        "--max-drop",
        help="With --eval-dir: keep the most harmful layers in FP32 until INT8 is within X points of FP32 "
        "(exit 3 if it never is; the best artifact is still written), e.g. --max-drop 1.",
    ),
]

EvalDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--eval-dir",
        exists=True,
        file_okay=False,
        help="Samples for --max-drop (class sub-folders: top-1; else agreement with FP32).",
    ),
]

EvalLimitOpt = Annotated[
    int | None,
    typer.Option("--eval-limit", help="With --max-drop: evaluate at most N samples per trial, e.g. 500."),
]

MaxTrialsOpt = Annotated[int, typer.Option("--max-trials", help="With --max-drop: at most N conversions tried.")]

TimeoutOpt = Annotated[
    float | None, typer.Option("--timeout", help="With --max-drop: stop searching after S seconds, e.g. 600.")
]

BiasCorrectionOpt = Annotated[
    bool,
    typer.Option(
        "--bias-correction/--no-bias-correction",
        help="Shift each INT8 layer's bias by its mean output error on the calibration samples (static mode), e.g. --bias-correction.",
    ),
]

WeightsOpt = Annotated[
    str,
    typer.Option(
        "--weights",
        help="INT8 weight scales: per-channel or per-tensor (symmetric; in torch 2.13 per-tensor "
        "weights miss the fused INT8 kernels and run slower), e.g. --weights per-tensor.",
    ),
]

FormOpt = Annotated[
    Form,
    typer.Option(
        "--form",
        help="package (AOTInductor, deployable), program (exported, portable) or both (program at NAME.program.pt2).",
    ),
]

PackageBatchSizesOpt = Annotated[
    str, typer.Option("--package-batch-sizes", help="Batch sizes the package is compiled for, one model each.")
]
PackageShapesOpt = Annotated[
    str | None,
    typer.Option(
        "--package-shapes",
        help="A sequence model's package: the BATCHxLENGTH shapes it is compiled for, e.g. 1x128,16x128; "
        "shorter inputs are padded to the next compiled length (default: each package batch size at the "
        "longest calibration length).",
    ),
]

PackageWeightsOpt = Annotated[
    str,
    typer.Option(
        "--package-weights",
        help="shared (one copy of the weights for the package's models where they are identical; only the "
        "default model loads with torch's load_package) or copies (each model its own, all load with torch's "
        "load_package), e.g. --package-weights copies.",
    ),
]

PreferOpt = Annotated[
    str,
    typer.Option(
        "--prefer",
        help="accuracy (every layer INT8) or speed (per package batch size, layers whose FP32 kernel is "
        "measured faster stay FP32 when that makes the model faster; compiles each size 3 times), e.g. --prefer speed.",
    ),
]

SaveConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--save-config",
        dir_okay=False,
        help="Also write the effective configuration as a TOML recipe, e.g. --save-config used.toml (reuse with --config).",
    ),
]

FormatOpt = Annotated[OutputFormat, typer.Option("--format", "-f", help="table or json.")]


InputShapeOpt = Annotated[
    str | None,
    typer.Option(
        "--input-shape",
        help="Dynamic and weight-only modes without samples: the inputs' shapes, batch first, e.g. "
        "input_ids:1x128:int64,attention_mask:1x128:int64 or 1x3x224x224 (float32 unless a dtype is given).",
    ),
]


def convert_command(
    ctx: typer.Context,
    model: ModelArg,
    output: OutputOpt,
    stats: StatsOpt = None,
    calib_dir: CalibDirOpt = None,
    input_shape: InputShapeOpt = None,
    mode: ModeOpt = DEFAULT_MODE,
    method: MethodOpt = DEFAULT_METHOD,
    percentile: PercentileOpt = CONVERT.percentile,
    exclude: ExcludeOpt = None,
    max_drop: MaxDropOpt = None,
    eval_dir: EvalDirOpt = None,
    output_name: OutputNameOpt = None,
    metric: MetricOpt = None,
    eval_limit: EvalLimitOpt = None,
    max_trials: MaxTrialsOpt = SEARCH_MAX_TRIALS,
    timeout: TimeoutOpt = None,
    bias_correction: BiasCorrectionOpt = CONVERT.bias_correction,
    weights: WeightsOpt = CONVERT.weights,
    form: FormOpt = DEFAULT_FORM,
    package_batch_sizes: PackageBatchSizesOpt = PACKAGE_BATCH_SIZES,
    package_shapes: PackageShapesOpt = None,
    package_weights: PackageWeightsOpt = CONVERT.package_weights,
    prefer: PreferOpt = CONVERT.prefer,
    threads: ThreadsOpt = None,
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    config: ConfigOpt = None,
    limit: LimitOpt = None,
    seed: SeedOpt = None,
    batch_size: BatchSizeOpt = CALIBRATION.batch_size,
    force: ForceOpt = False,
    save_config: SaveConfigOpt = None,
    format: FormatOpt = OutputFormat.table,
    trust_model: TrustModelOpt = False,
    task: TaskOpt = None,
    max_length: MaxLengthOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Quantize MODEL to INT8 (static by default) and write an artifact plain PyTorch can run.

    Example: qcli convert digits.safetensors --arch qcli.demo.model:DigitNet --stats stats.safetensors -o digits-int8.pt2
    """
    from qcli.api import convert_model_file

    with flags_named(ctx):
        search = search_options(max_drop, eval_dir, eval_limit, max_trials, timeout, JudgeOptions(output_name, metric))
        options = ConvertOptions(
            calibration=CalibrationOptions(limit, seed, batch_size, mode.value),
            method=method.value,
            percentile=percentile,
            exclude=tuple(exclude or ()),
            bias_correction=bias_correction,
            weights=weights,
            form=form.value,
            package_batch_sizes=parse_batch_sizes(package_batch_sizes),
            package_shapes=parse_shapes(package_shapes) if package_shapes else (),
            package_weights=package_weights,
            prefer=prefer,
            threads=threads,
            search=search,
            input_shape=InputShape.parse_all(input_shape) if input_shape else (),
        )
        report, gate_error = gated(
            lambda: convert_model_file(
                model,
                output,
                stats=stats,
                calib_dir=calib_dir,
                arch=arch_spec(arch, arch_kwargs),
                recipe=recipe_of(ctx, max_length),
                options=options,
                force=force,
                save_config=save_config,
                trust_model=trust_model,
                task=task.value if task is not None else None,
                track=render.tracker(quiet, "calibrating"),
            )
        )
    show(report, format)
    if gate_error is not None:
        raise gate_error


def search_options(
    max_drop: float | None,
    eval_dir: Path | None,
    eval_limit: int | None,
    max_trials: int,
    timeout: float | None,
    judge: JudgeOptions,
) -> SearchOptions | None:
    """The FP32 fall-back search, when ``--max-drop`` asks for it (with ``--eval-dir``)."""
    from qcli.errors import OptionError

    if (max_drop is None) != (eval_dir is None):
        raise OptionError(
            "{max_drop} and {eval_dir} go together: the search measures accuracy on the evaluation folder"
        )
    if max_drop is None or eval_dir is None:
        if judge != JudgeOptions():
            raise OptionError("{output_name} and {metric} choose what the {max_drop} search judges; pass {max_drop}")
        return None
    return SearchOptions(max_drop, eval_dir, eval_limit, max_trials, timeout, judge)


def show(report: ConvertReport, format: OutputFormat) -> None:
    if format is OutputFormat.json:
        print(render.to_json(report))
        return
    search = report.search
    if search:
        rows = [
            [str(i), t["reason"], str(len(t["excluded"])), tables.fmt(t["drop"], 2), tables.fmt(t["seconds"], 1)]
            for i, t in enumerate(search["trials"])
        ]
        title = f"--max-drop {search['max_drop']:g} search ({search['stopped_by']})"
        kept = ", ".join(search["best"]["excluded"]) or "nothing"
        render.emit(
            [tables.Table(title, ["trial", "change", "FP32 layers", "drop", "s"], rows)],
            [f"kept in FP32: {kept}; drop {search['best']['drop']:.2f} points"],
            "table",
        )
    if report.speed:
        speed_tables, speed_lines = render.speed_table(report.speed)
        render.emit(speed_tables, speed_lines, "table")
    for name, out in report.outputs.items():
        render.say(f"wrote {out.path} ({name}, {tables.fmt_bytes(out.size_bytes)})")

    def at(s: dict[str, Any]) -> str:
        return f"batch {s['batch']}" + (f"x{s['length']}" if s.get("length") else "")

    shapes = report.speed or []
    for_speed = "; ".join(f"{at(s)}: {', '.join(s['fp32_layers'])}" for s in shapes if s["fp32_layers"])
    products = "; ".join(f"{at(s)}: {len(s['matmul_layers'])}" for s in shapes if s.get("matmul_layers"))
    render.say(
        f"{report.quantized_layers} of {len(report.layers)} conv/linear layers INT8 ({report.mode})"
        + (f", kept FP32 for speed at {for_speed}" if for_speed else "")
        + (f", convolutions as INT8 matrix products at {products}" if products else "")
        + f"; model file was {tables.fmt_bytes(report.model.size_bytes)}"
    )
    if report.saved_config:
        render.say(f"wrote {report.saved_config} (effective configuration)")
    for warning in report.warnings:
        print(f"qcli: warning: {warning}", file=sys.stderr)
