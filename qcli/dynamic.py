"""Dynamic and weight-only INT8 of linear layers, written in plain torch ops.

``rewrite`` replaces each ``aten.linear`` of an exported graph whose weight is a stored tensor by
one of the two functions below, with the weight quantized once (symmetric INT8, one scale per
output channel):

- ``dynamic``: activations are quantized per call, one symmetric scale per token (row), so an
  outlier token does not cost the others their precision; ``_int_mm`` multiplies INT8 by INT8.
- ``weight-only``: the weight is stored as INT8 and widened to the input's dtype for the matmul.

The artifact needs nothing but torch: the functions trace into aten ops, and Inductor's freezing
passes recognise both shapes (``_int_mm`` → ``mul`` → ``mul`` becomes a oneDNN INT8 linear;
``linear(x, w.to(x.dtype)) * scales`` becomes ``_weight_int8pack_mm``). Embeddings, LayerNorm and
integer inputs are untouched: only linear layers change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qcli import graph as graph_helpers
from qcli import hardware, private

if TYPE_CHECKING:  # torch is imported when a function runs, never when qcli is imported
    from torch import Tensor
    from torch.fx import GraphModule, Node


QMAX = 127  # symmetric INT8: -127..127, so a scale maps +max and -max alike
REDUCED_QMAX = 63  # 7-bit weights, on CPUs without INT8 dot products (hardware.reduced_range)


def weight_int8(weight: Tensor, qmax: int = QMAX) -> tuple[Any, Any]:
    """Per-output-channel symmetric INT8 of a ``[out, in]`` weight: ``(int8 weight, scales [out])``.

    ``scale = max|w_row| / qmax``; an all-zero row gets the smallest positive scale (its INT8 row
    is 0). ``qmax`` is 127, or 63 on CPUs where full-range products saturate (``hardware.reduced_range``).
    """
    import torch

    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / qmax).clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.round(w / scale[:, None]).clamp(-qmax, qmax).to(torch.int8)
    return q, scale


def int8_dynamic_linear(x: Tensor, weight_t: Tensor, w_scale: Tensor, bias: Any) -> Any:
    """``x @ W.T + b`` with ``x`` quantized per token on the fly: ``weight_t`` is the INT8 ``[in, out]``
    weight, ``w_scale`` its per-output scales. A token of zeros gets a tiny scale and stays zero."""
    import torch

    shape = x.shape
    rows = x.reshape(-1, shape[-1])
    x_scale = (rows.abs().amax(dim=1, keepdim=True) / QMAX).clamp(min=1e-12)
    xq = torch.round(rows / x_scale).clamp(-QMAX, QMAX).to(torch.int8)
    y = private.int_mm(xq, weight_t).to(torch.float32) * x_scale * w_scale
    y = y.reshape(*shape[:-1], weight_t.shape[1])
    return y if bias is None else y + bias


def int8_weight_only_linear(x: Tensor, weight: Tensor, w_scale: Tensor, bias: Any) -> Any:
    """``x @ W.T + b`` with ``W = weight * w_scale`` stored as INT8 ``[out, in]``."""
    import torch

    y = torch.nn.functional.linear(x, weight.to(x.dtype)) * w_scale
    return y if bias is None else y + bias


KERNELS: dict[str, Callable[..., Any]] = {"dynamic": int8_dynamic_linear, "weight-only": int8_weight_only_linear}
graph_helpers.REWRITTEN_LINEARS.update(KERNELS.values())


def dequantized_weight(node: Node, weight: Tensor, scale: Tensor) -> Any:
    """The ``[out, in]`` FP32 weight a rewritten linear computes with (its INT8 weight times the
    per-output scales), for the per-layer report."""
    w = weight.t() if node.target is int8_dynamic_linear else weight
    return w.float() * scale.float()[:, None]


def is_rewritten(node: Node) -> bool:
    return node.op == "call_function" and node.target in KERNELS.values()


def rewrite(gm: GraphModule, mode: str, excluded: tuple[str, ...]) -> Any:
    """Replace the graph's linear layers (weights held by the graph, not computed) in place and
    return ``gm``. Layers whose module path is in ``excluded`` or lies inside one of them stay FP32."""
    kernel = KERNELS[mode]
    # dynamic INT8 multiplies INT8 by INT8: 7-bit weights where products would saturate
    qmax = REDUCED_QMAX if mode == "dynamic" and hardware.reduced_range() else QMAX
    graph = gm.graph
    count = 0
    for node in list(graph.nodes):
        if not graph_helpers.is_linear(node):
            continue
        x, w, *rest = node.args
        bias = rest[0] if rest else None
        if getattr(w, "op", None) != "get_attr" or (bias is not None and getattr(bias, "op", None) != "get_attr"):
            continue
        name = graph_helpers.module_name(node)
        if any(name == e or name.startswith(e + ".") for e in excluded):
            continue
        weight = graph_helpers.get_attr(gm, str(w.target))
        if weight.ndim != 2 or not weight.is_floating_point():
            continue
        q, scale = weight_int8(weight, qmax)
        stored = q.t().contiguous() if mode == "dynamic" else q
        prefix = f"{name.replace('.', '_').replace('#', '_')}_int8_{count}"
        count += 1
        gm.register_buffer(f"{prefix}_weight", stored)
        gm.register_buffer(f"{prefix}_scale", scale)
        with graph.inserting_before(node):
            wq = graph.get_attr(f"{prefix}_weight")
            ws = graph.get_attr(f"{prefix}_scale")
            new = graph.call_function(kernel, (x, wq, ws, bias))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    gm.recompile()
    return gm
