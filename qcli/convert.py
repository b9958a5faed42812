"""Stage 4: turn an observed graph into an INT8 program.

``quantize`` runs PT2E ``convert_pt2e`` (INT8 weights folded, quantize/dequantize pairs around the
quantized ops); ``finalize`` drops the FP32 weights that conversion leaves behind, protects the
caller's input tensors, and re-exports the result with a dynamic batch so it can be packaged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qcli import engine, graph, hardware, private, ranges
from qcli import layers as layer_report
from qcli.artifact import has_seq
from qcli.calibrate import Prepared
from qcli.errors import OptionError, UnsupportedModel
from qcli.load import LoadedModel
from qcli.options import AUTO_METHOD, DEFAULT_METHOD, RANGE_METHODS, ConvertOptions

if TYPE_CHECKING:  # torch is imported when a function runs, never when qcli is imported
    from torch import Tensor
    from torch.fx import GraphModule, Node
    from torch.nn import Module


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


def apply_method(
    prepared: Prepared, method: str, percentile: float = 99.99, samples: tuple[Tensor, ...] | None = None
) -> dict[str, tuple[float, float]]:
    """Fix every activation observer's range by ``method`` (see ``qcli.ranges``) from the
    histogram it collected; returns observer name → chosen range. ``histogram`` keeps torch's;
    ``auto`` picks, per tensor, the method whose range gives the consuming layers' outputs the
    least error on ``samples`` (see ``auto_methods``)."""
    chosen: dict[str, tuple[float, float]] = {}
    if method == DEFAULT_METHOD or prepared.mode != "static":
        return chosen
    candidates: dict[str, dict[str, tuple[float, float]]] = {}
    for name, obs in graph.observers(prepared.graph).items():
        histogram = getattr(obs, "histogram", None)
        if histogram is None or not hasattr(obs, "_calculate_qparams"):
            continue
        lo, hi = float(obs.min_val), float(obs.max_val)
        if not (lo <= hi) or histogram.sum() == 0:  # never observed (min=+inf): leave it to torch
            continue
        counts, qmin, qmax = histogram.double().numpy(), int(obs.quant_min), int(obs.quant_max)
        methods = RANGE_METHODS if method == AUTO_METHOD else (method,)
        candidates[name] = {m: ranges.choose_range(m, counts, lo, hi, percentile, qmin, qmax) for m in methods}
    if method == AUTO_METHOD:
        if samples is None:
            raise OptionError("{method} auto needs calibration samples (calibrate again with this qcli)")
        picks = auto_methods(prepared, candidates, samples)
        chosen = {name: candidates[name][m] for name, m in picks.items()}
    else:
        chosen = {name: c[method] for name, c in candidates.items()}
    modules = graph.observers(prepared.graph)
    for name, (a, b) in chosen.items():
        private.fix_observer_range(modules[name], a, b)
    return chosen


def auto_methods(
    prepared: Prepared, candidates: dict[str, dict[str, tuple[float, float]]], samples: tuple[Tensor, ...]
) -> dict[str, str]:
    """For each observed tensor, the range method whose fake-quantized tensor (all else FP32) gives
    the next conv/linear layers' outputs the least squared error against FP32 on ``samples``."""
    import torch

    reference = layer_report.fp32_reference(prepared.graph)
    nodes = {str(n.target): n for n in reference.graph.nodes if n.op == "call_module" and str(n.target) in candidates}

    def consumers(node: Node) -> list[Any]:
        found, todo, seen = [], list(node.users), set()
        while todo:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            if graph.layer_type(n) is not None:
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
        picks[name] = min(errors, key=lambda m: (errors[m], RANGE_METHODS.index(m)))
    return picks


def resolve_excludes(module: Module, patterns: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Module names (as ``inspect`` lists them) matched by the ``--exclude`` globs, in model order.

    A pattern that matches no module is an error that lists the quantizable layers, so a typo
    never silently quantizes what the user meant to keep in FP32.
    """
    import fnmatch

    names = [name for name, _ in module.named_modules() if name]
    layers = [name for name, m in module.named_modules() if type(m).__name__ in graph.LAYER_TYPES.values()]
    chosen: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            shown = ", ".join(layers[:12]) + (" …" if len(layers) > 12 else "")
            raise OptionError(f"{{exclude}} '{pattern}' matches no module of this model (layers: {shown})")
        chosen += [n for n in hits if n not in chosen]
    return tuple(chosen)


def quantize(
    prepared: Prepared,
    method: str = DEFAULT_METHOD,
    percentile: float = 99.99,
    samples: tuple[Tensor, ...] | None = None,
) -> Any:
    """The INT8 graph: PT2E conversion of the observed graph (static), or linear layers rewritten
    to INT8 kernels in plain torch ops (dynamic, weight-only; ``qcli.dynamic``)."""
    if prepared.mode != "static":
        import copy

        from qcli import dynamic

        with engine.quiet():  # deepcopy of an exported module warns about pytree internals
            copied = copy.deepcopy(prepared.graph)
        return dynamic.rewrite(copied, prepared.mode, prepared.exclude)
    apply_method(prepared, method, percentile, samples)
    return engine.convert_pt2e(prepared.graph)


def layer_table(converted: GraphModule) -> list[LayerQuant]:
    """One entry per convolution/linear op of the converted graph, quantized or not."""
    from qcli import dynamic

    layers = []
    for node in converted.graph.nodes:
        if dynamic.is_rewritten(node):
            layers.append(_rewritten_layer(converted, node))
        elif graph.layer_type(node) is not None:
            layers.append(_pt2e_layer(converted, node))
    if not any(layer.quantized for layer in layers):
        raise UnsupportedModel(
            "no layer was quantized (qcli quantizes Conv2d and Linear layers; dynamic and weight-only modes only "
            "Linear layers with stored weights); "
            "the artifact would be FP32, so none was written"
        )
    return layers


def _rewritten_layer(converted: GraphModule, node: Node) -> LayerQuant:
    """A linear layer of the dynamic/weight-only rewrite: INT8 weights, scales in ``args[2]``."""
    scales: Any = node.args[2]  # FX arguments are dynamically typed: the get_attr node of the scales
    w_scale = graph.get_attr(converted, str(scales.target))
    return LayerQuant(
        graph.module_name(node), "Linear", True, "int8", float(w_scale.min()), float(w_scale.max()), None, None
    )


def _pt2e_layer(converted: GraphModule, node: Node) -> LayerQuant:
    """A conv/linear of a PT2E graph: quantized when its weight comes through a dequantize step."""
    import torch

    args: Any = node.args  # FX arguments are dynamically typed: here the input and weight nodes
    x, w = args[0], args[1]
    wq = w if graph.dequantize_kind(w) is not None else None
    scale: Any = None
    if wq is not None:
        scale_node = wq.args[1]
        if isinstance(scale_node, float):  # per-tensor weights: the scale is a constant
            scale = torch.tensor([scale_node])
        elif scale_node.op == "get_attr":
            scale = graph.get_attr(converted, str(scale_node.target))
    xq = x if graph.dequantize_kind(x) == "per_tensor" else None
    in_scale = xq.args[1] if xq is not None and isinstance(xq.args[1], float) else None
    in_zp = xq.args[2] if xq is not None and isinstance(xq.args[2], int) else None
    return LayerQuant(
        name=graph.module_name(node),
        op=graph.layer_type(node) or "",
        quantized=wq is not None,
        weight_dtype="int8" if wq is not None else "float32",
        weight_scale_min=float(scale.min()) if isinstance(scale, torch.Tensor) else None,
        weight_scale_max=float(scale.max()) if isinstance(scale, torch.Tensor) else None,
        input_scale=float(in_scale) if in_scale is not None else None,
        input_zero_point=int(in_zp) if in_zp is not None else None,
    )


def finalize(converted: GraphModule) -> Any:
    """The converted graph made ready to save: FP32 leftovers pruned, inputs protected, views
    that would send a fused INT8 matmul to oneDNN's reference kernel copied."""
    converted.graph.eliminate_dead_code()
    graph.prune_unused(converted)
    graph.protect_inputs(converted)
    graph.contiguous_linear_addends(converted)
    return converted


def pad_id(config: dict[str, Any]) -> int:
    """The token id texts are padded with: the tokenizer's pad token (0 without one)."""
    folder = (config.get("preprocess") or {}).get("tokenizer")
    if not folder:
        return 0
    from qcli.errors import QcliError
    from qcli.text import load_tokenizer

    try:
        return int(getattr(load_tokenizer(folder), "pad_token_id", None) or 0)
    except QcliError:
        return 0


def token_outputs(program: Any) -> dict[str, list[int]]:
    """Outputs (index in the flattened outputs) → their dimensions of the inputs' sequence length:
    what is cut back after a package runs padded inputs."""
    import torch

    user = set(program.graph_signature.user_inputs)
    lengths = set()
    for node in program.graph.nodes:
        val = node.meta.get("val")
        is_input = node.op == "placeholder" and node.name in user and isinstance(val, torch.Tensor)
        if is_input and val.ndim >= 2 and isinstance(val.shape[1], torch.SymInt):
            lengths.add(str(val.shape[1]))
    if not lengths:
        return {}
    output = next(n for n in program.graph.nodes if n.op == "output")
    found = {}
    for i, node in enumerate(output.args[0]):
        val = getattr(node, "meta", {}).get("val")
        if isinstance(val, torch.Tensor):
            dims = [
                d for d in range(1, val.ndim) if isinstance(val.shape[d], torch.SymInt) and str(val.shape[d]) in lengths
            ]
            if dims:
                found[str(i)] = dims
    return found


def input_specs(program: Any, prepared: Prepared, pad: int = 0) -> list[dict[str, Any]]:
    """Name, shape and dtype of each input; ``batch`` and ``seq`` name the dimensions the program
    leaves dynamic (``seq``: dimension 1 of a sequence model's inputs). With an attention mask
    among the inputs, each ``seq`` input records the value it is padded with (``pad``: the
    tokenizer's ``pad`` for token ids, 0 otherwise)."""
    import torch

    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
    user = [n for n in placeholders if n.name in set(program.graph_signature.user_inputs)]
    specs: list[dict[str, Any]] = []
    for name, node, t in zip(prepared.spec.names, user, prepared.example, strict=False):
        val = node.meta.get("val")
        shape: list[Any] = ["batch"]
        for i, size in enumerate(t.shape[1:], start=1):
            dynamic = val is not None and isinstance(val.shape[i], torch.SymInt)
            shape.append("seq" if dynamic and i == 1 else int(size))
        specs.append({"name": name, "shape": shape, "dtype": str(t.dtype).replace("torch.", "")})
    if any(s["name"] == "attention_mask" and has_seq(s) for s in specs):
        for s in specs:
            if has_seq(s):
                s["pad"] = pad if s["name"] == "input_ids" else 0
    return specs


@dataclass
class Conversion:
    """What ``convert_model`` wrote."""

    outputs: dict[str, str]  # form → path
    metadata: dict[str, Any]
    layers: list[LayerQuant]


@dataclass(frozen=True)
class Provenance:
    """What the artifact records about how it was made, besides the model and its options."""

    calibration: dict[str, Any]  # the calibration manifest (files, samples, stats file)
    config: dict[str, Any]  # the effective configuration, in the shape of a recipe
    search: dict[str, Any] | None = None  # the --max-drop trial log


@dataclass
class Quantized:
    """The INT8 graph and what was measured on it before it was finalized."""

    graph: GraphModule
    layers: list[LayerQuant]
    per_layer: list[dict[str, Any]] | None
    bias_correction: list[dict[str, Any]] | None


def program_path(out: Path) -> Path:
    """Where ``--form both`` puts the exported program next to the package: ``x.pt2`` → ``x.program.pt2``."""
    return out.with_name(out.stem + ".program" + (out.suffix or ".pt2"))


def quantize_and_measure(prepared: Prepared, options: ConvertOptions, samples: tuple[Tensor, ...] | None) -> Quantized:
    """Convert, list the layers, apply bias correction and measure the per-layer errors on ``samples``."""
    if options.bias_correction and (samples is None or prepared.mode != "static"):
        raise OptionError(
            "{bias_correction} needs static mode and calibration samples (calibrate again with this qcli)"
        )
    fp32_graph = layer_report.fp32_reference(prepared.graph) if samples is not None else None
    converted = quantize(prepared, options.method, options.percentile, samples)
    layers = layer_table(converted)
    corrected = None
    if options.bias_correction and fp32_graph is not None and samples is not None:
        corrected = layer_report.bias_correct(fp32_graph, converted, samples)
    per_layer = None
    if fp32_graph is not None and samples is not None:
        per_layer = layer_report.per_layer_errors(fp32_graph, converted, [samples], layers)
    return Quantized(converted, layers, per_layer, corrected)


def convert_model(
    loaded: LoadedModel,
    prepared: Prepared,
    out: Path,
    options: ConvertOptions,
    provenance: Provenance,
    samples: tuple[Tensor, ...] | None = None,
) -> Conversion:
    """Convert an observed (or stats-loaded) graph and write the artifact form(s) atomically.

    ``samples`` (calibration samples) give the per-layer error report and bias correction.
    """
    import torch

    speed = SpeedPlan.of(loaded, prepared, options, samples) if options.prefer == "speed" else None
    quantized = quantize_and_measure(prepared, options, samples)
    with torch.no_grad(), engine.quiet():
        outs = quantized.graph(*prepared.example)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    final = finalize(quantized.graph)
    program = engine.export(final, prepared.example, prepared.spec.names, sequence=prepared.spec.sequence)
    metadata = artifact_metadata(loaded, prepared, options, provenance, quantized)
    metadata["inputs"] = input_specs(program, prepared, pad_id(provenance.config))
    metadata["token_outputs"] = token_outputs(program)
    metadata["outputs"] = [
        {"shape": ["batch", *o.shape[1:]], "dtype": str(o.dtype).replace("torch.", "")}
        for o in outs
        if isinstance(o, torch.Tensor)
    ]
    # the same in every run with the same inputs, for both forms (the package's own bytes are not)
    metadata["graph_sha256"] = graph.digest(program)
    graphs = None
    if speed is not None:
        choices, graphs = speed.choose(final, package_shapes(options, metadata, prepared.example), metadata)
        metadata["speed"] = [c.to_dict() for c in choices]
    outputs = write_forms(final, program, prepared.example, out, options, metadata, graphs)
    return Conversion(outputs, metadata, quantized.layers)


@dataclass
class SpeedPlan:
    """``--prefer speed``: what re-converting with more layers in FP32 needs (the statistics
    before conversion uses them, and the FP32 graph), and the per-shape choice (``qcli.speed``)."""

    loaded: LoadedModel
    prepared: Prepared
    options: ConvertOptions
    samples: tuple[Tensor, ...] | None
    stats: Any
    fp32_graph: Any

    @classmethod
    def of(
        cls, loaded: LoadedModel, prepared: Prepared, options: ConvertOptions, samples: tuple[Tensor, ...] | None
    ) -> SpeedPlan:
        from qcli.search import snapshot

        if prepared.mode != "static":
            raise OptionError(
                f"{{prefer}} speed chooses between INT8 and FP32 kernels in static mode, not {prepared.mode}"
            )
        return cls(
            loaded, prepared, options, samples, snapshot(prepared, loaded), layer_report.fp32_reference(prepared.graph)
        )

    def rebuild(self, fp32: tuple[str, ...]) -> Any:
        """The finalized INT8 graph with the modules ``fp32`` (too) kept in FP32."""
        from qcli.calibrate import apply_stats, prepare

        p = self.prepared
        trial = prepare(self.loaded, p.example, p.spec, p.mode, p.exclude + fp32, p.weights)
        apply_stats(trial, self.stats, self.loaded.sha256, fill_from=self.samples)
        reference = layer_report.fp32_reference(trial.graph) if self.options.bias_correction else None
        converted = quantize(trial, self.options.method, self.options.percentile, self.samples)
        if reference is not None and self.samples is not None:
            layer_report.bias_correct(reference, converted, self.samples)
        return finalize(converted)

    def choose(self, final: Any, shapes: list[Any], metadata: dict[str, Any]) -> tuple[list[Any], dict[Any, Any]]:
        """Each package shape's choice, and the graphs of the shapes that keep layers in FP32."""
        from qcli import speed
        from qcli.artifact import shape_example

        specs = list(metadata.get("inputs") or [])
        choices, graphs = [], {}
        for s in shapes:
            shape = (s, None) if isinstance(s, int) else (int(s[0]), s[1])
            args = shape_example(self.prepared.example, specs, shape)
            choice, chosen = speed.choose(shape, args, final, self.fp32_graph, self.rebuild)
            choices.append(choice)
            if chosen is not final:
                graphs[shape] = chosen
        return choices, graphs


def artifact_metadata(
    loaded: LoadedModel, prepared: Prepared, options: ConvertOptions, provenance: Provenance, quantized: Quantized
) -> dict[str, Any]:
    """The artifact's JSON metadata, apart from what the exported program itself decides."""
    from qcli.artifact import base_metadata

    static = prepared.mode == "static"
    return {
        **base_metadata(),
        "mode": prepared.mode,
        "method": options.method if static else "dynamic",
        # 7-bit activations (static) or weights (dynamic): made on a CPU without INT8 dot products
        "reduced_range": hardware.reduced_range() and prepared.mode != "weight-only",
        "percentile": options.percentile if options.method == "percentile" and static else None,
        "source": {
            "file": loaded.path.name,
            "sha256": loaded.sha256,
            "format": loaded.format,
            "arch": loaded.arch.target if loaded.arch else None,
            "arch_kwargs": loaded.arch.kwargs if loaded.arch else None,
            "task": loaded.task,
            "parameters": loaded.num_parameters,
            "size_bytes": loaded.size_bytes,
        },
        "config": provenance.config,
        "calibration": provenance.calibration,
        "layers": [layer.to_dict() for layer in quantized.layers],
        "per_layer": quantized.per_layer,
        "search": provenance.search,
        "bias_correction": quantized.bias_correction,
        "suggested_exclude": layer_report.suggestions(quantized.per_layer) if quantized.per_layer else [],
    }


def fixed_sizes_refusal() -> OptionError:
    return OptionError(
        "{package_shapes} is for models whose inputs have a sequence dimension; this model's inputs have "
        "fixed sizes: use {package_batch_sizes}"
    )


def package_shapes(options: ConvertOptions, metadata: dict[str, Any], example: tuple[Tensor, ...]) -> list[Any]:
    """What the package is compiled for: batch sizes, or for a model whose inputs have a ``seq``
    dimension, (batch, length) shapes (``--package-shapes``, else each batch size at the longest
    length seen in calibration)."""
    if not any(has_seq(s) for s in metadata.get("inputs") or []):
        if options.package_shapes:
            raise fixed_sizes_refusal()
        return list(options.package_batch_sizes)
    if options.package_shapes:
        return list(options.package_shapes)
    lengths = (metadata.get("calibration") or {}).get("sequence_lengths")
    longest = int(lengths[1]) if lengths else int(example[0].shape[1])
    return [(b, longest) for b in options.package_batch_sizes]


def write_forms(
    final: Any,
    program: Any,
    example: tuple[Tensor, ...],
    out: Path,
    options: ConvertOptions,
    metadata: dict[str, Any],
    graphs: dict[Any, Any] | None = None,
) -> dict[str, str]:
    """Write the package and/or the program (``options.form``); returns form → path.

    ``both`` writes both files or neither: the program goes to a temporary file first, the package
    into place, and the program is moved into place last; a failure or an interrupt anywhere
    before that leaves no file, and one during the last move removes the package again.
    """
    from qcli.artifact import write_package, write_program
    from qcli.files import atomic_output

    sizes = package_shapes(options, metadata, example) if options.form != "program" else []
    share = options.package_weights == "shared"
    if options.form == "package":
        write_package(final, example, out, metadata, sizes, share, graphs)
        return {"package": str(out)}
    if options.form == "program":
        write_program(program, out, metadata)
        return {"program": str(out)}
    target = program_path(out)
    package_written = False
    try:
        with atomic_output(target) as tmp_program:
            write_program(program, tmp_program, metadata)
            write_package(final, example, out, metadata, sizes, share, graphs)
            package_written = True
    except BaseException:
        if package_written:
            out.unlink(missing_ok=True)
        raise
    return {"package": str(out), "program": str(target)}
