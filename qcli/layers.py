"""Per-layer error report: how far each conv/linear layer's INT8 output is from FP32.

Both graphs come from the same export: the FP32 one is the observed graph before conversion
(batch norms already folded into the convolutions, observers removed), the INT8 one the converted
graph. Layers are matched by module path and call order. For each layer the report gives:

- ``output_sqnr_db``: SQNR of the layer's output on calibration samples. The INT8 graph runs end to
  end, so the figure includes the error that earlier layers passed on: the layer where it drops
  is where accuracy is lost.
- ``weight_sqnr_db``: SQNR of the dequantized INT8 weights against the (folded) FP32 weights.
- ``input_range``: the activation range chosen for the layer's input, from its scale and zero point.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

from qcli import engine, graph, metrics
from qcli.graph import LayerKey

if TYPE_CHECKING:  # torch is imported when a function runs, never when qcli is imported
    from torch import Tensor
    from torch.fx import GraphModule


SUGGEST_BELOW_DB = 20.0  # layers under this output SQNR are named as --exclude candidates
SUGGEST_AT_MOST = 3


def fp32_reference(prepared_graph: GraphModule) -> Any:
    """A copy of the observed graph with every observer replaced by identity: plain FP32."""
    import torch

    with engine.quiet():  # deepcopy of a graph module warns about torch's own pytree internals
        copied = copy.deepcopy(prepared_graph)
    for name in graph.observers(copied):
        copied.delete_submodule(name)
        copied.add_submodule(name, torch.nn.Identity())
    return copied


def _record(gm: GraphModule, args: tuple[Tensor, ...], nodes: dict[LayerKey, Any]) -> dict[LayerKey, tuple[Any, Any]]:
    """Run ``gm`` on ``args``; return each layer's (weight value, output value)."""
    import torch

    by_node = {node: key for key, node in nodes.items()}
    weight_nodes = {node.args[1]: key for key, node in nodes.items()}
    by_node_of_weight = {node.args[1]: node for node in nodes.values()}
    out: dict[LayerKey, list[Any]] = {key: [None, None] for key in nodes}

    from qcli import dynamic

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n: Any) -> Any:
            result = super().run_node(n)
            if n in by_node:
                out[by_node[n]][1] = result.detach()
                if dynamic.is_rewritten(n):  # INT8 weight and scales: the weight it computes with
                    weight, scale = self.env[n.args[1]], self.env[n.args[2]]
                    out[by_node[n]][0] = dynamic.dequantized_weight(n, weight, scale)
            if n in weight_nodes and not dynamic.is_rewritten(by_node_of_weight[n]):
                out[weight_nodes[n]][0] = result.detach()
            return result

    with torch.no_grad(), engine.quiet():
        Recorder(gm).run(*args)
    return {key: (w, y) for key, (w, y) in out.items()}


def per_layer_errors(
    fp32_graph: GraphModule, int8_graph: GraphModule, batches: list[tuple[Any, ...]], layer_info: list[Any]
) -> list[dict[str, Any]]:
    """The report, worst layer first (quantized layers only)."""
    fp_nodes, q_nodes = graph.layer_nodes(fp32_graph), graph.layer_nodes(int8_graph)
    keys = [k for k in q_nodes if k in fp_nodes]
    sums = {k: [0.0, 0.0] for k in keys}
    weights: dict[LayerKey, float] = {}
    for args in batches:
        ref, got = (
            _record(fp32_graph, args, {k: fp_nodes[k] for k in keys}),
            _record(int8_graph, args, {k: q_nodes[k] for k in keys}),
        )
        for k in keys:
            (w_ref, y_ref), (w_q, y_q) = ref[k], got[k]
            s, e = metrics.power_sums(y_ref.float(), y_q.float())
            sums[k][0] += s
            sums[k][1] += e
            if k not in weights and w_ref is not None and w_q is not None and w_ref.shape == w_q.shape:
                weights[k] = metrics.sqnr_db(*metrics.power_sums(w_ref.float(), w_q.float()))
    info = {layer.name: layer for layer in layer_info}
    rows = []
    for name, call in keys:
        layer = info.get(name)
        if layer is None or not layer.quantized:
            continue
        scale, zp = layer.input_scale, layer.input_zero_point
        rows.append(
            {
                "name": name if call == 0 else f"{name}#{call}",
                "op": layer.op,
                "output_sqnr_db": _finite(metrics.sqnr_db(*sums[(name, call)])),
                "weight_sqnr_db": _finite(weights.get((name, call))),
                "input_range": [scale * (0 - zp), scale * (255 - zp)] if scale is not None and zp is not None else None,
            }
        )
    rows.sort(key=lambda r: r["output_sqnr_db"] if r["output_sqnr_db"] is not None else math.inf)
    return rows


def _finite(value: float | None) -> float | None:
    """JSON has no infinity: an exact match (no noise) is reported as None."""
    return value if value is not None and math.isfinite(value) else None


def suggestions(rows: list[dict[str, Any]]) -> list[str]:
    """The worst layers (output SQNR under SUGGEST_BELOW_DB), as --exclude candidates."""
    worst = [r for r in rows if r["output_sqnr_db"] is not None and r["output_sqnr_db"] < SUGGEST_BELOW_DB]
    return list(dict.fromkeys(r["name"].split("#")[0] for r in worst))[:SUGGEST_AT_MOST]


def bias_correct(fp32_graph: GraphModule, int8_graph: GraphModule, samples: tuple[Tensor, ...]) -> list[dict[str, Any]]:
    """Bias correction: for each quantized layer in graph order, add the mean (per output channel)
    of FP32 output minus INT8 output on the samples to the layer's bias, so the INT8 layer is not
    systematically off. Layers are corrected one after the other (each sees the earlier fixes).
    Layers without a bias tensor are left alone. Returns what was changed."""
    import torch

    fp_nodes, q_nodes = graph.layer_nodes(fp32_graph), graph.layer_nodes(int8_graph)
    reference = _record(fp32_graph, samples, fp_nodes)
    changes = []
    for key, node in q_nodes.items():
        if key not in reference or len(node.args) < 3:
            continue
        weight, bias = node.args[1], node.args[2]
        if graph.dequantize_kind(weight) is None or getattr(bias, "op", None) != "get_attr":
            continue
        _, y_ref = reference[key]
        _, y_q = _record(int8_graph, samples, {key: node})[key]
        # channels: dim 1 of a convolution's output, the last dim of a linear's ([..., out_features])
        channel = y_ref.dim() - 1 if graph.is_linear(node) else 1
        dims = [d for d in range(y_ref.dim()) if d != channel]
        delta = (y_ref.float() - y_q.float()).mean(dim=dims)
        tensor = graph.get_attr(int8_graph, str(bias.target))
        if tensor.shape != delta.shape:
            continue
        # a new tensor, not add_: a bias the conversion did not fold (a Linear's) is still the
        # source module's own parameter, which must stay FP32's
        owner_path, _, attr = str(bias.target).rpartition(".")
        owner = graph.get_attr(int8_graph, owner_path) if owner_path else int8_graph
        corrected = tensor.detach() + delta.to(tensor.dtype)
        if isinstance(tensor, torch.nn.Parameter):
            corrected = torch.nn.Parameter(corrected, requires_grad=False)
        setattr(owner, attr, corrected)
        changes.append({"name": key[0], "mean_abs_shift": float(delta.abs().mean())})
    return changes
