"""The one error hierarchy of qcli.

Core code raises these; the CLI boundary (``qcli.cli.app.main``) turns each into one line on stderr
and an exit code. Every message says what happened and what to do about it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_GATE = 3
EXIT_INCONCLUSIVE = 4
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class QcliError(Exception):
    """Base class: a problem with the user's input or environment, reported without a traceback."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, *, path: Path | str | None = None) -> None:
        super().__init__(message)
        self.path = path


class InputNotFound(QcliError):
    """A path given by the user does not exist or is the wrong kind (file vs folder)."""


class UnknownFormat(QcliError):
    """A model file whose content is none of the formats qcli reads."""


class ModelLoadError(QcliError):
    """The file has a known format but could not be turned into a runnable model."""


class StateDictMismatch(ModelLoadError):
    """A state dict does not fit the architecture; carries the offending keys."""

    def __init__(
        self,
        message: str,
        *,
        missing: list[str],
        unexpected: list[str],
        shapes: list[str],
        path: Path | str | None = None,
    ) -> None:
        super().__init__(message, path=path)
        self.missing, self.unexpected, self.shapes = missing, unexpected, shapes


class ArchError(ModelLoadError):
    """``--arch`` does not import, is not callable, or raised while building the model."""


class DataError(QcliError):
    """A calibration or evaluation folder that cannot be read, or samples that do not fit."""


class ConfigError(QcliError):
    """A bad TOML file, an unknown key or a value of the wrong type; carries the key and file."""

    def __init__(self, message: str, *, key: str | None = None, path: Path | str | None = None) -> None:
        super().__init__(message, path=path)
        self.key = key


class StatsError(QcliError):
    """A statistics file that is not qcli's, or was computed for another model."""


class ArtifactError(QcliError):
    """An INT8 artifact that is broken, of another version, or built for another CPU."""


class OptionError(QcliError):
    """An option value that cannot work. The message names options as ``{name}`` (their Python
    names); ``str()`` shows ``name``, and the CLI shows the flag or the recipe key it came from."""

    def __init__(self, template: str, *, path: Path | str | None = None) -> None:
        self.template = template
        super().__init__(self.render(lambda name: name), path=path)

    def render(self, name_of: Callable[[str], str]) -> str:
        return re.sub(r"\{(\w+)\}", lambda m: name_of(m.group(1)), self.template)

    @property
    def options(self) -> list[str]:
        return re.findall(r"\{(\w+)\}", self.template)


class UntrustedModel(OptionError):
    """A file that would run code when loaded (a pickle importing more than tensors); loading it
    needs the user's explicit trust (``trust_model``)."""


class UnsupportedModel(QcliError):
    """The model loads but cannot be quantized by qcli (export fails, nothing to quantize, ...)."""


class OutputError(QcliError):
    """The output cannot be written: it exists (without ``--force``) or its folder is not writable."""


class GateFailed(QcliError):
    """A quality gate failed; the report and artifact were still written. Carries the report."""

    exit_code = EXIT_GATE

    def __init__(self, message: str, *, report: Any = None) -> None:
        super().__init__(message)
        self.report = report  # the command's report (a dataclass of qcli.reports)


class GateInconclusive(GateFailed):
    """A gate that the measurements could not decide (its interval straddles the threshold) and
    that the user did not settle with ``--inconclusive pass|fail``. Carries the report."""

    exit_code = EXIT_INCONCLUSIVE
