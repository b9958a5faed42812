"""Stage 7: what a model or an INT8 artifact holds, for ``qcli inspect``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qcli import hardware
from qcli.artifact import read_metadata
from qcli.data import infer_input_spec
from qcli.files import sha256_file
from qcli.load import AOTI_PACKAGE, TORCHSCRIPT, ArchSpec, detect_format, is_qcli_artifact, load_model

SCHEMA_VERSION = 1
QUANTIZED_TYPES = {"static": ("Conv1d", "Conv2d", "Conv3d", "Linear"), "dynamic": ("Linear",)}


def describe(path: Path, arch: ArchSpec | None = None, trust_model: bool = False) -> dict[str, Any]:
    """A JSON-ready description of a model file or a qcli artifact."""
    fmt = detect_format(path)
    if fmt == AOTI_PACKAGE or is_qcli_artifact(path):
        return describe_artifact(path)
    return describe_model(path, arch, trust_model)


def describe_model(path: Path, arch: ArchSpec | None, trust_model: bool = False) -> dict[str, Any]:
    loaded = load_model(path, arch, trust_model)
    spec = infer_input_spec(loaded.module)
    notes = []
    quantizable = True
    if loaded.format == TORCHSCRIPT:
        from qcli.torchscript import WHAT_TO_DO, problems

        found = problems(loaded.module)
        quantizable = not found
        notes.append(
            "TorchScript that qcli can quantize: it is converted to a graph (TS2EPConverter) whose "
            "convolutions, batch norms and linears become modules again, then quantized like a state dict"
            if quantizable
            else f"this TorchScript cannot be quantized: {'; '.join(found)}; {WHAT_TO_DO}"
        )
    layers = []
    for name, module in loaded.module.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not own:
            continue
        kind = getattr(module, "original_name", type(module).__name__)
        weight = dict(own).get("weight")
        folded = kind.startswith("BatchNorm")  # folded into the preceding convolution when quantizing
        layers.append(
            {
                "name": name,
                "type": kind,
                "folded": folded,
                "weight_shape": list(weight.shape) if weight is not None else None,
                "parameters": sum(p.numel() for _, p in own),
                "quantized_static": kind in QUANTIZED_TYPES["static"] and quantizable,
                "quantized_dynamic": kind in QUANTIZED_TYPES["dynamic"] and quantizable,
            }
        )
    return {
        "schema_version": SCHEMA_VERSION,
        "command": "inspect",
        "kind": "model",
        "path": str(path),
        "format": loaded.format,
        "size_bytes": loaded.size_bytes,
        "sha256": loaded.sha256,
        "parameters": loaded.num_parameters,
        "inputs": [
            {"name": n, "rank": r, **({"channels": spec.channels} if i == 0 and spec.channels else {})}
            for i, (n, r) in enumerate(zip(spec.names, spec.ranks, strict=True))
        ],
        "layers": layers,
        "quantizable_layers": sum(1 for la in layers if la["quantized_static"]),
        "quantizable": quantizable,
        "notes": notes,
        "cpu": hardware.explain(),
    }


def describe_artifact(path: Path) -> dict[str, Any]:
    meta = read_metadata(path)
    layers = meta.get("layers", [])
    calibration = meta.get("calibration") or {}
    return {
        "schema_version": SCHEMA_VERSION,
        "command": "inspect",
        "kind": "artifact",
        "path": str(path),
        "format": meta["format"],
        "format_version": meta["format_version"],
        "form": meta["form"],
        "size_bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "graph_sha256": meta.get("graph_sha256"),
        "mode": meta.get("mode"),
        "method": meta.get("method"),
        "written_by": {k: meta.get(k) for k in ("qcli_version", "torch_version", "torchao_version")},
        "source": meta.get("source"),
        "inputs": meta.get("inputs"),
        "outputs": meta.get("outputs"),
        "config": meta.get("config"),
        "calibration": {
            "samples": calibration.get("samples"),
            "files": calibration.get("count"),
            "root": calibration.get("root"),
            "stats_sha256": calibration.get("stats_sha256"),
        },
        "compiled_for": {"cpu_capability": meta.get("cpu_capability"), "isa": meta.get("compiled_isa")}
        if meta["form"] == "package"
        else None,
        "layers": layers,
        "quantized_layers": sum(1 for la in layers if la.get("quantized")),
        "per_layer": meta.get("per_layer"),
        "suggested_exclude": meta.get("suggested_exclude") or [],
        "cpu": hardware.explain(),
    }
