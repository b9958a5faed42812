"""Small helpers the command files share: building ArchSpec and Recipe from options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from qcli.config import Recipe, load_recipe
from qcli.load import ArchSpec


def arch_spec(arch: str | None, arch_kwargs: str | None) -> ArchSpec | None:
    if arch is None:
        if arch_kwargs is not None:
            from qcli.errors import ArchError

            raise ArchError("--arch-kwargs needs --arch")
        return None
    return ArchSpec.parse(arch, arch_kwargs)


def recipe(config: Path | None) -> Recipe:
    return load_recipe(config)


def parse_batch_sizes(value: str | list[int]) -> list[int]:
    """'1,16' (or a TOML list) → [1, 16]; anything else is a usage error."""
    text = ",".join(str(v) for v in value) if isinstance(value, list) else value
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"'{text}' is not a comma-separated list of integers, e.g. 1,16") from None
    if not sizes or any(s <= 0 for s in sizes):
        raise typer.BadParameter(f"'{text}' must list positive batch sizes, e.g. 1,16")
    return list(dict.fromkeys(sizes))


def calibration_options(
    rec: Recipe, command: str, limit: int | None, seed: int | None, batch_size: int | None, mode: Any
) -> Any:
    """CalibrationOptions from flags, else the recipe's ``[command]`` section, else defaults."""
    from qcli.api import CalibrationOptions

    return CalibrationOptions(
        limit=rec.option(command, "limit", limit, None),
        seed=rec.option(command, "seed", seed, None),
        batch_size=rec.option(command, "batch_size", batch_size, 32),
        mode=rec.option(command, "mode", mode.value if mode else None, "static"),
    )
