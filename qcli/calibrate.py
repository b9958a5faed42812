"""Stage 3: run observers over calibration samples and keep their statistics.

``prepare`` exports the model (dynamic batch) and inserts PT2E observers; ``observe`` streams
batches through it; ``save_stats``/``load_stats`` keep the observers' state (min/max per tensor,
2048-bin histograms for activations, per-channel ranges for weights) in a safetensors file, so
``convert`` can reuse one calibration pass.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qcli import __version__, engine, graph
from qcli.data import Batch, InputSpec, SampleFolder
from qcli.errors import DataError, StatsError
from qcli.files import atomic_output, save_safetensors
from qcli.load import LoadedModel
from qcli.options import CalibrationOptions

if TYPE_CHECKING:  # torch is imported when a function runs, never when qcli is imported
    from torch import Tensor
    from torch.fx import GraphModule


if TYPE_CHECKING:  # torch is imported when a function runs, never when qcli is imported
    pass


STATS_FORMAT = "qcli-stats"
STATS_VERSION = 1


@dataclass
class Prepared:
    """An exported model with observers, and the example inputs it was traced with."""

    graph: GraphModule  # torch.fx.GraphModule
    example: tuple[Tensor, ...]
    spec: InputSpec
    mode: str
    weights: str = "per-channel"
    exclude: tuple[str, ...] = ()  # modules kept FP32 (dynamic/weight-only apply it at conversion)

    def run(self, batch: Batch) -> Any:
        args = args_for(batch.inputs, self.spec)
        try:
            return self.graph(*args)
        except AssertionError as exc:  # a shape guard export derived from the model
            if not str(exc).startswith("Guard failed"):
                raise
            shapes = ", ".join(f"{n} {list(t.shape)}" for n, t in batch.inputs.items())
            raise DataError(
                f"the model does not take samples of these shapes ({shapes}, from '{batch.files[0]}'): "
                f"{str(exc).removeprefix('Guard failed: ')} (for texts: lower --max-length)"
            ) from None


def args_for(inputs: dict[str, Any], spec: InputSpec) -> tuple[Any, ...]:
    """Positional arguments in the model's input order (trailing inputs may be left out)."""
    args = []
    for name in spec.names:
        if name not in inputs:
            break
        args.append(inputs[name])
    if not args or len(args) != len(inputs):
        raise DataError(f"samples give inputs {', '.join(inputs)} but the model takes {', '.join(spec.names)}")
    return tuple(args)


def example_from(batch: Batch, spec: InputSpec) -> tuple[Any, ...]:
    """Example inputs for export: the first sample repeated to batch 2 (batch 1 would specialise)."""
    return engine.first_row_repeated(args_for(batch.inputs, spec), 2)


def prepare(
    loaded: LoadedModel,
    example: tuple[Tensor, ...],
    spec: InputSpec,
    mode: str = "static",
    exclude: tuple[str, ...] = (),
    weights: str = "per-channel",
) -> Prepared:
    """Export and insert observers; modules named in ``exclude`` stay FP32.

    TorchScript is first turned into an equivalent module (``qcli.torchscript``). Dynamic and
    weight-only modes insert no observers: their graph is the exported FP32 model, rewritten at
    conversion (``qcli.dynamic``).
    """
    import torch

    module = loaded.module
    if isinstance(module, torch.jit.ScriptModule):
        from qcli import torchscript

        module = torchscript.to_module(module, example, loaded.path)
    program = engine.export(module, example, spec.names, sequence=spec.sequence)
    exported = program.module()
    graph.linears_in_other_clothes(exported)  # Conv1D's addmm, x @ W: linear layers too
    graph.explicit_conv_padding(exported)  # padding="same": a conv2d overload the quantizer refuses
    graph.whole_input_pooling(exported)  # EfficientNet's 1280x1280 average pooling: a mean
    if mode != "static":
        return Prepared(exported, example, spec, mode, weights, exclude)
    observed = engine.prepare_pt2e(exported, exclude, weights)
    return Prepared(observed, example, spec, mode, weights, exclude)


def observe(prepared: Prepared, batches: Iterable[Batch]) -> Iterator[Batch]:
    """Run each batch through the observers; yields the batches so callers can track progress."""
    import torch

    with torch.no_grad(), engine.quiet():
        for batch in batches:
            prepared.run(batch)
            yield batch


def stats_tensors(prepared: Prepared) -> dict[str, Any]:
    """Every observer's state as flat tensors: ``<observer>.<buffer>``."""
    out = {}
    for name, obs in graph.observers(prepared.graph).items():
        for key, value in obs.state_dict().items():
            out[f"{name}.{key}"] = value.detach().clone().contiguous()
    return out


def observer_kinds(prepared: Prepared) -> dict[str, str]:
    """Observer name → class name and the graph node it observes (to match stats to a graph)."""
    kinds = {}
    for node in graph.observer_nodes(prepared.graph):
        obs = prepared.graph.get_submodule(node.target)
        source = node.args[0].name if node.args else ""
        kinds[str(node.target)] = f"{type(obs).__name__}:{source}"
    return kinds


def save_stats(
    path: Path, prepared: Prepared, metadata: dict[str, Any], samples: tuple[Tensor, ...] | None = None
) -> None:
    """Write the statistics atomically with JSON metadata (model hash, files, config, input spec),
    and up to REPORT_SAMPLES calibration samples for the per-layer report."""
    header = {
        "format": STATS_FORMAT,
        "format_version": str(STATS_VERSION),
        "qcli": json.dumps(
            {
                **metadata,
                "qcli_version": __version__,
                "torch_version": _torch_version(),
                "torchao_version": engine.torchao_version(),
                "mode": prepared.mode,
                "observers": observer_kinds(prepared),
                "example_shapes": [list(t.shape[1:]) for t in prepared.example],
                "example_dtypes": [str(t.dtype).replace("torch.", "") for t in prepared.example],
                "input_names": list(prepared.spec.names),
            },
            sort_keys=True,
        ),
    }
    tensors = stats_tensors(prepared)
    for i, t in enumerate(samples or ()):
        tensors[f"{SAMPLE_PREFIX}{i}"] = t.contiguous()
    with atomic_output(path) as tmp:
        save_safetensors(tensors, header, tmp)


@dataclass(frozen=True)
class Stats:
    tensors: dict[str, Any]
    meta: dict[str, Any]
    path: Path

    def samples(self) -> tuple[Any, ...] | None:
        """The calibration samples kept in the file (inputs in call order), if any."""
        found = sorted(
            (int(k[len(SAMPLE_PREFIX) :]), v) for k, v in self.tensors.items() if k.startswith(SAMPLE_PREFIX)
        )
        return tuple(v for _, v in found) or None

    def example(self) -> tuple[Any, ...]:
        """Zero inputs of the recorded shapes (batch 2), to re-export the model without data."""
        import torch

        return tuple(
            torch.zeros([2, *shape], dtype=getattr(torch, dtype))
            for shape, dtype in zip(self.meta["example_shapes"], self.meta["example_dtypes"], strict=True)
        )


def load_stats(path: Path) -> Stats:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as exc:
        raise StatsError(
            f"'{path}' is not a qcli statistics file ({exc}); run `qcli calibrate` to make one", path=path
        ) from None
    if header.get("format") != STATS_FORMAT:
        raise StatsError(
            f"'{path}' is a safetensors file but not qcli statistics; run `qcli calibrate` to make one", path=path
        )
    if header.get("format_version") != str(STATS_VERSION):
        raise StatsError(
            f"'{path}' has statistics format version {header.get('format_version')}, this qcli reads "
            f"{STATS_VERSION}; run `qcli calibrate` again",
            path=path,
        )
    try:
        meta = json.loads(header["qcli"])
        example = [(list(map(int, shape)), str(dtype)) for shape, dtype in zip(
            meta["example_shapes"], meta["example_dtypes"], strict=True
        )]  # fmt: skip
        if not isinstance(meta.get("observers", {}), dict) or not example:
            raise ValueError("no observers or example shapes")
    except (KeyError, TypeError, ValueError) as exc:
        raise StatsError(
            f"statistics '{path}' have damaged metadata ({type(exc).__name__}: {exc}); run `qcli calibrate` again",
            path=path,
        ) from None
    return Stats(tensors, meta, path)


def check_stats(stats: Stats, model_sha256: str, mode: str) -> None:
    """Fail before any work when the statistics belong to another model, or lack the ranges static
    INT8 needs."""
    if stats.meta.get("model_sha256") != model_sha256:
        raise StatsError(
            f"statistics '{stats.path}' were computed for another model (sha256 "
            f"{str(stats.meta.get('model_sha256'))[:12]}…, this one {model_sha256[:12]}…); run `qcli calibrate` on this model",
            path=stats.path,
        )
    # dynamic and weight-only INT8 use only the example inputs and samples, which any mode's
    # statistics hold; static INT8 needs observed ranges
    if mode == "static" and stats.meta.get("mode") != mode:
        raise StatsError(
            f"statistics '{stats.path}' were collected for mode {stats.meta.get('mode')}, which observes no "
            "activation ranges; calibrate with --mode static for static INT8",
            path=stats.path,
        )


def apply_stats(
    prepared: Prepared, stats: Stats, model_sha256: str, fill_from: tuple[Any, ...] | None = None
) -> list[str]:
    """Load saved observer states into a freshly prepared graph of the same model.

    Observers are matched by what they observe (kind and graph node), so statistics collected with
    every layer quantized also serve a graph where ``--exclude`` left some layers in FP32. Such a
    graph can observe a tensor the full graph did not (the FP32 output of an excluded layer feeding
    an INT8 add): those observers are filled by running ``fill_from`` (the calibration samples kept
    in the statistics) through the graph; without samples that is an error. Returns the names of
    the observers filled that way.
    """
    check_stats(stats, model_sha256, prepared.mode)
    saved_by_kind: dict[str, str] = {}
    for saved_name, kind in (stats.meta.get("observers") or {}).items():
        saved_by_kind.setdefault(kind, saved_name)
    modules = graph.observers(prepared.graph)
    states, missing = {}, []
    for name, kind in observer_kinds(prepared).items():
        saved_name = saved_by_kind.get(kind)
        if saved_name is None:
            missing.append(name)
            continue
        prefix = f"{saved_name}."
        states[name] = {k[len(prefix) :]: v for k, v in stats.tensors.items() if k.startswith(prefix)}
    if missing:
        if fill_from is None:
            raise StatsError(
                f"statistics '{stats.path}' do not cover this model's quantization graph ({len(missing)} tensor(s) "
                "were not observed); calibrate again with this qcli/torch version and these --exclude settings",
                path=stats.path,
            )
        import torch

        with torch.no_grad(), engine.quiet():
            prepared.graph(*fill_from)
    for name, state in states.items():  # after the fill, so the saved states are exactly what is used
        modules[name].load_state_dict(state)
    return missing


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


@dataclass
class Calibration:
    """The result of a calibration pass: the observed graph, what it was computed from, and the
    first few samples (for the per-layer error report)."""

    prepared: Prepared
    manifest: dict[str, Any]
    samples: tuple[Tensor, ...] | None = None


REPORT_SAMPLES = 32  # calibration samples kept for the per-layer report
REPORT_SAMPLES_MAX_BYTES = 16 << 20
SAMPLE_PREFIX = "qcli.sample."


def keep_samples(kept: list[tuple[Any, ...]], args: tuple[Tensor, ...]) -> None:
    """Append a batch's rows to ``kept`` until REPORT_SAMPLES rows (and at most 16 MiB) are kept."""
    if kept and any(k.shape[1:] != a.shape[1:] for k, a in zip(kept[0], args, strict=True)):
        return  # another sequence length: the kept samples stack into one batch
    have = sum(int(a[0].shape[0]) for a in kept)
    room = REPORT_SAMPLES - have
    size = sum(t.element_size() * t[:1].numel() for t in args)
    if room <= 0 or (have + 1) * size > REPORT_SAMPLES_MAX_BYTES:
        return
    room = min(room, max(1, REPORT_SAMPLES_MAX_BYTES // max(size, 1) - have))
    kept.append(tuple(t[:room].clone() for t in args))


def stack_samples(kept: list[tuple[Any, ...]]) -> tuple[Any, ...] | None:
    import torch

    if not kept:
        return None
    return tuple(torch.cat(parts) for parts in zip(*kept, strict=True))


Track = Callable[[Iterable[Batch], int | None], Iterable[Batch]]  # wraps a batch stream (progress bars)


def identity_track(items: Iterable[Batch], total: int | None) -> Iterable[Batch]:
    return items


def calibrate(
    loaded: LoadedModel,
    folder: SampleFolder,
    options: CalibrationOptions | None = None,
    *,
    exclude: tuple[str, ...] = (),
    weights: str = "per-channel",
    track: Track = identity_track,
) -> Calibration:
    """Export the model with the first sample's shape, then stream the folder through observers.

    ``track(batches, total_samples)`` may wrap the batch stream (the CLI shows a progress bar).
    """
    from itertools import chain

    from qcli.data import infer_input_spec

    options = options or CalibrationOptions()
    mode, batch_size, limit = options.mode, options.batch_size, options.limit
    spec = infer_input_spec(loaded.module)
    batches = folder.batches(spec, batch_size, limit)
    first = next(batches, None)
    if first is None:
        raise DataError(
            f"calibration folder '{folder.root}' holds no samples (its files hold zero rows); pass a folder of samples",
            path=folder.root,
        )
    check_dtypes(first, spec)
    prepared = prepare(loaded, example_from(first, spec), spec, mode, exclude, weights)
    total = min(limit, len(folder.files)) if limit else len(folder.files)
    used: list[str] = []
    kept: list[tuple[Any, ...]] = []
    lengths: set[int] = set()
    for batch in track(observe(prepared, chain([first], batches)), total):
        used.extend(batch.files)
        args = args_for(batch.inputs, spec)
        keep_samples(kept, args)
        if spec.sequence and args[0].ndim >= 2:
            lengths.add(int(args[0].shape[1]))
    seq = {"sequence_lengths": [min(lengths), max(lengths)]} if lengths else {}
    return Calibration(
        prepared,
        {**folder.manifest(used), "samples": len(used), "batch_size": batch_size, "limit": limit, **seq},
        stack_samples(kept),
    )


def check_dtypes(batch: Batch, spec: InputSpec) -> None:
    """A convolutional model takes floats: integer samples would be silently wrong or fail in export."""
    if spec.ranks[0] is None:
        return
    tensor = batch.inputs[spec.single]
    if not tensor.is_floating_point():
        raise DataError(
            f"samples ('{batch.files[0]}') hold {str(tensor.dtype).replace('torch.', '')} values but the model's "
            "first layer is a convolution that takes floats; save normalised float tensors, or images"
        )
