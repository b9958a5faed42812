"""What the command files share: recipes as option defaults, option names in messages, gates.

Recipes go through Click's ``default_map`` (as black does): the eager ``--config`` callback reads
the file, checks each key of the command's section against the command's own options (name and
type), and hands the values to Click as defaults. Click then applies the one precedence rule:
a flag beats the recipe, which beats the declared default. No command merges anything by hand.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import typer

from qcli.config import TOML_TYPES, Recipe, closest, load_recipe
from qcli.errors import ConfigError, GateFailed, OptionError, QcliError
from qcli.load import ArchSpec

T = TypeVar("T")
RECIPE_KEY = "qcli.recipe"
# options about this one run's output, not about how the model is quantized or measured; and
# --arch, which imports code: only the command line names code to run
NOT_IN_RECIPES = {"config", "output", "force", "format", "quiet", "save_config", "report_html", "per_layer", "help"}
NOT_IN_RECIPES |= {"arch", "arch_kwargs"}
# an option's Python type -> the types a TOML value may have for it (anything else: a string)
KINDS: dict[Any, tuple[type, ...]] = {int: (int,), float: (int, float), bool: (bool,)}


def load_config(ctx: typer.Context, value: Path | None) -> Path | None:
    """``--config`` callback: the recipe's ``[command]`` section becomes the command's defaults."""
    recipe = load_recipe(value)
    ctx.meta[RECIPE_KEY] = recipe
    if ctx.info_name:
        ctx.default_map = {**(ctx.default_map or {}), **recipe_defaults(ctx, recipe)}
    return value


def recipe_of(ctx: typer.Context, max_length: int | None = None) -> Recipe:
    """The recipe ``--config`` loaded (the defaults when there was none), with ``--max-length``
    (which caps the recipe's padding lengths, if it lists any) applied."""
    from dataclasses import replace

    recipe = ctx.meta.get(RECIPE_KEY)
    recipe = recipe if isinstance(recipe, Recipe) else Recipe()
    if max_length is None:
        return recipe
    lengths = recipe.preprocess.lengths
    if lengths is not None:
        lengths = (*(n for n in lengths if n < max_length), max_length)
    return replace(recipe, preprocess=replace(recipe.preprocess, max_length=max_length, lengths=lengths))


def recipe_options(command: Any) -> dict[str, Any]:
    """The options of a Click command a recipe may set, by Python name."""
    return {
        p.name: p for p in command.params if p.param_type_name == "option" and p.name and p.name not in NOT_IN_RECIPES
    }


def recipe_defaults(ctx: typer.Context, recipe: Recipe) -> dict[str, Any]:
    """The command's recipe section as checked option values; unknown keys and wrong types are
    errors naming the key and the file."""
    name = str(ctx.info_name)
    known = recipe_options(ctx.command)
    values = {}
    for raw_key, value in recipe.sections.get(name, {}).items():
        key = raw_key.replace("-", "_")
        where = f"{recipe.path}: '{name}.{raw_key}'"
        param = known.get(key)
        if param is None:
            raise ConfigError(
                f"{recipe.path}: unknown key '{name}.{raw_key}'{closest(key, set(known))} "
                f"(known: {', '.join(sorted(known)) or 'none'})",
                key=f"{name}.{raw_key}",
                path=recipe.path,
            )
        values[key] = _checked(ctx, param, value, where, recipe.path)
    return values


def _checked(ctx: typer.Context, param: Any, value: Any, where: str, path: Path | None) -> Any:
    """A recipe value as Click would take it from the command line, or a ConfigError."""
    from qcli.private import typer_option_type, typer_parse

    kind = typer_option_type(param)
    if not param.multiple and isinstance(value, list) and kind is str:
        value = ",".join(str(v) for v in value)  # a TOML list for a comma-separated option
    items = value if param.multiple and isinstance(value, list) else [value]
    expected = KINDS.get(kind, (str,))
    for item in items:
        if isinstance(item, bool) != (bool in expected) or not isinstance(item, expected):
            got = TOML_TYPES.get(type(item), type(item).__name__)
            wanted = " or ".join(TOML_TYPES.get(t, t.__name__) for t in expected)
            list_note = " list of" if param.multiple else ""
            raise ConfigError(
                f"{where} has the wrong type: expected{list_note} {wanted}, got {got} {item!r}", key=where, path=path
            )
    try:
        typer_parse(param, ctx, value)
    except typer.BadParameter as exc:
        reason = exc.message.removeprefix("Value error, ")  # typer's wording for a bad choice
        raise ConfigError(f"{where}: {reason}", key=where, path=path) from None
    return value


def label(ctx: typer.Context, name: str) -> str:
    """How a message names option ``name``: the recipe key it came from, else its flag."""
    param = next((p for p in ctx.command.params if p.name == name), None)
    if param is None:
        return name
    source = ctx.get_parameter_source(name)
    if source is not None and source.name == "DEFAULT_MAP":
        return f"'{ctx.info_name}.{name}' (from {recipe_of(ctx).path})"
    flags = [o for o in getattr(param, "opts", []) if o.startswith("--")]
    return flags[0] if flags else name.upper()


@contextlib.contextmanager
def flags_named(ctx: typer.Context) -> Iterator[None]:
    """Show the library's option errors with the flags (or recipe keys) the user typed."""
    try:
        yield
    except OptionError as exc:
        raise QcliError(exc.render(lambda name: label(ctx, name))) from None


def gated(run: Callable[[], T]) -> tuple[T, GateFailed | None]:
    """Run a command whose gate may fail after its report is complete: return the report and
    the failure, so the report is shown (and written) before the exit code 3."""
    try:
        return run(), None
    except GateFailed as exc:
        if exc.report is None:
            raise
        return exc.report, exc


def arch_spec(arch: str | None, arch_kwargs: str | None) -> ArchSpec | None:
    if arch is None:
        if arch_kwargs is not None:
            raise OptionError("{arch_kwargs} needs {arch}")
        return None
    return ArchSpec.parse(arch, arch_kwargs)


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """'1,16' → (1, 16); anything else is a usage error."""
    try:
        sizes = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"'{text}' is not a comma-separated list of integers, e.g. 1,16") from None
    if not sizes or any(s <= 0 for s in sizes):
        raise typer.BadParameter(f"'{text}' must list positive batch sizes, e.g. 1,16")
    return tuple(dict.fromkeys(sizes))


def parse_shapes(text: str) -> tuple[tuple[int, int], ...]:
    """'1x128,16x128' → ((1, 128), (16, 128)): ``--package-shapes``; anything else is a usage error."""
    out = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        dims = item.split("x")
        if len(dims) != 2 or not all(d.isdigit() and int(d) > 0 for d in dims):
            raise typer.BadParameter(f"--package-shapes '{item}' is not BATCHxLENGTH, e.g. 1x128,16x128")
        out.append((int(dims[0]), int(dims[1])))
    if not out:
        raise typer.BadParameter("--package-shapes lists no shapes, e.g. 1x128,16x128")
    return tuple(dict.fromkeys(out))
