"""``convert --prefer speed``: per compiled shape, the layers that run faster in FP32 stay FP32.

At batch 1 a small INT8 layer can cost more than its FP32 twin: torch's INT8 kernels set up a
oneDNN primitive and read their scales on every call (about 30 µs), which the arithmetic of a
10-output linear layer never repays (the demo's DigitNet at batch 1: its classifier takes 36 µs
in INT8, 5 µs in FP32). For each shape the package is compiled for:

1. the all-INT8 graph and the FP32 graph are compiled by ``torch.compile`` (Inductor, frozen
   weights, that static shape) and run under torch's profiler; each conv/linear layer's kernel
   time is read from it (``kernel_times``: the kernels are matched to layers by their input and
   weight shapes, in call order);
2. the modules whose FP32 kernels are faster by more than ``MARGIN`` are the candidates;
3. the graph with the candidates in FP32 (the same statistics, ``Rebuild``) and the all-INT8
   graph are compiled as package models (``packaged``: AOTInductor, what the package will run)
   and timed against each other, interleaved; the shape uses it only when it is faster with
   95% confidence. The clear candidates alone (FP32 in at most ``STRONG`` of the INT8 time) are
   tried the same way, and the faster of the two wins; when neither is faster, every layer
   stays INT8.
4. max pooling modules that run on INT8 values (``graph.quantized_max_pools``) are tried in FP32
   too, alone and with each set of layers above, timed the same way. Torch's INT8 max pooling
   is slow on maps of few channels (72 µs a call on the 8- and 16-channel maps of a small
   detector, where Inductor's FP32 pooling takes 4-8 µs) but not on many: ResNet-18 took twice
   as long with FP32 pooling at batch 16, which is why it is measured per model, never assumed.
   Like a layer kept in FP32, it removes a quantization step (the layer before it keeps an FP32
   output) and adds none.
5. the convolutions as INT8 matrix products (``qcli.matmul``: no oneDNN convolution set-up per
   call), all of them and those of at most 1024 and 256 output rows (``matmul.SCOPES``), each
   timed the same way; when an FP32 mix and a products variant both won, the best of each
   together is timed too. The fastest variant faster with 95% confidence wins.

A layer kept in FP32 only removes quantization error; ``qcli bench`` measures what the package
really does, per batch size.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qcli import engine, graph, hardware, matmul, metrics, private

if TYPE_CHECKING:  # torch is imported when a function runs, never when qcli is imported
    from torch import Tensor
    from torch.fx import GraphModule

MARGIN = 0.10  # a module is a candidate when its FP32 kernels take at most 90% of its INT8 ones
STRONG = 0.5  # ... and a clear one at most half: tried alone when all candidates together lose
PROFILED_CALLS = 30
ROUNDS = 30  # interleaved rounds of the whole-model comparison
ROUND_SECONDS = 0.004  # each round times enough calls of each graph to last about this long

log = logging.getLogger(__name__)

Shape = tuple[int, int | None]  # (batch size, sequence length or None), as artifact.write_package


@dataclass(frozen=True)
class Layer:
    """One call of a conv/linear layer at a given shape: what its kernel is recognised by."""

    name: str  # module path, as ``qcli inspect`` lists it
    kind: str  # Conv2d, Linear, ...
    input_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    quantized: bool = True  # its weight comes through a dequantize step (False: kept FP32 already)

    def matches(self, shapes: list[list[int]]) -> bool:
        """Whether a profiled kernel call with these argument shapes computes this layer: it takes
        the layer's weight (a linear kernel may take it transposed) and its input (a linear kernel
        may take it flattened to rows)."""
        have = [tuple(s) for s in shapes if isinstance(s, list)]
        weight = self.weight_shape in have or (self.kind == "Linear" and self.weight_shape[::-1] in have)
        if not weight:
            return False
        if self.input_shape in have:
            return True
        if self.kind != "Linear":
            return False
        size = _numel(self.input_shape)
        return any(s and s[-1] == self.input_shape[-1] and _numel(s) == size for s in have)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@dataclass(frozen=True)
class LayerTime:
    name: str
    int8_us: float | None  # median kernel time per call (every call of the module), None: not found
    fp32_us: float | None

    @property
    def faster_in_fp32(self) -> bool:
        return self.int8_us is not None and self.fp32_us is not None and self.fp32_us < (1 - MARGIN) * self.int8_us

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "int8_us": _round(self.int8_us), "fp32_us": _round(self.fp32_us)}


def _round(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None


@dataclass(frozen=True)
class Attempt:
    """One whole-model comparison against the all-INT8 package model: the graph with
    ``fp32_layers`` in FP32, or with the convolutions ``matmul_layers`` as INT8 matrix products
    (``qcli.matmul``)."""

    fp32_layers: tuple[str, ...]
    int8_ms: float  # median per call
    mixed_ms: float
    speedup: tuple[float, float, float]  # int8_ms / mixed_ms with its 95% interval
    matmul_layers: tuple[str, ...] = ()

    @property
    def faster(self) -> bool:
        return self.speedup[1] > 1.0

    def to_dict(self) -> dict[str, Any]:
        value, low, high = self.speedup
        return {
            "fp32_layers": list(self.fp32_layers),
            "matmul_layers": list(self.matmul_layers),
            "int8_ms": _round3(self.int8_ms),
            "mixed_ms": _round3(self.mixed_ms),
            "speedup": {"value": round(value, 4), "low": round(low, 4), "high": round(high, 4)},
        }


@dataclass
class ShapeChoice:
    """What ``--prefer speed`` measured and chose for one compiled shape."""

    batch: int
    length: int | None
    layers: list[LayerTime] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    fp32_layers: tuple[str, ...] = ()  # what this shape's model keeps in FP32 (beyond --exclude)
    matmul_layers: tuple[str, ...] = ()  # its convolutions computed as INT8 matrix products
    max_pools: tuple[str, ...] = ()  # its INT8 max poolings, tried in FP32 like the layers
    verdict: str = ""
    errors: list[str] = field(default_factory=list)  # variants torch failed to compile

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "length": self.length,
            "fp32_layers": list(self.fp32_layers),
            "matmul_layers": list(self.matmul_layers),
            "max_pools": list(self.max_pools),
            "verdict": self.verdict,
            "errors": list(self.errors),
            "attempts": [a.to_dict() for a in self.attempts],
            "layers": [t.to_dict() for t in self.layers],
        }


def _round3(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


Rebuild = Callable[[tuple[str, ...]], Any]  # modules to keep FP32 -> the finalized INT8 graph


def layers_at(gm: GraphModule, args: tuple[Tensor, ...]) -> list[Layer]:
    """Each conv/linear call of ``gm`` on ``args``, in graph order, with its input and weight shapes."""
    import torch

    nodes = {node: graph.module_name(node) for node in gm.graph.nodes if graph.layer_type(node) is not None}
    found: list[Layer] = []

    class Shapes(torch.fx.Interpreter):
        def run_node(self, n: Any) -> Any:
            if n in nodes:
                x, w = (self.env[a] if isinstance(a, torch.fx.Node) else a for a in n.args[:2])
                quantized = graph.dequantize_kind(n.args[1]) is not None
                found.append(Layer(nodes[n], graph.layer_type(n) or "", tuple(x.shape), tuple(w.shape), quantized))
            return super().run_node(n)

    with torch.no_grad(), engine.quiet():
        Shapes(gm).run(*args)
    return found


def compiled(gm: GraphModule, args: tuple[Tensor, ...]) -> Callable[..., Any]:
    """``gm`` compiled by ``torch.compile`` with frozen weights and static shapes, called once: for
    the profiler, which sees its kernels (see ``packaged`` for what the timings that decide use)."""
    import torch

    from qcli.artifact import package_module

    private.guard_inplace_fusions()
    with torch.no_grad(), engine.quiet():  # as write_package compiles: an export for this shape
        module = package_module(gm, args)
    fn = torch.compile(module, dynamic=False)
    # freezing as a config patch: torch.compile(options={"freezing": True}) leaves the INT8 weights as
    # graph inputs in torch 2.13 and fails on onednn.qconv_prepack
    with torch.no_grad(), engine.quiet(), private.inductor_config().patch(freezing=True):
        fn(*args)
    return fn


def packaged(gm: GraphModule, args: tuple[Tensor, ...]) -> Callable[..., Any]:
    """``gm`` compiled exactly as ``artifact.write_package`` compiles a package model (export for
    this shape, AOTInductor with frozen weights) and loaded with torch's own loader.

    Whole-model comparisons use this, not ``compiled``: ``torch.compile`` builds another program.
    On a 2-layer ALBERT at batch 1 its INT8 graph ran 0.73 ms against 0.38 ms for the package (12
    of its 15 INT8 linear layers ran as FP32 matrix products of dequantized weights), so a mix of FP32
    layers measured 1.18x faster there made the package 0.8x as fast. Torch's profiler does not
    see the kernels inside a package, so the per-layer kernel times still come from ``compiled``:
    they only nominate candidates."""
    import tempfile
    from pathlib import Path

    import torch

    from qcli.artifact import PACKAGE_OPTIONS, package_module

    private.guard_inplace_fusions()
    with torch.no_grad(), engine.quiet(), tempfile.TemporaryDirectory(prefix="qcli-speed-") as tmp:
        files = private.aot_compile(package_module(gm, args), args, {**PACKAGE_OPTIONS, **matmul.compile_options(gm)})
        path = str(Path(tmp) / "model.pt2")
        private.package_aoti(path, {"model": files})
        runner = torch._inductor.aoti_load_package(path)
        runner(*args)
    return runner


KERNEL_WORDS = ("conv", "linear", "mm")  # profiler names of the kernels that compute a layer


def _kernel(event: Any) -> bool:
    name = str(event.name)
    return "::" in name and any(word in name.split("::")[-1] for word in KERNEL_WORDS)


def kernel_times(fn: Callable[..., Any], args: tuple[Tensor, ...], layers: list[Layer]) -> list[float | None]:
    """Median µs per call of each layer's kernel in ``fn`` (None where no kernel matched it).

    The outermost conv/linear/matmul operator calls of each run are taken in order; each layer
    takes the first unclaimed one that has its input and weight shapes. A run whose kernel count
    differs from the first one's is not used."""
    import torch

    with torch.no_grad(), engine.quiet():
        for _ in range(3):
            fn(*args)
        # torch's profiler prints its start and stop on file descriptor 2: not for the user
        with (
            hardware.fd_to_file(2),
            torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof,
        ):
            for _ in range(PROFILED_CALLS):
                with torch.profiler.record_function("qcli_call"):
                    fn(*args)
    runs: dict[int, list[Any]] = {}
    calls = sorted((e for e in prof.events() if e.name == "qcli_call"), key=lambda e: e.time_range.start)
    for event in prof.events():
        if not _kernel(event) or _has_kernel_parent(event):
            continue
        start = event.time_range.start
        run = next((i for i, c in enumerate(calls) if c.time_range.start <= start <= c.time_range.end), None)
        if run is not None:
            runs.setdefault(run, []).append(event)
    if not runs:
        return [None] * len(layers)
    ordered = [sorted(events, key=lambda e: e.time_range.start) for _, events in sorted(runs.items())]
    first = ordered[0]
    claimed: list[int | None] = []
    taken: set[int] = set()
    for layer in layers:
        index = next((i for i, e in enumerate(first) if i not in taken and layer.matches(e.input_shapes)), None)
        claimed.append(index)
        if index is not None:
            taken.add(index)
    same = [run for run in ordered if len(run) == len(first)]
    return [None if i is None else statistics.median(float(run[i].cpu_time_total) for run in same) for i in claimed]


def _has_kernel_parent(event: Any) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if _kernel(parent):
            return True
        parent = parent.cpu_parent
    return False


def per_module(layers: list[Layer], int8: list[float | None], fp32: list[float | None]) -> list[LayerTime]:
    """Kernel times summed over each module's calls, in model order (unknown if any call is)."""
    names = list(dict.fromkeys(layer.name for layer in layers))
    out = []
    for name in names:
        idx = [i for i, layer in enumerate(layers) if layer.name == name]
        a, b = [int8[i] for i in idx], [fp32[i] for i in idx]
        out.append(
            LayerTime(
                name,
                None if any(v is None for v in a) else sum(v for v in a if v is not None),
                None if any(v is None for v in b) else sum(v for v in b if v is not None),
            )
        )
    return out


def compare(
    a: Callable[..., Any], b: Callable[..., Any], args: tuple[Tensor, ...]
) -> tuple[float, float, tuple[float, float, float]]:
    """(median ms of a, median ms of b, a/b with its 95% interval), timed interleaved: each round
    runs enough calls of each to last about ``ROUND_SECONDS``, in alternating order."""
    import torch

    with torch.no_grad():
        for _ in range(3):
            a(*args)
            b(*args)
        t0 = time.perf_counter()
        a(*args)
        repeat = max(1, int(ROUND_SECONDS / max(time.perf_counter() - t0, 1e-6)))
        times: dict[str, list[float]] = {"a": [], "b": []}
        for r in range(ROUNDS):
            for name in ("a", "b") if r % 2 == 0 else ("b", "a"):
                fn = a if name == "a" else b
                t0 = time.perf_counter()
                for _ in range(repeat):
                    fn(*args)
                times[name].append((time.perf_counter() - t0) / repeat)
    ratio = metrics.ratio_interval(times["a"], times["b"])
    return statistics.median(times["a"]) * 1e3, statistics.median(times["b"]) * 1e3, ratio


def choose(
    shape: Shape,
    args: tuple[Tensor, ...],
    int8_graph: GraphModule,
    fp32_graph: GraphModule,
    rebuild: Rebuild,
) -> tuple[ShapeChoice, Any]:
    """Measure one shape (see the module's docstring); returns the choice and the graph to compile
    for it (``int8_graph`` unless a variant won). Layers FP32 already (``--exclude``) are left out."""
    choice = ShapeChoice(shape[0], shape[1])
    int8_fn = compiled(int8_graph, args)
    fp32_fn = compiled(fp32_graph, args)
    int8_layers, fp32_layers = layers_at(int8_graph, args), layers_at(fp32_graph, args)
    comparable = [la.name for la in int8_layers] == [la.name for la in fp32_layers]
    candidates: list[LayerTime] = []
    if comparable:
        fp32_already = {la.name for la in int8_layers if not la.quantized}
        choice.layers = [
            t
            for t in per_module(
                int8_layers, kernel_times(int8_fn, args, int8_layers), kernel_times(fp32_fn, args, fp32_layers)
            )
            if t.name not in fp32_already
        ]
        candidates = [t for t in choice.layers if t.faster_in_fp32]
    pools = tuple(graph.quantized_max_pools(int8_graph)) if comparable else ()
    choice.max_pools = pools
    trials: list[tuple[str, ...]] = []
    if candidates:
        trials.append(tuple(t.name for t in candidates))
        strong = tuple(
            t.name for t in candidates if t.fp32_us is not None and t.int8_us and t.fp32_us <= STRONG * t.int8_us
        )
        if strong and strong != trials[0]:
            trials.append(strong)  # the clear wins alone: FP32 layers in between cost conversions
    if pools:  # INT8 max pooling: fast on many channels, slow on few (see the module's docstring)
        trials += [pools] + [layers + pools for layers in trials]
    variants = matmul_variants(int8_graph, shape[0])
    if not trials and not variants:
        choice.verdict = (
            "every layer INT8: the FP32 and INT8 graphs' layers differ, so they were not compared"
            if not comparable
            else f"every layer INT8: no layer's FP32 kernels take {1 - MARGIN:.0%} of its INT8 ones or less"
        )
        return choice, int8_graph
    graphs: list[Any] = []
    int8_package = packaged(int8_graph, args)

    def timed(candidate: Any, fp32: tuple[str, ...], products: tuple[str, ...]) -> None:
        """Time ``candidate`` against all-INT8; one that torch fails to compile is left out (its
        error recorded): the variants are optional, the all-INT8 package is not."""
        try:
            run = packaged(candidate, args)
        except Exception as exc:  # torch's compile of a variant: report it, keep going without it
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            label = describe(fp32, products, pools)
            choice.errors.append(f"{label}: not compiled ({type(exc).__name__}: {first})")
            log.debug("--prefer speed: %s failed to compile", label, exc_info=True)
            return
        graphs.append(candidate)
        choice.attempts.append(Attempt(fp32, *compare(int8_package, run, args), products))

    for tried in trials:
        timed(rebuild(tried), tried, ())
    for lowered, names in variants:
        timed(lowered, (), names)
    faster = [i for i, a in enumerate(choice.attempts) if a.faster]
    mixes = [i for i in faster if choice.attempts[i].fp32_layers]
    products = [i for i in faster if choice.attempts[i].matmul_layers]
    if mixes and products:  # both kinds won alone: the best of each together
        mix = max(mixes, key=lambda i: choice.attempts[i].speedup[0])
        wanted = choice.attempts[max(products, key=lambda i: choice.attempts[i].speedup[0])].matmul_layers
        both, combined = matmul.convs_as_matmuls(graphs[mix], None, shape[0], wanted)
        if combined:
            timed(both, choice.attempts[mix].fp32_layers, tuple(combined))
            faster = [i for i, a in enumerate(choice.attempts) if a.faster]
    if not faster:
        tried_what = ["FP32 layers"] * bool(candidates) + ["FP32 pooling"] * bool(pools)
        tried_what += ["convolutions as INT8 matrix products"] * bool(variants)
        choice.verdict = f"every layer INT8: the model was not faster with {' or '.join(tried_what)}"
        return choice, int8_graph
    best = max(faster, key=lambda i: choice.attempts[i].speedup[0])
    won = choice.attempts[best]
    choice.fp32_layers, choice.matmul_layers = won.fp32_layers, won.matmul_layers
    choice.verdict = describe(won.fp32_layers, won.matmul_layers, pools)
    return choice, graphs[best]


def matmul_variants(gm: GraphModule, batch: int) -> list[tuple[Any, tuple[str, ...]]]:
    """``gm`` with its convolutions as INT8 matrix products, for each of ``matmul.SCOPES`` that
    rewrites a different set of them (none when no convolution qualifies)."""
    out: list[tuple[Any, tuple[str, ...]]] = []
    for scope in matmul.SCOPES:
        lowered, names = matmul.convs_as_matmuls(gm, scope, batch)
        if names and all(tuple(names) != seen for _, seen in out):
            out.append((lowered, tuple(names)))
    return out


def describe(fp32: Sequence[str], products: Sequence[str], pools: Sequence[str] = ()) -> str:
    """What a variant changes: ``fc in FP32``, ``9 convolutions as INT8 matrix products``, ..."""
    parts = []
    if fp32:
        parts.append(", ".join(f"{name} (max pooling)" if name in pools else name for name in fp32) + " in FP32")
    if products:
        n = len(products)
        parts.append(
            f"{n} convolutions as INT8 matrix products" if n > 1 else "1 convolution as an INT8 matrix product"
        )
    return "; ".join(parts)
