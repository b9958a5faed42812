"""``qcli calibrate``: observer statistics of a calibration folder, saved for ``convert --stats``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qcli import tables
from qcli.cli import render
from qcli.cli.common import arch_spec, flags_named, recipe_of
from qcli.cli.options import (
    CALIBRATION,
    DEFAULT_MODE,
    ArchKwargsOpt,
    ArchOpt,
    BatchSizeOpt,
    ConfigOpt,
    ForceOpt,
    LimitOpt,
    MaxLengthOpt,
    ModelArg,
    ModeOpt,
    OutputFormat,
    QuietOpt,
    SeedOpt,
    TaskOpt,
    TrustModelOpt,
)
from qcli.options import CalibrationOptions


def calibrate_command(
    ctx: typer.Context,
    model: ModelArg,
    calib_dir: Annotated[
        Path,
        typer.Argument(metavar="CALIB_DIR", exists=True, file_okay=False, help="Folder of images or tensor files."),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Statistics file to write (.safetensors).")],
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    config: ConfigOpt = None,
    limit: LimitOpt = None,
    seed: SeedOpt = None,
    batch_size: BatchSizeOpt = CALIBRATION.batch_size,
    mode: ModeOpt = DEFAULT_MODE,
    force: ForceOpt = False,
    format: Annotated[OutputFormat, typer.Option("--format", "-f", help="table or json.")] = OutputFormat.table,
    trust_model: TrustModelOpt = False,
    task: TaskOpt = None,
    max_length: MaxLengthOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Run observers over CALIB_DIR and write per-tensor ranges and histograms to a safetensors file.

    Example: qcli calibrate digits.safetensors --arch qcli.demo.model:DigitNet calib/ -o stats.safetensors
    """
    from qcli.api import calibrate_model

    with flags_named(ctx):
        report = calibrate_model(
            model,
            calib_dir,
            output,
            arch=arch_spec(arch, arch_kwargs),
            recipe=recipe_of(ctx, max_length),
            options=CalibrationOptions(limit, seed, batch_size, mode.value),
            force=force,
            trust_model=trust_model,
            task=task.value if task is not None else None,
            track=render.tracker(quiet, "calibrating"),
        )
    if format is OutputFormat.json:
        print(render.to_json(report))
        return
    stats = report.stats
    render.say(
        f"wrote {stats.path} ({tables.fmt_bytes(stats.size_bytes)}): {stats.observers} observers "
        f"over {report.samples} samples ({report.mode})"
    )
