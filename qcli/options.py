"""What each command can be asked to do: frozen option objects, each default declared once.

The library takes these objects (``api.convert_model_file(..., options=ConvertOptions(...))``);
the CLI builds them from flags and recipes (``qcli.cli``), and ``--help`` shows the defaults
declared here. Each object checks its values when it is made and raises ``OptionError``, whose
message names options by their Python names (``max_trials``); the CLI shows the same message
with the flag (``--max-trials``) or the recipe key it came from.

No torch here: the CLI imports this module to declare its options, and ``qcli --help`` must stay
light.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qcli.errors import OptionError

MODES = ("static", "dynamic", "weight-only")
RANGE_METHODS = ("minmax", "percentile", "entropy", "mse")  # computed by qcli.ranges
DEFAULT_METHOD = "histogram"  # torch's HistogramObserver: its own least-L2 search over the histogram
AUTO_METHOD = "auto"
METHODS = (DEFAULT_METHOD, *RANGE_METHODS, AUTO_METHOD)
WEIGHTS = ("per-channel", "per-tensor")
FORMS = ("package", "program", "both")
PACKAGE_WEIGHTS = ("shared", "copies")
PREFER = ("accuracy", "speed")
DEFAULT_BATCH_SIZES = (1, 16)
INCONCLUSIVE = ("error", "pass", "fail")
# what --max-drop gates on (qcli.evaluate); "module:function" names the user's own
METRICS = ("top1", "top5", "agreement", "sqnr", "cosine", "spearman", "auc", "mae", "rmse")


def _positive(name: str, value: int | float | None, what: str = "positive") -> None:
    if value is not None and (isinstance(value, bool) or value <= 0):
        raise OptionError(f"{{{name}}} must be {what}, not {value:g}")


def _one_of(name: str, value: str, choices: tuple[str, ...], why: str = "") -> None:
    if value not in choices:
        raise OptionError(f"{{{name}}} must be one of {', '.join(choices)}, not '{value}'{why}")


def _sizes(name: str, sizes: tuple[int, ...]) -> None:
    if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in sizes):
        raise OptionError(f"{{{name}}} must list positive batch sizes, e.g. 1,16, not {list(sizes)}")


INPUT_DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "bool")


@dataclass(frozen=True)
class InputShape:
    """One model input given by shape instead of samples: ``input_ids:1x128:int64``."""

    name: str | None  # None: inputs in the model's order
    shape: tuple[int, ...]  # with the batch dimension first
    dtype: str = "float32"

    @classmethod
    def parse_all(cls, text: str) -> tuple[InputShape, ...]:
        """``NAME:1x128:int64,NAME2:1x128:int64`` or ``1x3x224x224`` (name and dtype optional)."""
        out = []
        for item in (part.strip() for part in text.split(",")):
            fields = item.split(":")
            shape_at = next((i for i, f in enumerate(fields) if f and all(d.isdigit() for d in f.split("x"))), None)
            if not item or shape_at is None or shape_at > 1 or len(fields) > shape_at + 2:
                raise OptionError(
                    f"{{input_shape}} '{item}' is not NAME:SHAPE[:DTYPE] or SHAPE[:DTYPE] "
                    "(e.g. input_ids:1x128:int64 or 1x3x224x224)"
                )
            name = fields[0] if shape_at == 1 else None
            dtype = fields[shape_at + 1] if len(fields) > shape_at + 1 else "float32"
            out.append(cls(name, tuple(int(d) for d in fields[shape_at].split("x")), dtype))
        return tuple(out)

    def __post_init__(self) -> None:
        if not self.shape or any(d <= 0 for d in self.shape):
            raise OptionError(f"{{input_shape}} dimensions must be positive, not {'x'.join(map(str, self.shape))}")
        _one_of("input_shape", self.dtype, INPUT_DTYPES)


@dataclass(frozen=True)
class CalibrationOptions:
    """How calibration samples are read: ``calibrate``, and ``convert`` with a calibration folder.

    Example:
        >>> CalibrationOptions(limit=256, seed=0).batch_size
        32
    """

    limit: int | None = None  # samples at most (None: the whole folder)
    seed: int | None = None  # shuffle the files with this seed (None: sorted by path)
    batch_size: int = 32
    mode: str = "static"

    def __post_init__(self) -> None:
        _positive("limit", self.limit, "a positive number of samples")
        _positive("batch_size", self.batch_size)
        _one_of("mode", self.mode, MODES)


@dataclass(frozen=True)
class JudgeOptions:
    """Which output of the model labels apply to, and the metric ``--max-drop`` gates on and the
    search optimises (``qcli.evaluate``). ``None`` chooses: top-1 on a labeled folder and a model
    with one ``[B, C]`` output (or the ``[B, C]`` output named); Spearman with a ``pairs.csv``;
    MAE with a ``targets.csv``; otherwise the SQNR of every output (the worst counts).

    Example:
        >>> JudgeOptions(output_name="2", metric="auc").metric
        'auc'
    """

    output_name: str | None = None  # an output's name ("logits", "1.boxes") or index ("0")
    metric: str | None = None  # one of METRICS, or "module:function"

    def __post_init__(self) -> None:
        if self.metric is not None and self.metric not in METRICS and not _callable_name(self.metric):
            raise OptionError(f"{{metric}} must be one of {', '.join(METRICS)} or module:function, not '{self.metric}'")
        if self.output_name is not None and not str(self.output_name).strip():
            raise OptionError("{output_name} must name an output or give its index, not an empty text")


def _callable_name(text: str) -> bool:
    module, _, name = text.partition(":")
    parts = module.split(".")
    return bool(name) and all(p.isidentifier() for p in parts) and all(p.isidentifier() for p in name.split("."))


@dataclass(frozen=True)
class SearchOptions:
    """The FP32 fall-back search of ``convert``: layers go back to FP32, worst first, until the
    accuracy drop on ``eval_dir`` is within ``max_drop`` points (see ``qcli.search``).

    Example:
        >>> SearchOptions(max_drop=0.5, eval_dir=Path("eval")).max_trials
        20
    """

    max_drop: float
    eval_dir: Path
    eval_limit: int | None = None  # evaluate at most this many samples per trial
    max_trials: int = 20
    timeout: float | None = None  # seconds
    judge: JudgeOptions = field(default_factory=JudgeOptions)

    def __post_init__(self) -> None:
        if isinstance(self.max_drop, bool) or self.max_drop < 0:
            raise OptionError(f"{{max_drop}} must be at least 0 points, not {self.max_drop:g}")
        _positive("eval_limit", self.eval_limit, "a positive number of samples")
        if isinstance(self.max_trials, bool) or self.max_trials < 1:
            raise OptionError(f"{{max_trials}} must be at least 1, not {self.max_trials}")
        if self.timeout is not None and self.timeout < 0:
            raise OptionError(f"{{timeout}} must be 0 or more seconds, not {self.timeout:g}")
        object.__setattr__(self, "eval_dir", Path(self.eval_dir))


@dataclass(frozen=True)
class ConvertOptions:
    """How ``convert`` quantizes and what it writes.

    Example:
        >>> ConvertOptions(method="entropy", exclude=("stem.*",)).weights
        'per-channel'
    """

    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    method: str = DEFAULT_METHOD  # activation ranges from the histograms (qcli.ranges)
    percentile: float = 99.99  # with method="percentile"
    exclude: tuple[str, ...] = ()  # module-name globs kept in FP32
    bias_correction: bool = False
    weights: str = "per-channel"
    form: str = "package"
    package_batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    # a sequence model's package: (batch size, length) of each compiled model; () gives every
    # package batch size at the longest calibration length
    package_shapes: tuple[tuple[int, int], ...] = ()
    # "shared": a package's models use the default model's weights where their packed weights are
    # identical (one copy); "copies": each model carries its own, as torch's load_package needs
    package_weights: str = "shared"
    threads: int | None = None  # torch threads while compiling the package
    # "speed": per package shape, layers measured faster in FP32 than in INT8 stay FP32 (qcli.speed)
    prefer: str = "accuracy"
    search: SearchOptions | None = None
    input_shape: tuple[InputShape, ...] = ()  # dynamic/weight-only without samples: the inputs' shapes

    def __post_init__(self) -> None:
        _one_of("method", self.method, METHODS)
        if isinstance(self.percentile, bool) or not 50 < self.percentile <= 100:
            raise OptionError(f"{{percentile}} must be in (50, 100], not {self.percentile:g}")
        if isinstance(self.exclude, str) or not all(isinstance(p, str) for p in self.exclude):
            raise OptionError(f"{{exclude}} must be a list of module-name patterns, not {self.exclude!r}")
        _one_of(
            "weights",
            self.weights,
            WEIGHTS,
            "; asymmetric INT8 weights are rejected by the X86 quantizer, whose kernels take symmetric weights",
        )
        _one_of("form", self.form, FORMS)
        _one_of("package_weights", self.package_weights, PACKAGE_WEIGHTS)
        _one_of("prefer", self.prefer, PREFER)
        if self.prefer == "speed" and self.form == "program":
            raise OptionError("{prefer} speed chooses per compiled batch size: it needs {form} package or both")
        if self.prefer == "speed" and self.calibration.mode != "static":
            raise OptionError(
                f"{{prefer}} speed chooses between INT8 and FP32 kernels in static mode, not {self.calibration.mode}"
            )
        _sizes("package_batch_sizes", self.package_batch_sizes)
        _positive("threads", self.threads)
        shapes = tuple(dict.fromkeys(tuple(shape) for shape in self.package_shapes))
        if not all(
            len(s) == 2 and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in s) for s in shapes
        ):
            raise OptionError(f"{{package_shapes}} must list batch x length pairs, e.g. 1x128,16x128, not {shapes!r}")
        object.__setattr__(self, "package_shapes", shapes)
        if shapes and self.form == "program":
            raise OptionError("{package_shapes} shapes a package; {form} program runs any shape")
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "package_batch_sizes", tuple(dict.fromkeys(self.package_batch_sizes)))

    @property
    def mode(self) -> str:
        return self.calibration.mode


@dataclass(frozen=True)
class BenchOptions:
    """How ``bench`` measures, and the gates it applies.

    Example:
        >>> BenchOptions(batch_sizes=(1, 8), min_speedup=1.5).runs
        20
    """

    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    threads: int | None = None
    warmup: int = 3  # untimed calls per variant first
    runs: int = 20  # timed calls per variant and batch size
    eval_limit: int | None = None
    max_drop: float | None = None  # gate: points of the metric lost (see JudgeOptions)
    min_speedup: float | None = None  # gate: INT8 vs FP32 compiled, every batch size
    baseline: Path | None = None  # an earlier report to compare with
    latency_tolerance: float = 0.10  # with baseline: a fraction
    accuracy_tolerance: float = 0.5  # with baseline: points
    precision: float = 0.05  # measure until each INT8/FP32 ratio is known to +-5% (95% interval)
    time_budget: float | None = None  # seconds per batch size (None: 30 rounds' worth, 10-120 s)
    inconclusive: str = "error"  # what an undecided gate counts as: error (exit 4), pass or fail
    judge: JudgeOptions = field(default_factory=JudgeOptions)  # output and metric of the accuracy gate

    def __post_init__(self) -> None:
        _sizes("batch_sizes", self.batch_sizes)
        _positive("threads", self.threads)
        if isinstance(self.warmup, bool) or self.warmup < 0:
            raise OptionError(f"{{warmup}} must be 0 or more calls, not {self.warmup}")
        _positive("runs", self.runs, "at least 1")
        _positive("eval_limit", self.eval_limit, "a positive number of samples")
        if self.max_drop is not None and self.max_drop < 0:
            raise OptionError(f"{{max_drop}} must be at least 0 points, not {self.max_drop:g}")
        _positive("min_speedup", self.min_speedup)
        if not 0 <= self.latency_tolerance < 10:
            raise OptionError(f"{{latency_tolerance}} is a fraction (0.1 = 10%), not {self.latency_tolerance:g}")
        if not 0 <= self.accuracy_tolerance <= 100:
            raise OptionError(f"{{accuracy_tolerance}} is in points (0-100), not {self.accuracy_tolerance:g}")
        if not 0 < self.precision < 1:
            raise OptionError(f"{{precision}} is a fraction in (0, 1) (0.05 = +-5%), not {self.precision:g}")
        _positive("time_budget", self.time_budget, "a positive number of seconds")
        _one_of("inconclusive", self.inconclusive, INCONCLUSIVE)
        object.__setattr__(self, "batch_sizes", tuple(dict.fromkeys(self.batch_sizes)))
        if self.baseline is not None:
            object.__setattr__(self, "baseline", Path(self.baseline))
