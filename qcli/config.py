"""Configuration: frozen dataclasses that check themselves, read from TOML recipes in ``configs/``.

A recipe has a ``[preprocess]`` section (how image and text files become tensors) and one section per command
(``[calibrate]``, ``[convert]``, ``[bench]``) whose keys are that command's option names
(``batch_size`` or ``batch-size``), checked against the command's own options by the CLI.
Explicit command-line flags win over the file.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from qcli.errors import ConfigError

CHANNELS = ("auto", "grayscale", "rgb")
CHANNEL_COUNTS = {1: "grayscale", 3: "rgb"}  # channels = 1 or 3 mean the same
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
COMMAND_SECTIONS = ("calibrate", "convert", "bench", "inspect")


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image file becomes a CHW float tensor.

    Pixels are scaled to [0, 1]; ``resize`` scales the shorter side to that many pixels with
    ``interpolation`` (bilinear, bicubic as EfficientNet-family evaluations use, or nearest);
    ``center_crop`` then cuts a square of that size; ``mean``/``std`` normalise per channel (one value
    applies to every channel). ``channels="auto"`` follows the model's first convolution (1 input
    channel → grayscale, otherwise RGB); 1 and 3 are read as grayscale and rgb.
    """

    channels: str = "auto"
    resize: int | None = None
    interpolation: str = "bilinear"
    center_crop: int | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    tokenizer: str | None = None
    max_length: int | None = None
    lengths: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.channels, int) and not isinstance(self.channels, bool) and self.channels in CHANNEL_COUNTS:
            object.__setattr__(self, "channels", CHANNEL_COUNTS[self.channels])
        if self.channels not in CHANNELS:
            raise ConfigError(
                f"preprocess.channels must be one of {', '.join(CHANNELS)} (or 1, 3), not {self.channels!r}",
                key="channels",
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"preprocess.interpolation must be one of {', '.join(INTERPOLATIONS)}, not {self.interpolation!r}",
                key="interpolation",
            )
        for key in ("resize", "center_crop"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ConfigError(f"preprocess.{key} must be a positive integer, not {value!r}", key=key)
        for key in ("mean", "std"):
            value = getattr(self, key)
            if not value or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise ConfigError(f"preprocess.{key} must be a number or a list of numbers, not {value!r}", key=key)
        self._check_text()
        if any(v <= 0 for v in self.std):
            raise ConfigError("preprocess.std values must be positive", key="std")
        if len(self.mean) != len(self.std) and 1 not in (len(self.mean), len(self.std)):
            raise ConfigError("preprocess.mean and preprocess.std must have the same length", key="mean")

    def _check_text(self) -> None:
        if self.tokenizer is not None and not isinstance(self.tokenizer, str):
            raise ConfigError(f"preprocess.tokenizer must be a folder path, not {self.tokenizer!r}", key="tokenizer")
        if self.max_length is not None and not _positive_int(self.max_length):
            raise ConfigError(
                f"preprocess.max_length must be a positive integer, not {self.max_length!r}", key="max_length"
            )
        if self.lengths is not None:
            if not self.lengths or not all(_positive_int(v) for v in self.lengths):
                raise ConfigError(
                    f"preprocess.lengths must be a list of positive integers, not {list(self.lengths)!r}", key="lengths"
                )
            object.__setattr__(self, "lengths", tuple(sorted(set(self.lengths))))
            if self.max_length is not None and self.lengths[-1] < self.max_length:
                raise ConfigError(
                    f"preprocess.lengths must reach max_length {self.max_length} (the longest is {self.lengths[-1]})",
                    key="lengths",
                )

    @property
    def images_default(self) -> bool:
        """No image setting differs from the defaults (text settings may)."""
        return replace(self, tokenizer=None, max_length=None, lengths=None) == PreprocessConfig()

    @classmethod
    def from_mapping(cls, data: dict[str, Any], source: str = "config") -> PreprocessConfig:
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for raw_key, value in data.items():
            key = raw_key.replace("-", "_")
            if key not in known:
                raise ConfigError(
                    f"{source}: unknown key 'preprocess.{raw_key}'{closest(key, known)} (known: {', '.join(sorted(known))})",
                    key=raw_key,
                )
            if key in ("mean", "std"):
                value = tuple(value) if isinstance(value, list) else (value,)
            if key == "lengths":
                value = tuple(value) if isinstance(value, list) else (value,)
            values[key] = value
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}", key=exc.key) from None

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class Recipe:
    """A parsed TOML recipe: preprocessing, plus each command's section as written.

    The command sections are option values for the CLI, which checks their keys and types against
    the command's own options (``qcli.cli.common.recipe_defaults``) and uses them as defaults
    that flags override.
    """

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: Path | None = None


TOML_TYPES = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true/false",
    list: "a list",
    dict: "a table",
}


def closest(word: str, known: list[str] | set[str]) -> str:
    """`` (did you mean X?)`` for a near-miss of a known name, else nothing."""
    import difflib

    match = difflib.get_close_matches(word, sorted(known), n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""


def load_recipe(path: Path | None) -> Recipe:
    """Read and check a TOML recipe; ``None`` gives the defaults."""
    if path is None:
        return Recipe()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' does not exist", path=path) from None
    except IsADirectoryError:
        raise ConfigError(f"config '{path}' is a folder; pass a .toml file", path=path) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file '{path}' is not valid TOML: {exc}", path=path) from None
    source = str(path)
    unknown = sorted(set(data) - {"preprocess", *COMMAND_SECTIONS})
    if unknown:
        raise ConfigError(
            f"{source}: unknown section '[{unknown[0]}]'{closest(unknown[0], {'preprocess', *COMMAND_SECTIONS})} "
            f"(known: preprocess, {', '.join(COMMAND_SECTIONS)})",
            key=unknown[0],
            path=path,
        )
    sections: dict[str, dict[str, Any]] = {}
    for name in COMMAND_SECTIONS:
        raw = data.get(name, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: '{name}' must be a [section]", key=name, path=path)
        sections[name] = dict(raw)
    raw_pre = data.get("preprocess", {})
    if not isinstance(raw_pre, dict):
        raise ConfigError(f"{source}: 'preprocess' must be a [section]", key="preprocess", path=path)
    try:
        preprocess = PreprocessConfig.from_mapping(raw_pre, source)
    except ConfigError as exc:
        raise ConfigError(str(exc), key=exc.key, path=path) from None
    return Recipe(preprocess, sections, path)


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {type(value).__name__} {value!r} to a TOML recipe")


def to_toml(config: dict[str, Any], header: str = "") -> str:
    """A recipe that ``load_recipe`` reads back: the ``preprocess`` and command sections of an
    effective configuration; keys whose value is None (the default) are left out."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for section in ("preprocess", *COMMAND_SECTIONS):
        values = {k: v for k, v in (config.get(section) or {}).items() if v is not None}
        if not values:
            continue
        lines += ["", f"[{section}]"] + [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines).lstrip("\n") + "\n"
