"""Options shared by several commands, declared once as ``Annotated`` aliases.

Choices and defaults come from ``qcli.options`` (the library's option objects), so ``--help``
shows the defaults the library uses. ``--config`` is eager: its callback loads the recipe into
the command's ``default_map`` before any other option is read, so flags beat the file and the
file beats the declared default (``qcli.cli.common.load_config``).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from qcli import options
from qcli.cli.common import load_config
from qcli.hf import TASKS


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    markdown = "markdown"


# str Enums for Typer, built from the library's tuples so a new choice is declared once
Mode = Enum("Mode", {m.replace("-", "_"): m for m in options.MODES}, type=str)  # type: ignore[misc]
Method = Enum("Method", {m: m for m in options.METHODS}, type=str)  # type: ignore[misc]
Form = Enum("Form", {f: f for f in options.FORMS}, type=str)  # type: ignore[misc]
Inconclusive = Enum("Inconclusive", {v: v for v in options.INCONCLUSIVE}, type=str)  # type: ignore[misc]
Task = Enum("Task", {t.replace("-", "_"): t for t in TASKS}, type=str)  # type: ignore[misc]


def batch_sizes_text(sizes: tuple[int, ...]) -> str:
    return ",".join(str(s) for s in sizes)


CALIBRATION = options.CalibrationOptions()
CONVERT = options.ConvertOptions()
BENCH = options.BenchOptions()
DEFAULT_MODE, DEFAULT_METHOD, DEFAULT_FORM = Mode(CALIBRATION.mode), Method(CONVERT.method), Form(CONVERT.form)
DEFAULT_INCONCLUSIVE = Inconclusive(BENCH.inconclusive)
PACKAGE_BATCH_SIZES, BENCH_BATCH_SIZES = (
    batch_sizes_text(CONVERT.package_batch_sizes),
    batch_sizes_text(BENCH.batch_sizes),
)
SEARCH_MAX_TRIALS = options.SearchOptions.max_trials  # its default (the class has required fields)


ModelArg = Annotated[
    Path,
    typer.Argument(
        metavar="MODEL",
        exists=True,
        help="FP32 model: TorchScript archive, state dict (.pt/.pth/.bin/.safetensors, needs --arch), exported "
        "program (.pt2), or a Hugging Face model folder (config.json and weights; pip install 'qcli[hf]').",
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
        "--config",
        "-c",
        exists=True,
        dir_okay=False,
        is_eager=True,
        callback=load_config,
        help="TOML recipe (see configs/): [preprocess] and a section per command whose keys are its option "
        "names; flags on the command line win.",
    ),
]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="Use at most N calibration samples.")]
SeedOpt = Annotated[
    int | None, typer.Option("--seed", help="Shuffle the sample order with this seed (default: sorted by path).")
]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Samples per calibration batch.")]
ModeOpt = Annotated[
    Mode,
    typer.Option(
        "--mode",
        help="static: calibrated activations; dynamic: activations quantized per token on each call "
        "(Linear layers); weight-only: INT8 weights, FP32 activations (Linear layers).",
    ),
]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="torch intra-op threads (default: torch's).")]
TrustModelOpt = Annotated[
    bool,
    typer.Option(
        "--trust-model",
        help="Load a file that would run code when loaded (a .pt2 whose pickles import more than tensors; "
        "an --arch named only in an artifact's metadata). Only for files you made or trust.",
    ),
]
OutputNameOpt = Annotated[
    str | None,
    typer.Option(
        "--output-name",
        help="The model output that labels, top-1 and --metric apply to: its name (as the reports list them, "
        "e.g. logits or 1.probs) or index, e.g. --output-name 2.",
    ),
]
MetricOpt = Annotated[
    str | None,
    typer.Option(
        "--metric",
        help=f"What --max-drop judges: {', '.join(options.METRICS)}, or module:function for your own "
        "(default: top1 for labels and one [B, C] output, spearman with pairs.csv, else the SQNR of every output).",
    ),
]
TaskOpt = Annotated[
    Task | None,
    typer.Option(
        "--task",
        help="For a Hugging Face model folder: the head to build (default: the config's own architecture), "
        "e.g. --task sequence-classification.",
    ),
]
MaxLengthOpt = Annotated[
    int | None,
    typer.Option(
        "--max-length",
        min=1,
        help="Text samples (.txt, .jsonl, .csv): cut to this many tokens (default 128; recipe key "
        "preprocess.max_length) and padded to 16, 32, 64, ... up to it (preprocess.lengths).",
    ),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or hints on stderr.")]
