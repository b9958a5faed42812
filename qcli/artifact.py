"""Stage 5: the INT8 artifact on disk, in two forms that plain PyTorch loads.

- ``package``: an AOTInductor package (``.pt2``), compiled ahead of time under ``torch.no_grad()``
  with weight freezing (without no_grad it runs at FP32 speed), one compiled model per batch size.
  Loads with ``torch._inductor.aoti_load_package`` (the first batch size) or
  ``torch._inductor.package.load_package(path, "batch16")`` (a model with its own weights; one that
  reads the default model's, ``SharedWeights``, only through ``load_artifact``) and runs at once;
  it is tied to the CPU ISA it was built for.
- ``program``: a portable exported program (``torch.export.save``). Loads with
  ``torch.export.load`` after ``import torch.ao.quantization.fx._decomposed``; ``torch.compile``
  with ``torch._inductor.config.freezing = True`` then gives INT8 speed.

Both carry qcli's metadata (JSON): format and version, the versions that wrote it, the source
model's hash, the config, the calibration manifest, the quantized layers and, for the package, the
CPU features it was compiled for. Both are written atomically.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qcli import __version__, engine, hardware, matmul, private
from qcli import graph as graph_helpers
from qcli.errors import ArtifactError
from qcli.files import atomic_output, fix_serialization_id, require_file
from qcli.load import AOTI_PACKAGE, EXPORTED_PROGRAM, QCLI_EXTRA, detect_format, first_line

if TYPE_CHECKING:  # torch is imported when a function runs, never when qcli is imported
    from torch import Tensor
    from torch.fx import GraphModule


ARTIFACT_FORMAT = "qcli-int8"
ARTIFACT_VERSION = 1
FORMS = ("package", "program", "both")
PACKAGE_METADATA_KEY = "qcli"


def base_metadata() -> dict[str, Any]:
    import torch

    return {
        "format": ARTIFACT_FORMAT,
        "format_version": ARTIFACT_VERSION,
        "qcli_version": __version__,
        "torch_version": str(torch.__version__),
        "torchao_version": engine.torchao_version(),
    }


Shape = tuple[int, int | None]  # (batch size, sequence length or None) of one compiled model


def package_model_name(batch_size: int, first: bool, length: int | None = None) -> str:
    """Name of the compiled model for one shape inside a package (the first is the default)."""
    if first:
        return "model"
    return f"batch{batch_size}" if length is None else f"batch{batch_size}_len{length}"


def package_names(shapes: list[Shape]) -> dict[Shape, str]:
    """Each shape's model name: ``model`` for the first, ``batch<N>`` for a batch size compiled at
    one length, ``batch<N>_len<L>`` where a batch size has several."""
    lengths_of: dict[int, set[int | None]] = {}
    for b, n in shapes:
        lengths_of.setdefault(b, set()).add(n)
    return {
        (b, n): package_model_name(b, i == 0, n if len(lengths_of[b]) > 1 else None) for i, (b, n) in enumerate(shapes)
    }


def has_seq(spec: dict[str, Any]) -> bool:
    """Whether an input (an item of the metadata's ``inputs``) has a ``seq`` dimension."""
    return (spec.get("shape") or [])[1:2] == ["seq"]


def at_length(example: tuple[Tensor, ...], specs: list[dict[str, Any]], length: int) -> tuple[Tensor, ...]:
    """The inputs with their sequence dimension (``seq`` in ``specs``) cut or padded to ``length``,
    padded with each input's recorded ``pad`` value (0 when it records none)."""
    import torch

    out = []
    for t, spec in zip(example, specs + [{}] * (len(example) - len(specs)), strict=True):
        if not has_seq(spec) or t.shape[1] == length:
            out.append(t)
        elif t.shape[1] > length:
            out.append(t[:, :length].contiguous())
        else:
            fill = torch.full((t.shape[0], length - t.shape[1], *t.shape[2:]), spec.get("pad", 0), dtype=t.dtype)
            out.append(torch.cat([t, fill], dim=1))
    return tuple(out)


def shape_example(example: tuple[Tensor, ...], specs: list[dict[str, Any]], shape: Shape) -> tuple[Tensor, ...]:
    """The example inputs of one compiled shape: (batch size, sequence length or None)."""
    b, n = shape
    return engine.first_row_repeated(at_length(example, specs, n) if n is not None else example, b)


# how every package model is compiled (write_package adds the metadata; qcli.speed times its
# candidates compiled the same way)
PACKAGE_OPTIONS: dict[str, Any] = {"aot_inductor.package": True, "freezing": True}


def package_module(graph: Any, args: tuple[Any, ...]) -> Any:
    """``graph`` exported for the shape of ``args``, its shape assertions stripped: what
    AOTInductor compiles into one package model."""
    import torch

    module = torch.export.export(graph, args).module()
    graph_helpers.strip_shape_asserts(module)
    return module


def write_package(
    graph: GraphModule,
    example: tuple[Tensor, ...],
    path: Path,
    metadata: dict[str, Any],
    shapes: list[int] | list[Shape],
    share_weights: bool = True,
    graphs: dict[Shape, GraphModule] | None = None,
) -> None:
    """AOT-compile ``graph`` once per shape (frozen weights, no autograd) into one package.

    ``shapes`` are batch sizes, or (batch size, sequence length) pairs for a model whose inputs
    have a ``seq`` dimension (``metadata["inputs"]``): each is a static shape. In torch 2.13 an
    AOTInductor package of a quantized program with a dynamic batch dimension *and* weight
    freezing computes wrong results (top-1 agreement 0 on the demo), while without freezing it
    runs at FP32 speed. The first shape is the package's default model (``package_names``).

    With ``share_weights``, a model whose constants are the default model's, byte for byte (packed
    oneDNN weights included), is compiled without them and stored under ``data/qcli/`` with the
    map qcli's loader uses to hand it the default model's (``SharedWeights``). A graph with
    convolutions is not tried: oneDNN packs convolution weights per input shape (MobileNetV2: 14 of
    its packed weights differ between batch 1 and 4), and a check that failed would cost a compile.

    ``graphs`` gives some shapes a graph of their own (``convert --prefer speed``); such a package
    stores each model's weights.
    """
    import torch

    pairs: list[Shape] = [(s, None) if isinstance(s, int) else (int(s[0]), s[1]) for s in shapes]
    names = package_names(pairs)
    longest: dict[int, tuple[int, str]] = {}
    for (b, n), name in names.items():
        if b not in longest or (n or 0) > longest[b][0]:
            longest[b] = (n or 0, name)
    specs = list(metadata.get("inputs") or [])
    sequence = any(n is not None for _, n in pairs)
    meta = {
        **metadata,
        "form": "package",
        "cpu_capability": hardware.capability(),
        # a batch size's model (its longest length); "package_shapes" lists every model
        "package_models": {str(b): name for b, (_, name) in longest.items()},
        # oneDNN chooses the packed weight layout for this thread count; another count at run time
        # makes it re-pack some weights on every call
        "compiled_threads": torch.get_num_threads(),
        # oneDNN packs weights for the instruction set it may use; another limit at run time is slow
        "onednn_max_cpu_isa": hardware.onednn_isa_limit(),
    }
    if sequence:
        meta["package_shapes"] = [{"name": name, "batch": b, "length": n} for (b, n), name in names.items()]
    else:  # each model is compiled for the example's shape: a sequence dimension is fixed to its length
        meta["inputs"] = [{**item, "shape": ["batch", *t.shape[1:]]} for item, t in zip(specs, example, strict=False)]
    options = {**PACKAGE_OPTIONS, "aot_inductor.metadata": {PACKAGE_METADATA_KEY: json.dumps(meta, sort_keys=True)}}
    private.guard_inplace_fusions()  # a fused residual add must never write into the caller's input
    graphs = {shape: g for shape, g in (graphs or {}).items() if g is not graph}
    share_weights = share_weights and len(names) > 1 and not graphs and not graph_helpers.has_conv(graph)
    files: dict[str, Any] = {}
    shared: dict[str, SharedWeights] = {}
    default: dict[str, Any] = {}
    with (
        atomic_output(path) as tmp,
        torch.no_grad(),
        engine.quiet(),
        private.captured_aot_constants() as compiled,
    ):
        for (b, n), name in names.items():
            args = shape_example(example, specs, (b, n))
            chosen = graphs.get((b, n), graph)
            module = package_module(chosen, args)
            if default and share_weights:
                files[name] = private.aot_compile(
                    module, args, {**options, "aot_inductor.package_constants_in_so": False}
                )
                plan = SharedWeights.plan(default, compiled)
                if plan is not None:
                    shared[name] = plan
                    continue
                log.debug("package model %s: packed weights differ from the default model's; it keeps its own", name)
            files[name] = private.aot_compile(module, args, {**options, **matmul.compile_options(chosen)})
            default = default or dict(compiled)
        private.package_aoti(str(tmp), {name: f for name, f in files.items() if name not in shared})
        if shared:
            SharedWeights.add(tmp, {name: (files[name], plan) for name, plan in shared.items()})
        fix_serialization_id(tmp)


SHARED_DIR = "data/qcli"  # models without their own weights; torch's loaders do not look here
SHARED_MAP = "shared_weights.json"  # internal constant name -> the default model's name for it
SHARED_STORED = "constants.safetensors"  # the few small constants the default model names ambiguously


def shared_models(path: Path) -> list[str]:
    """The package's models stored without weights (``SharedWeights``), in archive order."""
    with zipfile.ZipFile(path) as zf:
        return [n.split("/")[-2] for n in zf.namelist() if f"/{SHARED_DIR}/" in n and n.endswith(f"/{SHARED_MAP}")]


@dataclass
class SharedWeights:
    """How a package model compiled without weights gets them: ``names`` maps each of its
    constants to the name the default model's runner gives the same tensor; ``stored`` holds the
    plain tensors that are its own (position embeddings folded at its sequence length) or that
    the name does not identify (the default model reports several scalar scales under one
    original name, e.g. 14 ``x_scale``), kept in the package."""

    names: dict[str, str]
    stored: dict[str, Tensor]

    @classmethod
    def plan(cls, default: dict[str, Any], own: dict[str, Any]) -> SharedWeights | None:
        """The plan for a model whose compile recorded ``own`` (``private.captured_aot_constants``),
        or None unless every constant equals the default model's, bytes, layout and strides."""
        import collections

        import torch

        base, mine = default["constants"], own["constants"]
        if set(base) != set(mine) or default["fqns"] != own["fqns"]:
            return None
        uses = collections.Counter(default["fqns"].values())
        names, stored = {}, {}
        for name, t in mine.items():
            b = base[name]
            if t.layout == torch.strided:
                same = (b.layout, b.dtype, b.shape, b.stride()) == (t.layout, t.dtype, t.shape, t.stride())
                same = same and torch.equal(b, t)
            else:
                same = (b.layout, b.dtype, b.shape) == (t.layout, t.dtype, t.shape)
                same = same and private.mkldnn_bytes(b) == private.mkldnn_bytes(t)
            if same and uses[default["fqns"][name]] == 1:
                names[name] = default["fqns"][name]
            elif t.layout == torch.strided and t.is_contiguous():  # e.g. position embeddings cut to the length
                stored[name] = t.detach().clone()
            else:  # a packed weight of its own
                return None
        return cls(names, stored)

    @staticmethod
    def add(path: Path, models: dict[str, tuple[list[Any], SharedWeights]]) -> None:
        """Append the weightless models to the package written at ``path``."""
        from safetensors.torch import save

        with zipfile.ZipFile(path, "a") as zf:
            root = zf.namelist()[0].split("/")[0]

            def put(name: str, data: bytes) -> None:  # dated like torch's records: the same bytes every time
                zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)

            for name, (files, plan) in models.items():
                folder = f"{root}/{SHARED_DIR}/{name}"
                for file in files:
                    if isinstance(file, str) and file:
                        put(f"{folder}/{os.path.basename(file)}", Path(file).read_bytes())
                put(f"{folder}/{SHARED_MAP}", json.dumps(plan.names, sort_keys=True).encode())
                if plan.stored:
                    put(f"{folder}/{SHARED_STORED}", save(plan.stored))

    @classmethod
    def read(cls, folder: Path) -> SharedWeights | None:
        """The plan extracted into ``folder``, or None for a model with its own weights."""
        from safetensors.torch import load_file

        names = next(folder.rglob(SHARED_MAP), None)
        if names is None:
            return None
        stored = next(folder.rglob(SHARED_STORED), None)
        return cls(json.loads(names.read_text(encoding="utf-8")), load_file(stored) if stored else {})

    def give(self, runner: Any, default: Any) -> dict[str, Any]:
        """Hand ``runner`` the default model's tensors (no copy) and the stored ones; returns them
        (the runner does not own them: keep them alive)."""
        constants = default.extract_constants_map(False)
        given = {name: constants[fqn] for name, fqn in self.names.items() if fqn in constants}
        given.update(self.stored)
        # the runner only warns about a missing buffer-like constant, and would run without it
        missing = sorted(set(runner.get_constant_names_to_original_fqns()) - set(given))
        if missing:
            raise RuntimeError(f"no weight for {', '.join(missing[:3])}")
        runner.update_constant_buffer(given, False, True, True)  # active buffer, every constant, user-managed
        return given


def write_program(program: Any, path: Path, metadata: dict[str, Any]) -> None:
    import torch

    meta = {**metadata, "form": "program"}
    with atomic_output(path) as tmp, engine.quiet():
        graph_helpers.drop_provenance(program)
        torch.export.save(program, str(tmp), extra_files={QCLI_EXTRA: json.dumps(meta, sort_keys=True)})
        fix_serialization_id(tmp)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """qcli's metadata of an artifact, read from the archive without loading any code."""
    path = Path(path)
    require_file(path, "artifact")
    fmt = detect_format(path)
    try:
        with zipfile.ZipFile(path) as zf:
            if fmt == AOTI_PACKAGE:
                name = next((n for n in zf.namelist() if n.endswith("wrapper_metadata.json")), None)
                raw = json.loads(zf.read(name)) if name else {}
                meta = json.loads(raw[PACKAGE_METADATA_KEY]) if PACKAGE_METADATA_KEY in raw else None
                if meta is not None:
                    meta["compiled_isa"] = raw.get("AOTI_CPU_ISA", "")
            elif fmt == EXPORTED_PROGRAM:
                name = next((n for n in zf.namelist() if n.endswith(f"/extra/{QCLI_EXTRA}")), None)
                meta = json.loads(zf.read(name)) if name else None
            else:
                meta = None
    except (zipfile.BadZipFile, json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"artifact '{path}' is damaged ({exc}); convert the model again", path=path) from None
    if not isinstance(meta, dict) or meta.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(
            f"'{path}' is not a qcli INT8 artifact (no qcli metadata); make one with `qcli convert`", path=path
        )
    if meta.get("format_version") != ARTIFACT_VERSION:
        raise ArtifactError(
            f"artifact '{path}' has format version {meta.get('format_version')}; this qcli reads "
            f"{ARTIFACT_VERSION}: convert the model again",
            path=path,
        )
    problem = _metadata_problem(meta)
    if problem:
        raise ArtifactError(f"artifact '{path}' has damaged metadata ({problem}); convert the model again", path=path)
    return meta


def _metadata_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with the fields qcli relies on, or None."""
    form = meta.get("form")
    if form not in ("package", "program"):
        return f"form {form!r}"
    models = meta.get("package_models")
    if form == "package" and not (
        isinstance(models, dict) and models and all(str(b).isdigit() and isinstance(n, str) for b, n in models.items())
    ):
        return f"package_models {models!r}"
    shapes = meta.get("package_shapes")
    if shapes is not None and not (
        isinstance(shapes, list)
        and shapes
        and all(
            isinstance(s, dict)
            and isinstance(s.get("name"), str)
            and all(isinstance(s.get(k), int) and s[k] > 0 for k in ("batch", "length"))
            for s in shapes
        )
    ):
        return f"package_shapes {shapes!r}"
    inputs = meta.get("inputs", [])
    if not isinstance(inputs, list) or not all(
        isinstance(i, dict) and isinstance(i.get("shape"), list) and isinstance(i.get("dtype"), str) for i in inputs
    ):
        return "inputs"
    layer_keys = {"name", "op", "quantized", "weight_dtype", "weight_scale_min", "weight_scale_max", "input_scale"}
    layers = meta.get("layers", [])  # the FP32 package `bench` compiles has none
    if not isinstance(layers, list) or not all(isinstance(la, dict) and layer_keys <= set(la) for la in layers):
        return "layers"
    for key in ("per_layer", "suggested_exclude", "outputs"):
        if meta.get(key) is not None and not isinstance(meta[key], list):
            return key
    for key in ("per_layer", "outputs"):
        if not all(isinstance(row, dict) for row in meta.get(key) or []):
            return key
    for key in ("source", "calibration", "config"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            return key
    return None


@dataclass
class Artifact:
    """A loaded INT8 artifact: call ``run(*inputs)``; ``metadata`` is qcli's JSON."""

    path: Path
    metadata: dict[str, Any]
    runner: Any

    @property
    def form(self) -> str:
        return str(self.metadata["form"])

    def run(self, *inputs: Any) -> Any:
        """The model's outputs for ``inputs`` (CPU tensors of the recorded dtypes and shapes).

        Runs in inference mode (outside it, autograd bookkeeping made a small ViT's package 50x
        slower: 480 ms against 9 ms per call). Inputs are converted where that loses nothing a
        model relies on (float64/float16 to float32, int32 to int64, a strided view made
        contiguous) and refused otherwise: AOTInductor reads the bytes it is given as its own
        dtype, and a float64 input gave silent garbage.
        """
        import torch

        inputs = self.prepare_inputs(inputs)
        self.check_inputs(inputs)
        with torch.inference_mode():
            out = self.runner(*inputs)
        if isinstance(out, (list, tuple)) and len(out) == 1:
            return out[0]
        return out

    def prepare_inputs(self, inputs: tuple[Tensor, ...]) -> tuple[Any, ...]:
        """Each input as a contiguous CPU tensor of the dtype the artifact records."""
        import torch

        specs = self.metadata.get("inputs") or []
        if specs and len(inputs) != len(specs):
            names = ", ".join(str(s.get("name")) for s in specs)
            raise ArtifactError(f"artifact '{self.path}' takes {len(specs)} input(s) ({names}), got {len(inputs)}")
        ready = []
        for spec, tensor in zip(specs or [{}] * len(inputs), inputs, strict=True):
            name = spec.get("name", "input")
            if not isinstance(tensor, torch.Tensor):
                raise ArtifactError(
                    f"artifact '{self.path}' input '{name}' must be a tensor, not {type(tensor).__name__}"
                )
            if tensor.device.type != "cpu":
                raise ArtifactError(
                    f"artifact '{self.path}' runs on the CPU; input '{name}' is on {tensor.device}: pass tensor.cpu()"
                )
            want = getattr(torch, str(spec.get("dtype", "")), None)
            if isinstance(want, torch.dtype) and tensor.dtype != want:
                if not _safe_cast(tensor.dtype, want):
                    raise ArtifactError(
                        f"artifact '{self.path}' input '{name}' takes {want} values, got {tensor.dtype}; convert it "
                        "yourself if that is what you mean"
                    )
                tensor = tensor.to(want)
            ready.append(tensor.contiguous())
        return tuple(ready)

    def check_inputs(self, inputs: tuple[Tensor, ...]) -> None:
        """Refuse inputs of a shape the artifact was not made for, naming what it takes. A ``seq``
        dimension takes the lengths seen in calibration (``calibration.sequence_lengths``); a
        package records the one length it was compiled for, or its lengths (``package_shapes``,
        checked when it runs)."""
        specs = self.metadata.get("inputs") or []
        lengths = (self.metadata.get("calibration") or {}).get("sequence_lengths")
        if self.metadata.get("package_shapes"):
            lengths = None  # any: run_package pads to a compiled length or refuses
        for spec, tensor in zip(specs, inputs, strict=False):
            want, got = spec.get("shape", [])[1:], list(getattr(tensor, "shape", []))[1:]
            ok = len(want) == len(got)
            for w, g in zip(want, got, strict=False):
                if w == "seq":
                    lo, hi = lengths or (g, g)
                    ok = ok and lo <= g <= hi
                elif isinstance(w, int):
                    ok = ok and w == g
            if not ok:
                takes = [
                    ("seq " + (f"{lengths[0]}..{lengths[1]}" if lengths else "any")) if w == "seq" else w for w in want
                ]
                raise ArtifactError(
                    f"artifact '{self.path}' input '{spec.get('name')}' takes shape [batch, "
                    f"{', '.join(map(str, takes))}] but got {list(tensor.shape)}"
                    + (
                        "; sequence lengths outside those seen in calibration were never checked: calibrate "
                        "with samples of these lengths"
                        if "seq" in want
                        else ""
                    ),
                    path=self.path,
                )


def _safe_cast(have: Any, want: Any) -> bool:
    """Float to float, and integer to an integer type holding all its values, lose nothing a
    model relies on."""
    import torch

    if have.is_floating_point and want.is_floating_point:
        return True
    integers = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)
    if have not in integers or want not in integers:
        return False
    return torch.iinfo(want).min <= torch.iinfo(have).min and torch.iinfo(have).max <= torch.iinfo(want).max


def package_runner(path: Path, name: str, default: Any = None) -> Any:
    """One compiled model of a package, callable with the model's inputs.

    ``torch._inductor.package.load_package`` imports Inductor (1.8 s here) and loads every model of
    the package before returning one (2.2 s more for MobileNetV2's two). qcli runs the one model's
    compiled library with torch's C++ model runner instead: the first INT8 result comes 0.07 s
    after the call instead of 4 s.

    It also moves the pre-packed oneDNN weights to 64-byte-aligned memory (``realign_weights``).
    A model stored without weights (``SharedWeights``) is given the default model's: ``default``
    is that model's ``package_runner`` when the caller has it, else it is loaded here.
    """
    runner_class = private.aoti_runner_class()
    with tempfile.TemporaryDirectory(prefix="qcli-package-") as tmp:
        with zipfile.ZipFile(path) as zf:
            folders = (f"/data/aotinductor/{name}/", f"/{SHARED_DIR}/{name}/")
            zf.extractall(tmp, [n for n in zf.namelist() if any(f in n for f in folders)])
        library = next(Path(tmp).rglob("*.so"), None)
        if library is None:
            raise ArtifactError(f"artifact '{path}' has no compiled model '{name}'; convert the model again", path=path)
        shared = SharedWeights.read(Path(tmp))
        if runner_class is None:  # another torch build: the public, slower way
            if shared is not None:
                raise ArtifactError(
                    f"artifact '{path}': model '{name}' shares the default model's weights, which needs torch's "
                    "AOTInductor model runner; convert with --package-weights copies",
                    path=path,
                )
            return private.load_package(str(path), name)
        runner = runner_class(str(library), 1)  # loads the library and reads its files now
    if shared is None:
        weights = realign_weights(runner)
    else:
        default = default if default is not None else package_runner(path, package_model_name(0, True))
        try:
            weights = {"default": default, **shared.give(runner, default.runner)}
        except (KeyError, RuntimeError) as exc:
            raise ArtifactError(
                f"artifact '{path}' is damaged (model '{name}' does not match the default model's weights: "
                f"{first_line(exc)}); convert the model again",
                path=path,
            ) from None

    def run(*inputs: Any) -> Any:
        outputs = runner.run(list(inputs))
        return outputs[0] if len(outputs) == 1 else outputs

    run.weights = weights  # type: ignore[attr-defined]  # the runner uses them: keep them alive
    run.runner = runner  # type: ignore[attr-defined]  # a shared model reads the weights from it
    return run


def realign_weights(runner: Any) -> dict[str, Any]:
    """Give the runner copies of its oneDNN weights in 64-byte-aligned memory; returns the copies.

    AOTInductor copies a package's weights into one ``malloc`` block, which glibc returns 16 bytes
    past a 64-byte boundary for large sizes, so every weight straddles cache lines. oneDNN's AMX
    and AVX-512 convolution kernels then ran up to 1.3x slower on the same primitive (ResNet-18,
    batch 16, 2 threads: 37.8 ms against 28.2 ms with the copies; outputs identical). The copies
    (``clone`` of a ``torch._mkldnn`` tensor keeps its packed layout) come from torch's allocator,
    which aligns to 64 bytes. Only weights whose name is unique in the model are replaced (several
    scale constants share one original name); the original block stays allocated.
    """
    import collections

    try:
        names = runner.get_constant_names_to_original_fqns()
        constants = runner.extract_constants_map(False)
    except (AttributeError, RuntimeError):  # a torch without these runner methods: leave it as it is
        return {}
    uses = collections.Counter(names.values())
    mkldnn = private.mkldnn_layout()
    copies = {
        internal: constants[original].clone()
        for internal, original in names.items()
        if uses[original] == 1 and original in constants and constants[original].layout == mkldnn
    }
    if copies:
        runner.update_constant_buffer(copies, False, False, True)  # active buffer, partial, user-managed
    return copies


def split_batch(batch: int, sizes_desc: list[int]) -> list[int] | None:
    """Greedy split of ``batch`` rows into compiled batch sizes (largest first); None if impossible.

    With 1 among the sizes every batch splits; e.g. 37 with [16, 1] gives [16, 16, 1, 1, 1, 1, 1].
    """
    plan, left = [], batch
    for size in sizes_desc:
        while left >= size:
            plan.append(size)
            left -= size
    return plan if left == 0 else None


class PackageRunner:
    """Runs a package's compiled models: splits a batch into the compiled batch sizes and, for a
    model compiled at several sequence lengths (``package_shapes``), pads the inputs to the
    shortest compiled length that holds them and cuts the per-token outputs back.

    Padding needs an ``attention_mask`` input (recorded as each input's ``pad`` value): without one
    only the compiled lengths run.
    """

    def __init__(self, path: Path, meta: dict[str, Any], runners: dict[Shape, Any]) -> None:
        self.path, self.meta, self.runners = path, meta, runners
        self.specs = list(meta.get("inputs") or [])
        self.lengths = sorted({n for _, n in runners if n is not None})
        self.pads = bool(self.specs) and all("pad" in s for s in self.specs if has_seq(s))
        # outputs with a dimension of the sequence's length: index → dimensions
        self.token_outputs = {int(k): list(v) for k, v in (meta.get("token_outputs") or {}).items()}

    def sequence_length(self, inputs: tuple[Tensor, ...]) -> int | None:
        """The inputs' common sequence length (None when no input has a ``seq`` dimension)."""
        seq = [int(t.shape[1]) for t, s in zip(inputs, self.specs, strict=False) if has_seq(s)]
        if len(set(seq)) > 1:
            raise ArtifactError(f"artifact '{self.path}': inputs have different sequence lengths {seq}", path=self.path)
        return seq[0] if seq else None

    def length_for(self, inputs: tuple[Tensor, ...], n: int | None = None) -> int | None:
        """The compiled length to run ``inputs`` (of sequence length ``n``, found when not given)
        at; None for a package without lengths."""
        if not self.lengths:
            return None
        n = n if n is not None else self.sequence_length(inputs)
        n = n if n is not None else self.lengths[-1]
        fits = [length for length in self.lengths if length >= n] if self.pads else [n] * (n in self.lengths)
        if not fits:
            compiled = ", ".join(map(str, self.lengths))
            how = "at most" if self.pads else "exactly"
            raise ArtifactError(
                f"artifact '{self.path}' was compiled for sequence lengths {compiled} and takes {how} those; got "
                f"{n}: convert with --package-shapes including the lengths you serve (e.g. 1x{n},16x{n})",
                path=self.path,
            )
        return fits[0]

    def __call__(self, *inputs: Any) -> Any:
        n = self.sequence_length(inputs) if self.lengths else None
        length = self.length_for(inputs, n)
        n = n if n is not None else length
        if length is not None and length != n:
            inputs = at_length(tuple(inputs), self.specs, length)
        out = self.run_batches({b: r for (b, m), r in self.runners.items() if m == length}, inputs)
        if length is None or length == n or not self.token_outputs:
            return out
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        for index, dims in self.token_outputs.items():
            if index < len(outs):
                for dim in dims:
                    outs[index] = outs[index].narrow(dim, 0, n)
        return outs if isinstance(out, (list, tuple)) else outs[0]

    def run_batches(self, runners: dict[int, Any], inputs: tuple[Tensor, ...]) -> Any:
        """Run the compiled model of this batch size, or split the batch into compiled sizes."""
        import torch

        batch = int(inputs[0].shape[0])
        if batch in runners:
            return runners[batch](*inputs)
        plan = split_batch(batch, sorted(runners, reverse=True))
        if plan is None:
            sizes = ", ".join(str(b) for b in sorted(runners))
            raise ArtifactError(
                f"artifact '{self.path}' was compiled for batch sizes {sizes} and cannot run a batch of {batch}; "
                "convert with --package-batch-sizes including 1, or use the program form (any batch size)",
                path=self.path,
            )
        outs, start = [], 0
        for size in plan:
            out = runners[size](*(t[start : start + size] for t in inputs))
            outs.append(out if isinstance(out, (list, tuple)) else [out])
            start += size
        return [torch.cat(parts) for parts in zip(*outs, strict=True)]


def load_artifact(
    path: str | os.PathLike[str], compile_cache: str | os.PathLike[str] | None = None, trust_model: bool = False
) -> Artifact:
    """Load either form, checking format version and (for a package) the CPU features it needs.

    A program is compiled on its first call of each input shape. With ``compile_cache`` (or the
    ``QCLI_COMPILE_CACHE`` environment variable) naming a folder, that compile is an AOTInductor
    package kept there (``CompiledCache``), so later starts load it in a fraction of a second.
    A program's pickles are scanned before it is loaded (``qcli.scan``) unless ``trust_model``;
    a package is native code and cannot be scanned: load only packages you made or trust.

    Example:
        >>> artifact = load_artifact("digits-int8.pt2")
        >>> logits = artifact.run(torch.randn(1, 1, 28, 28))
    """
    import torch

    path = Path(path)
    meta = read_metadata(path)
    if meta["form"] == "package":
        missing = hardware.missing_for(meta.get("compiled_isa", ""))
        if missing:
            raise ArtifactError(
                f"artifact '{path}' was compiled for {meta.get('compiled_isa')} but this CPU lacks "
                f"{', '.join(missing)}; convert again on this machine or use --form program",
                path=path,
            )
        limit = hardware.isa_limit_warning(meta)
        if limit:
            log.warning("%s", limit)
        with engine.quiet():
            shapes: dict[Shape, str]
            if meta.get("package_shapes"):
                shapes = {(int(s["batch"]), int(s["length"])): s["name"] for s in meta["package_shapes"]}
            else:
                shapes = {(int(b), None): name for b, name in meta["package_models"].items()}
            default_name = package_model_name(0, True)
            default = package_runner(path, default_name)
            runners = {
                shape: default if name == default_name else package_runner(path, name, default)
                for shape, name in shapes.items()
            }
        return Artifact(path, meta, PackageRunner(path, meta, runners))
    from qcli.scan import check_archive

    check_archive(path, trust_model)
    cache = Path(compile_cache) if compile_cache is not None else compile_cache_from_env()
    if cache is not None:
        return Artifact(path, meta, CompiledCache(path, meta, cache))
    module = load_program_module(path)
    private.inductor_config().freezing = True
    private.guard_inplace_fusions()
    # static shapes: recompiling this frozen INT8 graph with a dynamic batch (the default on the
    # second batch size) generates code that asserts wrong strides in torch 2.13; each new batch
    # size compiles once (a few seconds) instead
    compiled = torch.compile(module, dynamic=False)

    def run(*inputs: Any) -> Any:
        with torch.no_grad(), engine.quiet():
            return compiled(*inputs)

    return Artifact(path, meta, run)


def load_program_module(path: Path) -> Any:
    """The exported program's module, with the shape checks that stop Inductor's INT8 fusions removed."""
    import torch
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers the quantize ops)

    with engine.quiet():
        program = torch.export.load(str(path))
    module = program.module()
    graph_helpers.strip_shape_asserts(module)
    return module


log = logging.getLogger("qcli")
COMPILE_CACHE_ENV = "QCLI_COMPILE_CACHE"


def compile_cache_from_env() -> Path | None:
    value = os.environ.get(COMPILE_CACHE_ENV, "").strip()
    return Path(value).expanduser() if value else None


class CompiledCache:
    """The program form's compiles, kept as AOTInductor packages in a folder (``QCLI_COMPILE_CACHE``).

    ``torch.compile`` redoes all of Inductor's work on every start of a program form: Inductor's
    graph cache refuses an INT8 graph ("mkldnn tensors unpickleable": the pre-packed oneDNN
    weights), so only its C++ compiles are reused and a start took 6-9 s with a warm cache. Here the
    first call of a shape compiles a package for it (about as long as a cold ``torch.compile``);
    every later start with that shape loads the package with the C++ loader. A package is specific
    to the artifact's bytes, the input shapes and dtypes, the thread count (oneDNN's weight layout),
    the CPU's feature flags and the torch and qcli versions: its file name is a hash of all of them.

    A package is native code that the process loads, so the folder must be the user's own: it is
    created 0700, and one that another user owns or that group or others can write is refused.
    Compiles happen under a lock file (``.lock``), so processes that start together compile a
    shape once; the lock holder also removes temporary folders a killed writer left. A cached
    package that cannot be loaded, or that needs CPU features this machine lacks, is deleted and
    compiled again, with a warning.
    """

    LOCK = ".lock"

    def __init__(self, path: Path, metadata: dict[str, Any], folder: Path) -> None:
        from qcli.files import sha256_file

        self.path, self.metadata, self.folder = path, metadata, folder
        self.artifact_sha256 = sha256_file(path)
        self.runners: dict[Any, Any] = {}
        self.module: GraphModule | None = None

    def package_path(self, inputs: tuple[Tensor, ...]) -> Path:
        import hashlib

        import torch

        key = {
            "artifact_sha256": self.artifact_sha256,
            "inputs": [[list(t.shape), str(t.dtype)] for t in inputs],
            "threads": torch.get_num_threads(),
            "cpu_flags": hashlib.sha256(" ".join(sorted(hardware.cpu_flags())).encode()).hexdigest(),
            "cpu_capability": hardware.capability(),
            "torch": str(torch.__version__),
            "qcli": __version__,
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        return self.folder / f"{self.path.stem}-{digest}.pt2"

    def __call__(self, *inputs: Any) -> Any:
        shapes = tuple((tuple(t.shape), t.dtype) for t in inputs)
        runner = self.runners.get(shapes)
        if runner is None:
            runner = self.runners[shapes] = self.load_or_compile(inputs)
        return runner(*inputs)

    def check_folder(self) -> None:
        """Create the folder 0700, or refuse one that others could put a package in."""
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = self.folder.stat()
        except OSError as exc:
            raise ArtifactError(
                f"compile cache folder '{self.folder}' cannot be created ({exc.strerror or exc}); "
                f"point {COMPILE_CACHE_ENV} at a writable folder or unset it",
                path=self.path,
            ) from None
        if info.st_uid != os.getuid() or info.st_mode & 0o022:
            raise ArtifactError(
                f"compile cache folder '{self.folder}' can be written by other users (owner uid {info.st_uid}, "
                f"mode {info.st_mode & 0o777:o}); it holds native code this process loads: use a folder of your "
                f"own (chmod 700) for {COMPILE_CACHE_ENV}",
                path=self.path,
            )

    def load_or_compile(self, inputs: tuple[Tensor, ...]) -> Any:
        self.check_folder()
        package = self.package_path(inputs)
        runner = self.load(package)
        if runner is not None:
            return runner
        with self.locked():
            runner = self.load(package)  # another process may have compiled it while we waited
            if runner is None:
                self.remove_stale()
                self.compile(package, inputs)
                runner = self.load(package)
        if runner is None:
            raise ArtifactError(f"the package compiled into '{package}' cannot be loaded", path=self.path)
        return runner

    def load(self, package: Path) -> Any:
        """The cached package's runner; None when there is none, or it was unusable (then deleted)."""
        if not package.is_file():
            return None
        try:
            meta = read_metadata(package)
            missing = hardware.missing_for(meta.get("compiled_isa", ""))
            if missing:
                raise ArtifactError(f"it was compiled for a CPU with {', '.join(missing)}")
            with engine.quiet():
                return package_runner(package, "model")
        except Exception as exc:  # a damaged or foreign file: compile the shape again
            log.warning("compile cache entry '%s' cannot be used (%s); compiling it again", package, first_line(exc))
            package.unlink(missing_ok=True)
            return None

    def compile(self, package: Path, inputs: tuple[Tensor, ...]) -> None:
        if self.module is None:
            self.module = load_program_module(self.path)
        metadata = {k: v for k, v in self.metadata.items() if k != "form"}
        metadata["compiled_from"] = {"artifact": self.path.name, "sha256": self.artifact_sha256}
        write_package(self.module, tuple(inputs), package, metadata, [int(inputs[0].shape[0])])

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """An exclusive lock on the folder, held while compiling (and cleaning)."""
        import fcntl

        with open(self.folder / self.LOCK, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def remove_stale(self) -> None:
        """Temporary folders left by a writer that was killed (only called under the lock, when no
        other writer can be at work)."""
        for leftover in self.folder.glob(".*.tmp"):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
