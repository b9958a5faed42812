"""Options shared by several commands, declared once as ``Annotated`` aliases."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    markdown = "markdown"


class Mode(str, Enum):
    static = "static"
    dynamic = "dynamic"
    weight_only = "weight-only"


class Method(str, Enum):
    histogram = "histogram"
    minmax = "minmax"
    percentile = "percentile"
    entropy = "entropy"
    mse = "mse"
    auto = "auto"


class Form(str, Enum):
    package = "package"
    program = "program"
    both = "both"


ModelArg = Annotated[
    Path,
    typer.Argument(
        metavar="MODEL",
        exists=True,
        dir_okay=False,
        help="FP32 model: TorchScript archive, state dict (.pt/.pth/.bin/.safetensors, needs --arch) or exported program (.pt2).",
    ),
]
ArchOpt = Annotated[
    str | None,
    typer.Option(
        "--arch", help="module.path:callable that builds the model for a state dict, e.g. qcli.demo.model:DigitNet."
    ),
]
ArchKwargsOpt = Annotated[
    str | None,
    typer.Option("--arch-kwargs", help="JSON keyword arguments for --arch, e.g. '{\"num_classes\": 10}'."),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", exists=True, dir_okay=False, help="TOML recipe (see configs/); flags on the command line win."
    ),
]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="Use at most N calibration samples.")]
SeedOpt = Annotated[
    int | None, typer.Option("--seed", help="Shuffle the sample order with this seed (default: sorted by path).")
]
BatchSizeOpt = Annotated[int | None, typer.Option("--batch-size", help="Samples per calibration batch (default 32).")]
ModeOpt = Annotated[
    Mode | None,
    typer.Option(
        "--mode",
        help="static: calibrated activations; dynamic: activations quantized per token on each call "
        "(Linear layers); weight-only: INT8 weights, FP32 activations (Linear layers).",
    ),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or hints on stderr.")]
