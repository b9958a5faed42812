"""Stage 7: what a model or an INT8 artifact holds, for ``qcli inspect``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qcli import hardware
from qcli.artifact import read_metadata, shared_models
from qcli.convert import LayerQuant
from qcli.data import infer_input_spec
from qcli.files import sha256_file
from qcli.load import AOTI_PACKAGE, TORCHSCRIPT, ArchSpec, LoadedModel, detect_format, is_qcli_artifact, load_model
from qcli.reports import CpuInfo, InspectArtifactReport, InspectModelReport, ModelInput, ModelLayer

QUANTIZED_TYPES = {"static": ("Conv1d", "Conv2d", "Conv3d", "Linear"), "dynamic": ("Linear",)}


def describe(
    path: Path, arch: ArchSpec | None = None, trust_model: bool = False, task: str | None = None
) -> InspectModelReport | InspectArtifactReport:
    """What a model file (or model folder) or a qcli artifact holds."""
    if path.is_dir():
        return describe_model(path, arch, trust_model, task)
    fmt = detect_format(path)
    if fmt == AOTI_PACKAGE or is_qcli_artifact(path):
        return describe_artifact(path)
    return describe_model(path, arch, trust_model, task)


def describe_model(
    path: Path, arch: ArchSpec | None, trust_model: bool = False, task: str | None = None
) -> InspectModelReport:
    loaded = load_model(path, arch, trust_model, task)
    spec = infer_input_spec(loaded.module)
    notes, quantizable = _torchscript_notes(loaded)
    layers = _layers(loaded.module, quantizable)
    return InspectModelReport(
        path=str(path),
        format=loaded.format,
        size_bytes=loaded.size_bytes,
        sha256=loaded.sha256,
        parameters=loaded.num_parameters,
        inputs=[
            ModelInput(n, r, spec.channels if i == 0 and spec.channels else None)
            for i, (n, r) in enumerate(zip(spec.names, spec.ranks, strict=True))
        ],
        layers=layers,
        quantizable_layers=sum(1 for la in layers if la.quantized_static),
        quantizable=quantizable,
        notes=notes,
        cpu=cpu_info(),
    )


def _torchscript_notes(loaded: LoadedModel) -> tuple[list[str], bool]:
    """Notes for a TorchScript archive, and whether it can become one static graph."""
    if loaded.format != TORCHSCRIPT:
        return [], True
    from qcli.torchscript import WHAT_TO_DO, problems

    found = problems(loaded.module)
    if found:
        return [f"this TorchScript cannot be quantized: {'; '.join(found)}; {WHAT_TO_DO}"], False
    return [
        "TorchScript that qcli can quantize: it is converted to a graph (TS2EPConverter) whose "
        "convolutions, batch norms and linears become modules again, then quantized like a state dict"
    ], True


def _layers(module: Any, quantizable: bool) -> list[ModelLayer]:
    """Each module that holds parameters of its own, and what each mode does with it."""
    layers = []
    for name, child in module.named_modules():
        own = list(child.named_parameters(recurse=False))
        if not own:
            continue
        kind = getattr(child, "original_name", type(child).__name__)
        weight = dict(own).get("weight")
        layers.append(
            ModelLayer(
                name=name,
                type=kind,
                folded=kind.startswith("BatchNorm"),  # folded into the preceding convolution when quantizing
                weight_shape=list(weight.shape) if weight is not None else None,
                parameters=sum(p.numel() for _, p in own),
                quantized_static=kind in QUANTIZED_TYPES["static"] and quantizable,
                quantized_dynamic=kind in QUANTIZED_TYPES["dynamic"] and quantizable,
            )
        )
    return layers


def cpu_info() -> CpuInfo:
    return CpuInfo(**hardware.explain())


def describe_artifact(path: Path) -> InspectArtifactReport:
    meta = read_metadata(path)
    layers = [LayerQuant(**{k: la.get(k) for k in LayerQuant.__dataclass_fields__}) for la in meta.get("layers", [])]
    calibration = meta.get("calibration") or {}
    return InspectArtifactReport(
        path=str(path),
        format=meta["format"],
        format_version=meta["format_version"],
        form=meta["form"],
        size_bytes=path.stat().st_size,
        sha256=sha256_file(path),
        graph_sha256=meta.get("graph_sha256"),
        mode=meta.get("mode"),
        method=meta.get("method"),
        written_by={k: meta.get(k) for k in ("qcli_version", "torch_version", "torchao_version")},
        source=meta.get("source"),
        inputs=meta.get("inputs"),
        outputs=meta.get("outputs"),
        config=meta.get("config"),
        calibration={
            "samples": calibration.get("samples"),
            "files": calibration.get("count"),
            "root": calibration.get("root"),
            "stats_sha256": calibration.get("stats_sha256"),
        },
        compiled_for={
            "cpu_capability": meta.get("cpu_capability"),
            "isa": meta.get("compiled_isa"),
            "shapes": [f"{s['batch']}x{s['length']}" for s in meta["package_shapes"]]
            if meta.get("package_shapes")
            else [str(b) for b in sorted(int(b) for b in meta["package_models"])],
            "shared_weights": shared_models(path),
            "fp32_for_speed": _per_speed_shape(meta, "fp32_layers"),
            "matmul_for_speed": _per_speed_shape(meta, "matmul_layers"),
        }
        if meta["form"] == "package"
        else None,
        layers=layers,
        quantized_layers=sum(1 for la in layers if la.quantized),
        per_layer=meta.get("per_layer"),
        suggested_exclude=meta.get("suggested_exclude") or [],
        cpu=cpu_info(),
    )


def _per_speed_shape(meta: dict[str, Any], key: str) -> dict[str, list[str]]:
    """``--prefer speed``: compiled shape ("1", "16x128") -> its ``key`` list, where not empty."""
    return {
        f"{c['batch']}x{c['length']}" if c.get("length") else str(c["batch"]): c[key]
        for c in meta.get("speed") or []
        if c.get(key)
    }
