"""The torch/torchao engine behind qcli: quiet imports, export with a dynamic batch, the quantizer.

torchao prints warnings about CUDA extensions on import and torch 2.13 prints deprecation notices
for APIs torchao still touches; none of them concern a CPU user, so ``quiet()`` hides them.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any

from qcli.errors import UnsupportedModel

_NOISY_LOGGERS = ("torchao", "torch.utils._pytree", "torch._inductor", "torch._dynamo", "torch.export", "torch._export")
MODES = ("static", "dynamic", "weight-only")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence library warnings and log lines that are noise for users; restore them afterwards."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def torchao_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torchao")
    except PackageNotFoundError:
        return None


def export(module: Any, example_args: tuple[Any, ...], names: tuple[str, ...], sequence: bool = False) -> Any:
    """``torch.export`` with the batch dimension of every input dynamic (1 to 4096).

    With ``sequence`` (models without a convolution in front: token ids, masks, feature
    sequences), dimension 1 of every input of rank 2 or more is left for export to decide
    (``Dim.AUTO``): it stays dynamic unless the model fixes it (a Linear over features does), so
    the program runs any sequence length the model itself accepts.
    """
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = tuple(
        {0: batch, 1: torch.export.Dim.AUTO} if sequence and t.ndim >= 2 else {0: batch} for t in example_args
    )
    with quiet():
        try:
            return torch.export.export(module, example_args, dynamic_shapes=dynamic)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UnsupportedModel(
                f"torch.export cannot trace the model ({type(exc).__name__}: {first}); qcli needs a "
                "model without data-dependent Python control flow"
            ) from exc


def first_row_repeated(tensors: tuple[Any, ...], batch: int) -> tuple[Any, ...]:
    """Each tensor's first row repeated ``batch`` times: example inputs of a chosen batch size."""
    return tuple(t[:1].repeat(batch, *([1] * (t.ndim - 1))) for t in tensors)


WEIGHTS = ("per-channel", "per-tensor")


def quantizer(exclude: tuple[str, ...] = (), weights: str = "per-channel") -> Any:
    """X86 Inductor quantizer for static INT8: symmetric INT8 weights, per channel (default) or per
    tensor; activations with calibrated ranges. Modules named in ``exclude`` (and everything inside
    them) stay FP32. (Dynamic and weight-only INT8 do not use it: see ``qcli.dynamic``.)

    Asymmetric INT8 weights are not offered: torchao's X86 quantizer rejects such a weight spec
    ("Unsupported quantization_spec"), as its oneDNN kernels take symmetric weights.
    """
    if weights not in WEIGHTS:
        raise UnsupportedModel(
            f"--weights {weights} is not supported (use {' or '.join(WEIGHTS)}); asymmetric INT8 weights are "
            "rejected by the X86 quantizer, whose kernels take symmetric weights"
        )
    with quiet():
        import torch
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq

        config = xiq.get_default_x86_inductor_quantization_config()
        if weights == "per-tensor":
            from torchao.quantization.pt2e.observer import MinMaxObserver
            from torchao.quantization.pt2e.quantizer import QuantizationConfig, QuantizationSpec

            spec = QuantizationSpec(
                dtype=torch.int8,
                quant_min=-128,
                quant_max=127,
                qscheme=torch.per_tensor_symmetric,
                is_dynamic=False,
                observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12),
            )
            config = QuantizationConfig(
                config.input_activation, config.output_activation, spec, config.bias, config.is_qat
            )
        q = xiq.X86InductorQuantizer()
        q.set_global(config)
        for name in exclude:
            q.set_module_name_qconfig(name, None)
    return q


def split_reused_modules(gm: Any) -> None:
    """Give each call of a reused module (one ``nn.ReLU`` applied twice, as in ResNet) its own name.

    The X86 quantizer groups graph nodes into partitions by the module they came from; two calls of
    one module make a partition with two outputs, which it rejects ("Input partition has more than
    one output node"). Nodes of one module that are not connected to each other are separate calls,
    so the 2nd, 3rd... get ``#1``, ``#2``... appended to their innermost module path.
    """
    groups: dict[str, list[Any]] = {}
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack") if node.op == "call_function" else None
        if stack:
            groups.setdefault(list(stack.values())[-1][0], []).append(node)
    for fqn, nodes in groups.items():
        members = set(nodes)
        parent = {n: n for n in nodes}
        for n in nodes:
            for arg in n.all_input_nodes:
                if arg in members:
                    parent[_root(parent, n)] = _root(parent, arg)
        roots: list[Any] = []
        for n in nodes:
            root = _root(parent, n)
            if root not in roots:
                roots.append(root)
            call = roots.index(root)
            if call:
                stack = dict(n.meta["nn_module_stack"])
                key = list(stack)[-1]
                stack[key] = (f"{fqn}#{call}", stack[key][1])
                n.meta["nn_module_stack"] = stack


def _root(parent: dict[Any, Any], node: Any) -> Any:
    """Union-find root of ``node``."""
    while parent[node] is not node:
        node = parent[node]
    return node


def prepare_pt2e(graph: Any, exclude: tuple[str, ...] = (), weights: str = "per-channel") -> Any:
    """Insert static-INT8 observers (see ``quantizer``)."""
    split_reused_modules(graph)
    with quiet():
        from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e as _prepare

        return _prepare(graph, quantizer(exclude, weights))


def convert_pt2e(prepared: Any) -> Any:
    with quiet():
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e as _convert

        return _convert(prepared)


def observers(prepared: Any) -> dict[str, Any]:
    """The observer modules PT2E inserted, by name, in graph order."""
    order = [
        n.target for n in prepared.graph.nodes if n.op == "call_module" and "activation_post_process" in str(n.target)
    ]
    return {name: prepared.get_submodule(name) for name in order}


def drop_provenance(program: Any) -> None:
    """Remove ``from_node`` provenance from an exported program's nodes before saving it: it
    records ``id()`` of intermediate graphs (memory addresses), so every run would save different
    bytes. It is debugging information only; the graph and its other metadata are untouched."""
    for module in program.graph_module.modules():
        graph = getattr(module, "graph", None)
        for node in graph.nodes if graph is not None else ():
            node.meta.pop("from_node", None)


def graph_digest(program: Any) -> str:
    """SHA-256 of an exported program's code and of every weight and constant, in name order:
    identifies the INT8 model itself, whatever bytes a compiler wraps around it."""
    import hashlib

    import torch

    digest = hashlib.sha256(program.graph_module.code.encode())
    tensors = {**program.state_dict, **program.constants}
    for name in sorted(tensors):
        value = tensors[name]
        digest.update(name.encode())
        if isinstance(value, torch.Tensor):
            value = value.detach().contiguous().cpu()
            digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
            digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def strip_shape_asserts(gm: Any) -> None:
    """Drop ``aten._assert_tensor_metadata`` checks that ``torch.export`` puts after dtype casts.

    They are a second user of the ``_int_mm`` result, which stops Inductor from matching the
    INT8 linear pattern (``_int_mm`` stays a plain extern call: 1.3x instead of 1.8x on a 6-layer
    encoder). They check nothing the graph does not already guarantee.
    """
    import torch

    target = torch.ops.aten._assert_tensor_metadata.default
    for module in gm.modules():
        graph = getattr(module, "graph", None)
        if graph is None:
            continue
        for node in [n for n in graph.nodes if n.op == "call_function" and n.target is target]:
            graph.erase_node(node)
        module.recompile()


def get_attr(module: Any, target: str) -> Any:
    """The attribute a graph's ``get_attr`` node names (``layer1.conv1.0.weight``), by walking the path."""
    obj = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
