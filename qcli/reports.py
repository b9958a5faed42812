"""What each command returns: typed reports, one dataclass per command.

``to_dict()`` gives the JSON document (``--format json``, ``-o``), which follows
``qcli/schemas/report-v1.schema.json`` (``tests/test_ux.py`` checks the fields of these classes
against it); ``from_dict()`` reads one back (``bench --baseline``, the HTML report of a saved
run). The tables of every format are built from these objects by ``qcli.tables``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from qcli.bench import BatchTiming
from qcli.convert import LayerQuant
from qcli.evaluate import Accuracy

SCHEMA_VERSION = 1
T = TypeVar("T")


def plain(value: Any) -> Any:
    """A JSON-ready copy: dataclasses as dicts (their own ``to_dict`` when they have one), paths as
    text, non-finite floats (the SQNR of identical outputs) as None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        to_dict = getattr(value, "to_dict", None)
        if to_dict is not None and not isinstance(value, Report):
            return plain(to_dict())
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def from_plain(cls: type[T], data: Any) -> T:
    """The dataclass ``cls`` from its JSON form; unknown keys (computed figures) are ignored."""
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__} must be a JSON object, not {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    values = {f.name: _value(hints[f.name], data[f.name]) for f in dataclasses.fields(cls) if f.name in data}  # type: ignore[arg-type]
    return cls(**values)


def _value(hint: Any, value: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None:
        return None
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        return _value(inner[0], value) if len(inner) == 1 else value
    if origin is list:
        return [_value(args[0], v) for v in value]
    if origin is tuple:
        return tuple(_value(args[0], v) for v in value)
    if origin is dict:
        return {k: _value(args[1], v) for k, v in value.items()}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        reader = getattr(hint, "from_dict", None)
        return reader(value) if reader is not None else from_plain(hint, value)
    if hint is float and isinstance(value, int):
        return float(value)
    return value


@dataclass(frozen=True)
class ModelInfo:
    """The FP32 model a command read."""

    path: str
    format: str
    sha256: str
    size_bytes: int
    parameters: int

    @classmethod
    def of(cls, path: Path, loaded: Any) -> ModelInfo:  # loaded: qcli.load.LoadedModel
        return cls(str(path), loaded.format, loaded.sha256, loaded.size_bytes, loaded.num_parameters)


@dataclass(frozen=True)
class WrittenFile:
    path: str
    size_bytes: int

    @classmethod
    def of(cls, path: Path | str) -> WrittenFile:
        return cls(str(path), Path(path).stat().st_size)


class Report:
    """Base of the command reports: ``schema_version`` and ``command`` lead every document."""

    command: ClassVar[str]
    kind: ClassVar[str | None] = None  # inspect: "model" or "artifact"

    def to_dict(self) -> dict[str, Any]:
        head: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "command": self.command}
        if self.kind is not None:
            head["kind"] = self.kind
        return {**head, **plain_fields(self)}

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        return from_plain(cls, data)


def plain_fields(obj: Any) -> dict[str, Any]:
    return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


@dataclass(frozen=True)
class StatsFile:
    path: str
    size_bytes: int
    observers: int  # observed tensors (0 in dynamic and weight-only modes)


@dataclass
class CalibrateReport(Report):
    command: ClassVar[str] = "calibrate"
    model: ModelInfo
    stats: StatsFile
    samples: int
    mode: str


@dataclass
class ConvertReport(Report):
    command: ClassVar[str] = "convert"
    model: ModelInfo
    outputs: dict[str, WrittenFile]  # form -> file
    mode: str
    quantized_layers: int
    layers: list[LayerQuant]
    calibration_samples: int | None
    config: dict[str, Any]  # the effective configuration, in the shape of a recipe
    per_layer: list[dict[str, Any]] | None  # qcli.layers rows, worst first
    suggested_exclude: list[str]
    search: dict[str, Any] | None  # qcli.search.SearchResult.to_dict
    bias_correction: list[dict[str, Any]] | None
    speed: list[dict[str, Any]] | None = None  # --prefer speed: qcli.speed.ShapeChoice.to_dict per shape
    saved_config: str | None = None
    warnings: list[str] = field(default_factory=list)  # what looked wrong (the search's evaluation)


@dataclass(frozen=True)
class ArtifactInfo:
    path: str
    form: str
    mode: str | None
    size_bytes: int


@dataclass(frozen=True)
class Environment:
    """Where a benchmark ran: what decides its timings."""

    threads: int
    torch_version: str
    torchao_version: str | None
    qcli_version: str
    python: str
    cpu_capability: str
    cpu_features: list[str]
    machine: str


@dataclass
class Gates:
    """Three-valued: a gate passes, fails, or cannot be decided from the measurements (its
    interval straddles the threshold); ``on_inconclusive`` says what an undecided run counts as."""

    max_drop: float | None
    min_speedup: float | None
    passed: bool = True
    failures: list[str] = field(default_factory=list)
    inconclusive: list[str] = field(default_factory=list)
    verdict: str = "pass"  # pass, fail or inconclusive
    on_inconclusive: str = "error"  # error (exit 4), pass or fail

    def fail(self, reasons: list[str], undecided: list[str] | None = None) -> None:
        self.failures += reasons
        self.inconclusive += undecided or []
        self.verdict = "fail" if self.failures else "inconclusive" if self.inconclusive else "pass"
        self.passed = self.verdict == "pass" or (self.verdict == "inconclusive" and self.on_inconclusive == "pass")


@dataclass(frozen=True)
class Comparison:
    """One figure of ``--baseline``: its value then and now, the change and the verdict."""

    figure: str
    baseline: float
    current: float
    change: float  # a fraction (unit "%") or points
    unit: str
    regressed: bool
    verdict: str = "pass"  # pass, fail (regressed) or inconclusive (the interval straddles the tolerance)


@dataclass(frozen=True)
class BaselineReport:
    path: str
    latency_tolerance: float
    accuracy_tolerance: float
    comparisons: list[Comparison]


@dataclass(frozen=True)
class Resources:
    """What loading and first use cost, besides the latency: seconds and resident memory (MiB)
    added while each form loaded, the first call after loading, and the run's peak memory."""

    fp32_model_load_seconds: float | None
    fp32_model_rss_mib: float | None
    fp32_compiled_load_seconds: float
    fp32_compiled_rss_mib: float | None
    int8_load_seconds: float
    int8_rss_mib: float | None
    fp32_compiled_first_call_ms: float
    int8_first_call_ms: float
    peak_rss_mib: float | None = None

    @classmethod
    def of(
        cls,
        fp32: tuple[float, float] | None,
        compiled: tuple[float, float],
        int8: tuple[float, float],
        compiled_first_ms: float,
        int8_first_ms: float,
    ) -> Resources:
        def mib(value: float) -> float | None:
            return None if math.isnan(value) else round(value, 1)

        return cls(
            round(fp32[0], 4) if fp32 else None,
            mib(fp32[1]) if fp32 else None,
            round(compiled[0], 4),
            mib(compiled[1]),
            round(int8[0], 4),
            mib(int8[1]),
            round(compiled_first_ms, 3),
            round(int8_first_ms, 3),
        )

    def with_peak(self, peak: float) -> Resources:
        return dataclasses.replace(self, peak_rss_mib=round(peak, 1))


@dataclass
class BenchReport(Report):
    command: ClassVar[str] = "bench"
    model: ModelInfo
    artifact: ArtifactInfo
    fp32_compiled_size_bytes: int | None
    environment: Environment
    latency: list[BatchTiming]
    accuracy: Accuracy | None
    gates: Gates
    per_layer: list[dict[str, Any]] | None = None
    suggested_exclude: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    baseline: BaselineReport | None = None
    report_html: str | None = None
    resources: Resources | None = None
    # how FP32 was compiled for the comparison: "package" (AOTInductor, like a package artifact) or
    # "program" (torch.compile on first call, like a program artifact)
    fp32_compiled_form: str | None = None


@dataclass(frozen=True)
class CpuInfo:
    """What this CPU offers INT8 (``qcli.hardware.explain``)."""

    capability: str
    features: list[str]
    avx2: bool
    avx512: bool
    vnni: bool
    amx: bool
    int8_dot_product: list[str]
    quantized_engine: str
    warning: str | None


@dataclass(frozen=True)
class ModelInput:
    name: str
    rank: int | None  # None: not known from the model (no convolution in front)
    channels: int | None = None  # the first convolution's input channels


@dataclass(frozen=True)
class ModelLayer:
    name: str
    type: str
    folded: bool  # a batch norm, folded into the convolution before it when quantizing
    weight_shape: list[int] | None
    parameters: int
    quantized_static: bool
    quantized_dynamic: bool


@dataclass
class InspectModelReport(Report):
    command: ClassVar[str] = "inspect"
    kind: ClassVar[str] = "model"
    path: str
    format: str
    size_bytes: int
    sha256: str
    parameters: int
    inputs: list[ModelInput]
    layers: list[ModelLayer]
    quantizable_layers: int
    quantizable: bool
    notes: list[str]
    cpu: CpuInfo


@dataclass
class InspectArtifactReport(Report):
    command: ClassVar[str] = "inspect"
    kind: ClassVar[str] = "artifact"
    path: str
    format: str
    format_version: int
    form: str
    size_bytes: int
    sha256: str
    graph_sha256: str | None
    mode: str | None
    method: str | None
    written_by: dict[str, str | None]
    source: dict[str, Any] | None
    inputs: list[dict[str, Any]] | None
    outputs: list[dict[str, Any]] | None
    config: dict[str, Any] | None
    calibration: dict[str, Any]  # samples, files, root, stats_sha256
    compiled_for: dict[str, Any] | None  # packages: the ISA and capability they were compiled for
    layers: list[LayerQuant]
    quantized_layers: int
    per_layer: list[dict[str, Any]] | None
    suggested_exclude: list[str]
    cpu: CpuInfo
