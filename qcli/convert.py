"""Stage 4: turn an observed graph into an INT8 program.

``quantize`` runs PT2E ``convert_pt2e`` (INT8 weights folded, quantize/dequantize pairs around the
quantized ops); ``finalize`` drops the FP32 weights that conversion leaves behind, protects the
caller's input tensors, and re-exports the result with a dynamic batch so it can be packaged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qcli import engine, ranges
from qcli import layers as layer_report
from qcli.calibrate import Prepared
from qcli.errors import UnsupportedModel

QUANTIZABLE_OPS = {"conv1d": "Conv1d", "conv2d": "Conv2d", "conv3d": "Conv3d", "linear": "Linear"}


@dataclass(frozen=True)
class LayerQuant:
    """How one layer was quantized, as recorded in the artifact."""

    name: str  # module path, as `qcli inspect` shows it
    op: str
    quantized: bool
    weight_dtype: str | None
    weight_scale_min: float | None
    weight_scale_max: float | None
    input_scale: float | None  # None for dynamic activations or FP32 inputs
    input_zero_point: int | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


DEFAULT_METHOD = "histogram"  # torch's HistogramObserver: its own least-L2 search over the histogram
METHODS = (DEFAULT_METHOD, *ranges.METHODS, "auto")


AUTO = "auto"


def apply_method(
    prepared: Prepared, method: str, percentile: float = 99.99, samples: tuple[Any, ...] | None = None
) -> dict[str, tuple[float, float]]:
    """Fix every activation observer's range by ``method`` (see ``qcli.ranges``) from the
    histogram it collected; returns observer name → chosen range. ``histogram`` keeps torch's;
    ``auto`` picks, per tensor, the method whose range gives the consuming layers' outputs the
    least error on ``samples`` (see ``auto_methods``)."""
    import functools

    import torch

    chosen: dict[str, tuple[float, float]] = {}
    if method == DEFAULT_METHOD or prepared.mode != "static":
        return chosen
    candidates: dict[str, dict[str, tuple[float, float]]] = {}
    for name, obs in engine.observers(prepared.graph).items():
        histogram = getattr(obs, "histogram", None)
        if histogram is None or not hasattr(obs, "_calculate_qparams"):
            continue
        lo, hi = float(obs.min_val), float(obs.max_val)
        if not (lo <= hi) or histogram.sum() == 0:  # never observed (min=+inf): leave it to torch
            continue
        counts, qmin, qmax = histogram.double().numpy(), int(obs.quant_min), int(obs.quant_max)
        methods = ranges.METHODS if method == AUTO else (method,)
        candidates[name] = {m: ranges.choose_range(m, counts, lo, hi, percentile, qmin, qmax) for m in methods}
    if method == AUTO:
        if samples is None:
            raise UnsupportedModel("--method auto needs calibration samples (calibrate again with this qcli)")
        picks = auto_methods(prepared, candidates, samples)
        chosen = {name: candidates[name][m] for name, m in picks.items()}
    else:
        chosen = {name: c[method] for name, c in candidates.items()}
    modules = engine.observers(prepared.graph)
    for name, (a, b) in chosen.items():
        obs = modules[name]
        obs.calculate_qparams = functools.partial(obs._calculate_qparams, torch.tensor(a), torch.tensor(b))
    return chosen


def auto_methods(
    prepared: Prepared, candidates: dict[str, dict[str, tuple[float, float]]], samples: tuple[Any, ...]
) -> dict[str, str]:
    """For each observed tensor, the range method whose fake-quantized tensor (all else FP32) gives
    the next conv/linear layers' outputs the least squared error against FP32 on ``samples``."""
    import torch

    from qcli import layers as layer_report

    reference = layer_report.fp32_reference(prepared.graph)
    nodes = {str(n.target): n for n in reference.graph.nodes if n.op == "call_module" and str(n.target) in candidates}

    def consumers(node: Any) -> list[Any]:
        found, todo, seen = [], list(node.users), set()
        while todo:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            if getattr(n.target, "_opname", None) in QUANTIZABLE_OPS:
                found.append(n)
            else:
                todo.extend(n.users)
        return found

    def run(perturb: str | None, rng: tuple[float, float] | None, watch: list[Any]) -> list[Any]:
        out: dict[Any, Any] = {}

        class Perturbed(torch.fx.Interpreter):
            def run_node(self, n: Any) -> Any:
                result = super().run_node(n)
                if perturb is not None and n.op == "call_module" and str(n.target) == perturb and rng is not None:
                    scale, zp = ranges.qparams(*rng)
                    result = torch.fake_quantize_per_tensor_affine(result, scale, zp, 0, 255)
                if n in watch:
                    out[n] = result.detach()
                return result

        with torch.no_grad(), engine.quiet():
            Perturbed(reference).run(*samples)
        return [out[n] for n in watch]

    picks = {}
    for name, options in candidates.items():
        watch = consumers(nodes[name]) if name in nodes else []
        if not watch:
            picks[name] = min(options, key=lambda m: options[m][1] - options[m][0])  # nothing to measure: any
            continue
        ref = run(None, None, watch)
        errors = {}
        for m, rng in options.items():
            got = run(name, rng, watch)
            errors[m] = sum(float(((r - g) ** 2).mean()) for r, g in zip(ref, got, strict=True))
        picks[name] = min(errors, key=lambda m: (errors[m], ranges.METHODS.index(m)))
    return picks


def resolve_excludes(module: Any, patterns: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Module names (as ``inspect`` lists them) matched by the ``--exclude`` globs, in model order.

    A pattern that matches no module is an error that lists the quantizable layers, so a typo
    never silently quantizes what the user meant to keep in FP32.
    """
    import fnmatch

    names = [name for name, _ in module.named_modules() if name]
    layers = [name for name, m in module.named_modules() if type(m).__name__ in QUANTIZABLE_OPS.values()]
    chosen: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            shown = ", ".join(layers[:12]) + (" …" if len(layers) > 12 else "")
            raise UnsupportedModel(f"--exclude '{pattern}' matches no module of this model (layers: {shown})")
        chosen += [n for n in hits if n not in chosen]
    return tuple(chosen)


def quantize(
    prepared: Prepared, method: str = DEFAULT_METHOD, percentile: float = 99.99, samples: tuple[Any, ...] | None = None
) -> Any:
    """The INT8 graph: PT2E conversion of the observed graph (static), or linear layers rewritten
    to INT8 kernels in plain torch ops (dynamic, weight-only; ``qcli.dynamic``)."""
    if prepared.mode != "static":
        import copy

        from qcli import dynamic

        with engine.quiet():  # deepcopy of an exported module warns about pytree internals
            graph = copy.deepcopy(prepared.graph)
        return dynamic.rewrite(graph, prepared.mode, prepared.exclude, module_name)
    apply_method(prepared, method, percentile, samples)
    return engine.convert_pt2e(prepared.graph)


def module_name(node: Any) -> str:
    """The module path a graph node came from (``layer1.conv1.0``), or the node name."""
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path = list(stack.values())[-1][0]
        return str(path).replace("L['self'].", "").replace("L__self___", "")
    return str(node.name)


def layer_table(converted: Any) -> list[LayerQuant]:
    """One entry per convolution/linear op of the converted graph, quantized or not."""
    import torch

    from qcli import dynamic

    layers = []
    for node in converted.graph.nodes:
        if dynamic.is_rewritten(node):
            w_scale = engine.get_attr(converted, str(node.args[2].target))
            layers.append(
                LayerQuant(
                    module_name(node), "Linear", True, "int8", float(w_scale.min()), float(w_scale.max()), None, None
                )
            )
            continue
        op = getattr(node.target, "_opname", None) if node.op == "call_function" else None
        if op not in QUANTIZABLE_OPS:
            continue
        x, w = node.args[0], node.args[1]
        target = str(getattr(w, "target", ""))
        wq = w if "dequantize_per_channel" in target or "dequantize_per_tensor" in target else None
        scale: Any = None
        if wq is not None:
            scale_node = wq.args[1]
            if isinstance(scale_node, float):  # per-tensor weights: the scale is a constant
                scale = torch.tensor([scale_node])
            elif scale_node.op == "get_attr":
                scale = getattr(converted, str(scale_node.target))
        xq = x if "dequantize_per_tensor" in str(getattr(x, "target", "")) else None
        in_scale = xq.args[1] if xq is not None and isinstance(xq.args[1], float) else None
        in_zp = xq.args[2] if xq is not None and isinstance(xq.args[2], int) else None
        layers.append(
            LayerQuant(
                name=module_name(node),
                op=QUANTIZABLE_OPS[op],
                quantized=wq is not None,
                weight_dtype="int8" if wq is not None else "float32",
                weight_scale_min=float(scale.min()) if isinstance(scale, torch.Tensor) else None,
                weight_scale_max=float(scale.max()) if isinstance(scale, torch.Tensor) else None,
                input_scale=float(in_scale) if in_scale is not None else None,
                input_zero_point=int(in_zp) if in_zp is not None else None,
            )
        )
    if not any(layer.quantized for layer in layers):
        raise UnsupportedModel(
            "no layer was quantized (qcli quantizes Conv2d and Linear layers; dynamic and weight-only modes only "
            "Linear layers with stored weights); "
            "the artifact would be FP32, so none was written"
        )
    return layers


def prune_unused(gm: Any) -> None:
    """Delete parameters and buffers no graph node reads (the FP32 weights convert_pt2e leaves)."""
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in [*gm.named_parameters(), *gm.named_buffers()]:
        if name in used:
            continue
        owner_path, _, attr = name.rpartition(".")
        owner = gm.get_submodule(owner_path) if owner_path else gm
        delattr(owner, attr)


def protect_inputs(gm: Any) -> None:
    """Clone every tensor input first, so no fused in-place op can write into a caller's tensor.

    A compiled INT8 model was seen to fuse a residual add in place into a graph input (oneDNN
    "sum" post-op); working on a copy costs one memcpy of the input.
    """
    import torch

    graph = gm.graph
    for node in [n for n in graph.nodes if n.op == "placeholder"]:
        with graph.inserting_after(node):
            copy = graph.call_function(torch.ops.aten.clone.default, (node,))
        node.replace_all_uses_with(copy, delete_user_cb=lambda user, c=copy: user is not c)
    gm.recompile()


def finalize(converted: Any) -> Any:
    """The converted graph made ready to save: FP32 leftovers pruned, inputs protected."""
    converted.graph.eliminate_dead_code()
    prune_unused(converted)
    protect_inputs(converted)
    return converted


def input_specs(program: Any, prepared: Prepared) -> list[dict[str, Any]]:
    """Name, shape and dtype of each input; ``batch`` and ``seq`` name the dimensions the program
    leaves dynamic (``seq``: dimension 1 of a sequence model's inputs)."""
    import torch

    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
    user = [n for n in placeholders if n.name in set(program.graph_signature.user_inputs)]
    specs = []
    for name, node, t in zip(prepared.spec.names, user, prepared.example, strict=False):
        val = node.meta.get("val")
        shape: list[Any] = ["batch"]
        for i, size in enumerate(t.shape[1:], start=1):
            dynamic = val is not None and isinstance(val.shape[i], torch.SymInt)
            shape.append("seq" if dynamic and i == 1 else int(size))
        specs.append({"name": name, "shape": shape, "dtype": str(t.dtype).replace("torch.", "")})
    return specs


@dataclass
class Conversion:
    """What ``convert_model`` wrote."""

    outputs: dict[str, str]  # form → path
    metadata: dict[str, Any]
    layers: list[LayerQuant]


def program_path(out: Any) -> Any:
    """Where ``--form both`` puts the exported program next to the package: ``x.pt2`` → ``x.program.pt2``."""
    return out.with_name(out.stem + ".program" + (out.suffix or ".pt2"))


def convert_model(
    loaded: Any,  # qcli.load.LoadedModel
    prepared: Prepared,
    out: Any,  # pathlib.Path
    *,
    form: str = "package",
    package_batch_sizes: list[int] | None = None,
    calibration: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    method: str = DEFAULT_METHOD,
    percentile: float = 99.99,
    report_samples: tuple[Any, ...] | None = None,
    search: dict[str, Any] | None = None,
    bias_correction: bool = False,
) -> Conversion:
    """Convert an observed (or stats-loaded) graph and write the artifact form(s) atomically."""
    import torch

    from qcli.artifact import base_metadata, write_package, write_program

    if bias_correction and (report_samples is None or prepared.mode != "static"):
        raise UnsupportedModel(
            "--bias-correction needs static mode and calibration samples (calibrate again with this qcli)"
        )
    fp32_graph = layer_report.fp32_reference(prepared.graph) if report_samples is not None else None
    converted = quantize(prepared, method, percentile, report_samples)
    layers = layer_table(converted)
    corrected = layer_report.bias_correct(fp32_graph, converted, report_samples) if bias_correction else None
    per_layer = None
    if fp32_graph is not None and report_samples is not None:
        per_layer = layer_report.per_layer_errors(fp32_graph, converted, [report_samples], layers)
    with torch.no_grad(), engine.quiet():
        outs = converted(*prepared.example)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    graph = finalize(converted)
    program = engine.export(graph, prepared.example, prepared.spec.names, sequence=prepared.spec.sequence)
    metadata = {
        **base_metadata(),
        "mode": prepared.mode,
        "method": method if prepared.mode == "static" else "dynamic",
        "percentile": percentile if method == "percentile" and prepared.mode == "static" else None,
        "source": {
            "file": loaded.path.name,
            "sha256": loaded.sha256,
            "format": loaded.format,
            "arch": loaded.arch.target if loaded.arch else None,
            "arch_kwargs": loaded.arch.kwargs if loaded.arch else None,
            "parameters": loaded.num_parameters,
            "size_bytes": loaded.size_bytes,
        },
        "inputs": input_specs(program, prepared),
        "outputs": [
            {"shape": ["batch", *o.shape[1:]], "dtype": str(o.dtype).replace("torch.", "")}
            for o in outs
            if isinstance(o, torch.Tensor)
        ],
        "config": config or {},
        "calibration": calibration or {},
        "layers": [layer.to_dict() for layer in layers],
        "per_layer": per_layer,
        "search": search,
        "bias_correction": corrected,
        "suggested_exclude": layer_report.suggestions(per_layer) if per_layer else [],
        # the same in every run with the same inputs, for both forms (the package's own bytes are not)
        "graph_sha256": engine.graph_digest(program),
    }
    outputs = {}
    if form in ("package", "both"):
        write_package(graph, prepared.example, out, metadata, package_batch_sizes or [1, 16])
        outputs["package"] = str(out)
    if form in ("program", "both"):
        target = out if form == "program" else program_path(out)
        write_program(program, target, metadata)
        outputs["program"] = str(target)
    return Conversion(outputs, metadata, layers)
