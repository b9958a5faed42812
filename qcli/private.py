"""Every private torch, torchao and typer surface qcli relies on, in one place.

Each is a leading-underscore API that a torch, torchao or typer release may move or change. qcli
reaches them only through this module, and ``tests/test_private.py`` calls ``check()``, which
names each one that is missing, so an upgrade fails loudly in CI instead of somewhere deep in a
command. Where a public fallback exists, the function says so and uses it.

Nothing is imported at module level: the CLI imports this module and must not import torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any


def aoti_runner_class() -> Any | None:
    """``torch._C._aoti.AOTIModelContainerRunnerCpu``: runs one compiled model of a package (0.07 s
    to the first result against 4 s for ``load_package``). ``None`` on a torch without it; the
    caller then uses the public ``load_package``."""
    import torch

    return getattr(getattr(torch._C, "_aoti", None), "AOTIModelContainerRunnerCpu", None)


def load_package(path: str, name: str) -> Any:
    """``torch._inductor.package.load_package``: the documented way to load an AOTInductor package."""
    from torch._inductor import package

    return package.load_package(path, name)  # type: ignore[attr-defined]  # not in its __all__


def aot_compile(module: Any, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
    """``torch._inductor.aot_compile``: compile one model of a package. Under ``max_autotune``
    Inductor writes a table of its kernel timings to stderr (``select_algorithm.PRINT_AUTOTUNE``);
    it is turned off meanwhile."""
    import torch._inductor
    from torch._inductor import select_algorithm

    printing = select_algorithm.PRINT_AUTOTUNE
    select_algorithm.PRINT_AUTOTUNE = False
    try:
        return torch._inductor.aot_compile(module, args, options=options)
    finally:
        select_algorithm.PRINT_AUTOTUNE = printing


def package_aoti(path: str, files: dict[str, Any]) -> None:
    """``torch._inductor.package.package_aoti``: put compiled models into one ``.pt2`` package."""
    from torch._inductor import package

    package.package_aoti(path, files)  # type: ignore[attr-defined]  # not in its __all__


@contextlib.contextmanager
def captured_aot_constants() -> Iterator[dict[str, Any]]:
    """While open, each AOT compile records its constants in the yielded dict: ``constants``
    (internal name -> tensor, oneDNN-packed weights included, runtime-folded ones excluded) and
    ``fqns`` (internal name -> the original name the runner reports).

    Wraps ``torch._inductor.codecache.AotCodeCompiler.compile``, which receives the lowered graph.
    Its own ``pickle_weights`` export of these tensors fails on oneDNN-packed weights
    (``Cannot access storage of OpaqueTensorImpl``).
    """
    from torch._inductor import codecache

    compiler = codecache.AotCodeCompiler
    original = compiler.__dict__["compile"]
    record: dict[str, Any] = {}

    def compile(cls: Any, graph: Any, *args: Any, **kwargs: Any) -> Any:
        names = [n for n in graph.constants if n not in graph.folded_constants]
        record["constants"] = {n: graph.constants[n] for n in names}
        record["fqns"] = {n: graph.allocated_constant_name.get(n, n) for n in names}
        return original.__func__(cls, graph, *args, **kwargs)

    compiler.compile = classmethod(compile)  # type: ignore[method-assign,assignment]
    try:
        yield record
    finally:
        compiler.compile = original  # type: ignore[method-assign]


def guard_inplace_fusions() -> None:
    """Stop Inductor's oneDNN fusions from adding a linear's or convolution's result into a graph
    input in place (torch 2.13; idempotent, for the rest of the process).

    ``linear -> add(x)`` becomes one oneDNN call with a ``sum`` post-op that writes into ``x``
    when ``_qlinear_binary_can_be_inplace(x)`` (``_can_be_inplace`` for convolutions and FP32
    linears) says so; they check that ``x`` is no view, not that it is no graph input (torch's
    own TODO: "Ensure sum is safe"). The clone qcli puts first (``graph.protect_inputs``) does not
    help: Inductor's ``remove_noop_ops`` drops a clone whose metadata equals its source. A
    residual model on ``[batch, tokens, features]`` inputs overwrote the caller's tensor (by up to
    0.83), and a second call on it computed garbage. Refused here, the fusion adds out of place.
    """
    from torch._inductor.fx_passes import mkldnn_fusion
    from torch._inductor.virtualized import V

    for name in ("_can_be_inplace", "_qlinear_binary_can_be_inplace"):
        original = getattr(mkldnn_fusion, name, None)
        if original is None or getattr(original, "qcli_guarded", False):
            continue

        def guarded(other: Any, original: Any = original) -> bool:
            try:
                if other.get_name() in V.graph.graph_inputs:
                    return False
            except (AttributeError, NotImplementedError):  # no name, or no graph being lowered
                pass
            return bool(original(other))

        guarded.qcli_guarded = True  # type: ignore[attr-defined]
        setattr(mkldnn_fusion, name, guarded)


def mkldnn_bytes(t: Any) -> bytes:
    """The bytes of a oneDNN-packed tensor (``torch.ops.mkldnn.data_ptr``/``_nbytes``)."""
    import ctypes

    import torch

    return ctypes.string_at(torch.ops.mkldnn.data_ptr(t), torch.ops.mkldnn._nbytes(t))


def inductor_config() -> Any:
    """``torch._inductor.config`` (``freezing`` is what gives INT8 speed)."""
    import torch._inductor.config as config

    return config


def mkldnn_layout() -> Any:
    """``torch._mkldnn``: the layout of oneDNN pre-packed weights (missing from torch's stubs)."""
    import torch

    return torch._mkldnn  # type: ignore[attr-defined]


def ts2ep_converter() -> Any:
    """``torch._export.converter.TS2EPConverter``: TorchScript to an exported program."""
    from torch._export.converter import TS2EPConverter

    return TS2EPConverter


def assert_tensor_metadata_op() -> Any:
    """``aten._assert_tensor_metadata.default``: the checks torch.export puts after dtype casts."""
    import torch

    return torch.ops.aten._assert_tensor_metadata.default


def int_mm(a: Any, b: Any) -> Any:
    """``torch._int_mm``: INT8 x INT8 -> INT32 matmul (Inductor turns it into a oneDNN INT8 linear)."""
    import torch

    return torch._int_mm(a, b)


def fix_observer_range(observer: Any, lo: float, hi: float) -> None:
    """Make a torchao observer report the range [lo, hi] instead of its own: its private
    ``_calculate_qparams(min, max)`` is what its public ``calculate_qparams()`` calls."""
    import functools

    import torch

    observer.calculate_qparams = functools.partial(observer._calculate_qparams, torch.tensor(lo), torch.tensor(hi))


def click_errors() -> tuple[Any, Any]:
    """``NoArgsIsHelpError`` and ``UsageError`` of the Click that typer vendors (``typer._click``):
    typer re-exports ``BadParameter`` and ``Exit`` but not these two."""
    from typer._click.exceptions import NoArgsIsHelpError, UsageError

    return NoArgsIsHelpError, UsageError


def typer_option_type(param: Any) -> Any:
    """The Python type of a Typer option (``int``, ``str``, an Enum; the item type of a list):
    typer 0.26+ keeps it in ``type_descriptor`` rather than Click's ``param.type``."""
    import typing

    annotation = param.type_descriptor.annotation
    args = typing.get_args(annotation)
    return args[0] if param.multiple and args else annotation


def typer_parse(param: Any, ctx: Any, value: Any) -> Any:
    """Convert ``value`` as Typer would convert the option's command-line text (raises
    ``typer.BadParameter``): ``get_runtime_param().coerce`` of typer 0.26+."""
    return param.get_runtime_param().coerce(value, param=param, ctx=ctx)


def _typer_option() -> Any:
    from typer.core import TyperOption

    return TyperOption


def _has(owner: Callable[[], Any], *attrs: str) -> Callable[[], None]:
    def probe() -> None:
        obj = owner()
        if obj is None:
            raise AttributeError("not present")
        for attr in attrs:
            if not hasattr(obj, attr):
                raise AttributeError(f"{type(obj).__name__} has no '{attr}'")

    return probe


def _mkldnn_fusion() -> Any:
    from torch._inductor.fx_passes import mkldnn_fusion

    return mkldnn_fusion


def _select_algorithm() -> Any:
    from torch._inductor import select_algorithm

    return select_algorithm


def _aot_code_compiler() -> Any:
    from torch._inductor import codecache

    return codecache.AotCodeCompiler


def _observer_base() -> Any:
    from torchao.quantization.pt2e.observer import HistogramObserver

    return HistogramObserver


# name -> a probe that raises when the surface is gone or has changed shape
SURFACES: dict[str, Callable[[], Any]] = {
    "torch._C._aoti.AOTIModelContainerRunnerCpu": _has(
        aoti_runner_class,
        "run",
        "get_constant_names_to_original_fqns",
        "extract_constants_map",
        "update_constant_buffer",
    ),
    "torch._inductor.package.load_package": lambda: (
        __import__("torch._inductor.package", fromlist=["load_package"]).load_package
    ),
    "torch._inductor.aot_compile": lambda: __import__("torch._inductor", fromlist=["aot_compile"]).aot_compile,
    "torch._inductor.package.package_aoti": lambda: (
        __import__("torch._inductor.package", fromlist=["package_aoti"]).package_aoti
    ),
    "torch._inductor.config.freezing": _has(inductor_config, "freezing"),
    "torch._inductor.config.max_autotune, its gemm backends and choices stats": _has(
        inductor_config, "max_autotune", "max_autotune_gemm_backends", "max_autotune_report_choices_stats"
    ),
    "torch._inductor.select_algorithm.PRINT_AUTOTUNE": _has(_select_algorithm, "PRINT_AUTOTUNE"),
    "torch._inductor.codecache.AotCodeCompiler.compile": _has(_aot_code_compiler, "compile"),
    "torch._inductor.fx_passes.mkldnn_fusion._qlinear_binary_can_be_inplace": _has(
        _mkldnn_fusion, "_can_be_inplace", "_qlinear_binary_can_be_inplace"
    ),
    "torch.ops.mkldnn.data_ptr / _nbytes": lambda: __import__("torch").ops.mkldnn._nbytes,
    "torch._mkldnn": mkldnn_layout,
    "torch._export.converter.TS2EPConverter": _has(ts2ep_converter, "convert"),
    "torch.ops.aten._assert_tensor_metadata": assert_tensor_metadata_op,
    "torch._int_mm": lambda: __import__("torch")._int_mm,
    "torchao observer._calculate_qparams": _has(_observer_base, "_calculate_qparams"),
    "typer._click.exceptions": click_errors,
    "typer.core.TyperOption.type_descriptor / get_runtime_param": _has(_typer_option, "get_runtime_param"),
}


def check() -> list[str]:
    """Names of the private surfaces that are missing or changed, each with the reason."""
    broken = []
    for name, probe in SURFACES.items():
        try:
            probe()
        except Exception as exc:  # any failure means the surface cannot be relied on
            broken.append(f"{name}: {type(exc).__name__}: {exc}")
    return broken
