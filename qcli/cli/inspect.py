"""``qcli inspect``: what a model or an INT8 artifact holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qcli.cli import render
from qcli.cli.common import arch_spec, flags_named
from qcli.cli.options import ArchKwargsOpt, ArchOpt, OutputFormat, TaskOpt, TrustModelOpt


def inspect_command(
    ctx: typer.Context,
    path: Annotated[
        Path,
        typer.Argument(
            metavar="MODEL_OR_ARTIFACT",
            exists=True,
            help="A model file, a Hugging Face model folder or a qcli INT8 artifact.",
        ),
    ],
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    format: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="table, json or markdown.")
    ] = OutputFormat.table,
    per_layer: Annotated[
        bool,
        typer.Option(
            "--per-layer",
            help="On an artifact: each layer's INT8 error against FP32, worst first, e.g. qcli inspect m-int8.pt2 --per-layer.",
        ),
    ] = False,
    trust_model: TrustModelOpt = False,
    task: TaskOpt = None,
) -> None:
    """Show a model's format, size, inputs and layers, or what an INT8 artifact quantized and how.

    Example: qcli inspect qcli/demo/weights/digits.safetensors --arch qcli.demo.model:DigitNet
    """
    from qcli.api import inspect_path

    with flags_named(ctx):
        report = inspect_path(path, arch_spec(arch, arch_kwargs), trust_model, task.value if task is not None else None)
    if format is OutputFormat.json:
        print(render.to_json(report))
        return
    document = report.to_dict()
    tables, lines = render.inspect_tables(document)
    if per_layer:
        if report.kind != "artifact":
            from qcli.errors import QcliError

            raise QcliError("--per-layer needs an INT8 artifact (the report is made when converting)")
        extra_tables, extra_lines = render.per_layer_table(
            document.get("per_layer"), document.get("suggested_exclude") or []
        )
        tables, lines = tables + extra_tables, lines + extra_lines
    render.emit(tables, lines, format.value)
