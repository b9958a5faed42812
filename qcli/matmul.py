"""INT8 convolutions computed as INT8 matrix products (``convert --prefer speed``).

Torch's INT8 convolution operator sets up a oneDNN primitive, a scratchpad and its output on
every call, about 30 µs, which a small convolution at batch 1 never repays: the demo's DigitNet
spends about 300 of its 360 µs in that set-up. Inductor's C++ matrix-product template has no such
wrapper: with ``max_autotune`` it generates each product's code at compile time (AMX or AVX-512
VNNI micro-kernels where the CPU has them) and times it against oneDNN's, keeping the faster.

``convs_as_matmuls`` rewrites a finalized INT8 graph so that each eligible convolution
(2-D, one group, no dilation, INT8 input and per-channel INT8 weight) becomes:

1. the INT8 input, padded with its zero point (which dequantizes to exactly 0), in channels-last
   order, unfolded into one row per output position (``im2col``: a gather of bytes, no arithmetic);
2. an INT8 ``linear`` over those rows with the weight reshaped to (out, kh*kw*in) and its columns
   padded to a multiple of 4 (the template's INT8 micro-kernels take K in steps of 4; a padded
   column has weight 0 and input at the zero point, so it adds nothing);
3. the pointwise steps that followed the convolution up to its quantize step (ReLU, ReLU6,
   PReLU, a residual add, ...) moved onto the product's rows, so Inductor fuses them, and the
   quantize, into the product's epilogue and the next gather reads bytes; the rows are then
   viewed back as (N, C, H, W) (channels-last strides). A ReLU or ReLU6 whose bounds lie outside
   the range of the quantize step after it is left out: that step clamps to its range anyway
   (``_within_quantize_range``), and oneDNN's INT8 linear, which Inductor may choose for a large
   product, fuses the quantize step but not a ReLU6.

The arithmetic is the convolution's: the same INT8 values, weights, scales and zero points,
int32 accumulation. Run eagerly, the rewritten graph differs from the original only by the order
its FP32 sums are added in (tests: cosine above 0.9999 on five architectures).
Whether it is faster depends on the model and the batch size, so ``qcli.speed`` measures the
rewritten package model against the plain one per batch size and keeps the faster only with 95%
confidence. DigitNet, 2-core Xeon with AMX, same process: batch 1 0.14 against 0.36 ms, batch 16
1.7 against 0.9 ms (the rows are 9 times the input at batch 16). Scopes limited to small outputs
are tried too (``SCOPES``): on MobileNetV2 at batch 1 the model gains with only the convolutions
of at most 784 or 196 output rows as products (4.03 against 4.38 ms, 4.07 against 4.30 ms) and
loses with all of them (6.1 against 4.5 ms).
"""

from __future__ import annotations

import copy
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from qcli import engine, graph

if TYPE_CHECKING:  # torch is imported when a function runs, never when qcli is imported
    from torch.fx import GraphModule, Node

# how a package model with INT8 matrix products is compiled, on top of artifact.PACKAGE_OPTIONS:
# Inductor's C++ template is only considered under max_autotune, which times it against oneDNN's
# (and would write its choices to stderr)
COMPILE_OPTIONS: dict[str, Any] = {
    "max_autotune": True,
    "max_autotune_gemm_backends": "CPP,ATEN",
    "max_autotune_report_choices_stats": False,
}
META_KEY = "qcli_compile_options"  # GraphModule.meta entry: extra compile options for its package model
SHAPE_KEY = "qcli_shape"  # Node.meta entry: the shape of a rewritten convolution's result

# the convolutions rewritten: None (all eligible) or at most this many output rows per call
# (batch x output height x width); a product's rows are a copy of the input per kernel tap
SCOPES: tuple[int | None, ...] = (None, 1024, 256)
K_STEP = 4  # the template's INT8 micro-kernels take the reduction dimension in steps of 4
ROUNDING_MARGIN = 1e-3  # in quantization steps (see _within_quantize_range)


def compile_options(gm: Any) -> dict[str, Any]:
    """The compile options a graph asks for beyond the package defaults (``{}`` for most)."""
    meta = getattr(gm, "meta", None)
    return dict(meta.get(META_KEY) or {}) if isinstance(meta, dict) else {}


def _conv_args(node: Node) -> tuple[Any, ...]:
    """(input, weight, bias, stride, padding, dilation, groups) of an ``aten.conv2d.default`` call."""
    defaults = (None, None, None, [1, 1], [0, 0], [1, 1], 1)
    args = tuple(node.args) + defaults[len(node.args) :]
    return tuple(node.kwargs.get(k, a) for k, a in zip(("input", "weight", "bias", "stride", "padding",
                                                           "dilation", "groups"), args, strict=True))  # fmt: skip


def eligible(gm: GraphModule, batch: int | None = None) -> list[tuple[Node, int | None]]:
    """The convolutions ``convs_as_matmuls`` can rewrite, each with its output rows per call
    (None when unknown; ``batch`` stands for a symbolic batch dimension)."""
    import torch

    found = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target is not torch.ops.aten.conv2d.default:
            continue
        x, w, _, _, padding, dilation, groups = _conv_args(node)
        out = node.meta.get("val")
        if groups != 1 or list(dilation) != [1, 1] or len(padding) != 2 or out is None or out.dim() != 4:
            continue
        if graph.dequantize_kind(x) != "per_tensor" or graph.dequantize_kind(w) != "per_channel":
            continue
        xq, wq = x.args[0], w.args[0]
        if getattr(xq, "op", None) == "placeholder" or getattr(wq, "op", None) != "get_attr" or w.args[3] != 0:
            continue
        n, _, h, wo = out.shape
        n = n if isinstance(n, int) else batch
        rows = n * h * wo if all(isinstance(d, int) for d in (n, h, wo)) else None
        found.append((node, rows))
    return found


def convs_as_matmuls(
    gm: GraphModule, max_rows: int | None = None, batch: int | None = None, only: Collection[str] | None = None
) -> tuple[GraphModule, list[str]]:
    """A copy of ``gm`` with its eligible convolutions (those of at most ``max_rows`` output rows
    at batch size ``batch``, all with None; of the modules ``only`` if given) as INT8 matrix
    products, marked to compile with ``COMPILE_OPTIONS``; and the module names of the
    convolutions rewritten (none: ``gm`` itself is returned)."""

    def wanted(node: Node, rows: int | None) -> bool:
        if only is not None and graph.module_name(node) not in only:
            return False
        return max_rows is None or (rows is not None and rows <= max_rows)

    if not any(wanted(node, rows) for node, rows in eligible(gm, batch)):
        return gm, []
    with engine.quiet():  # copying a GraphModule warns about torch's own pytree specs
        out = copy.deepcopy(gm)
    chosen = [node for node, rows in eligible(out, batch) if wanted(node, rows)]
    names = [graph.module_name(node) for node in chosen]
    replaced = {_rewrite(out, node, f"_qcli_matmul_weight_{i}") for i, node in enumerate(chosen)}
    # the convolutions' own INT8 weights go (each rewrite removed its dead nodes): left behind, they
    # can collide with the names Inductor's freezing gives constants (``_frozen_param<i>``), which
    # mixed up two weights
    used = {n.target for n in out.graph.nodes if n.op == "get_attr"}
    for name in replaced - used:
        delattr(out, name)
    out.recompile()
    out.meta[META_KEY] = dict(COMPILE_OPTIONS)
    return out, names


def _rewrite(gm: GraphModule, node: Node, weight_name: str) -> str:
    """Rewrite one convolution; returns the attribute name of the INT8 weight it used."""
    import torch
    import torch.nn.functional as F

    aten = torch.ops.aten
    g = gm.graph
    x_dq, w_dq, bias, stride, padding, _, _ = _conv_args(node)
    xq, scale, zero_point, qmin, qmax, dtype = x_dq.args[:6]
    w_attr, w_scale, w_zp, _, w_qmin, w_qmax, w_dtype = w_dq.args[:7]
    weight = graph.get_attr(gm, w_attr.target)
    out_ch, in_ch, kh, kw = weight.shape
    k = kh * kw * in_ch
    k_padded = -(-k // K_STEP) * K_STEP
    # columns in (kh, kw, in) order, as the channels-last gather below lays out each row
    columns = F.pad(weight.permute(0, 2, 3, 1).reshape(out_ch, k), (0, k_padded - k)).contiguous()
    gm.register_buffer(weight_name, columns)
    _, _, ho, wo = node.meta["val"].shape
    (sh, sw), (ph, pw) = stride, padding
    with g.inserting_before(node):
        w_new = g.get_attr(weight_name)
        w_new = g.call_function(w_dq.target, (w_new, w_scale, w_zp, 0, w_qmin, w_qmax, w_dtype))
        rows = xq
        if ph or pw:  # the zero point dequantizes to exactly 0, as the convolution's zero padding
            rows = g.call_function(aten.constant_pad_nd.default, (rows, [pw, pw, ph, ph], zero_point))
        rows = g.call_function(aten.permute.default, (rows, [0, 2, 3, 1]))  # N, H, W, C
        rows = g.call_function(aten.unfold.default, (rows, 1, kh, sh))  # N, Ho, W, C, kh
        rows = g.call_function(aten.unfold.default, (rows, 2, kw, sw))  # N, Ho, Wo, C, kh, kw
        rows = g.call_function(aten.permute.default, (rows, [0, 1, 2, 4, 5, 3]))
        rows = g.call_function(aten.reshape.default, (rows, [-1, k]))
        if k_padded != k:
            rows = g.call_function(aten.constant_pad_nd.default, (rows, [0, k_padded - k], zero_point))
        rows = g.call_function(x_dq.target, (rows, scale, zero_point, qmin, qmax, dtype))
        product = g.call_function(aten.linear.default, (rows, w_new, bias))
    product.meta["nn_module_stack"] = node.meta.get("nn_module_stack", {})
    last, moved = _move_epilogue(gm, node, product, out_ch)
    with g.inserting_before(last):
        back = g.call_function(aten.reshape.default, (moved, [-1, ho, wo, out_ch]))
        back = g.call_function(aten.permute.default, (back, [0, 3, 1, 2]))
    back.meta[SHAPE_KEY] = tuple(node.meta["val"].shape)  # for the rewrites after this one
    last.replace_all_uses_with(back)
    g.eliminate_dead_code()
    return str(w_attr.target)


def _move_epilogue(gm: GraphModule, conv: Node, product: Node, channels: int) -> tuple[Node, Node]:
    """Repeat the chain of single-use pointwise steps after ``conv``, up to and including its
    quantize step, on the product's rows (channels last). Returns the last original step of the
    chain and its counterpart on the rows."""
    import torch

    aten = torch.ops.aten
    unary = {aten.relu.default, aten.hardtanh.default, aten.leaky_relu.default, aten.silu.default,
             aten.gelu.default, aten.sigmoid.default, aten.hardswish.default, aten.tanh.default,
             aten.clamp.default}  # fmt: skip
    g = gm.graph
    shape = tuple(conv.meta["val"].shape[1:])
    old, new = conv, product
    while len(old.users) == 1:
        user = next(iter(old.users))
        op: Any = user.target
        if user.args[0] is not old and op is not aten.add.Tensor:
            break
        rest = user.args[1:]
        with g.inserting_before(user):
            if _within_quantize_range(user):
                step = new  # the quantize step's own clamp does it (see _within_quantize_range)
            elif op in unary and not user.kwargs and not any(hasattr(a, "op") for a in rest):
                step = g.call_function(op, (new, *rest))
            elif op is aten.prelu.default and _shape(gm, rest[0]) in ((channels,), (1,)):
                step = g.call_function(aten.prelu.default, (new, rest[0]))  # rows: channels are dim 1
            elif op is aten.add.Tensor and len(user.args) == 2 and not user.kwargs:
                other = user.args[1] if user.args[0] is old else user.args[0]
                value = _shape(gm, other)
                if other is old or value is None or value[1:] != shape:
                    break
                other = g.call_function(aten.permute.default, (other, [0, 2, 3, 1]))
                other = g.call_function(aten.reshape.default, (other, [-1, channels]))
                step = g.call_function(aten.add.Tensor, (new, other))
            elif graph.is_quantize_per_tensor(user):
                step = g.call_function(op, (new, *rest), dict(user.kwargs))
            else:
                break
        old, new = user, step
        if graph.is_quantize_per_tensor(user):
            break
    return old, new


def _within_quantize_range(node: Node) -> bool:
    """Whether ``node`` is a ReLU / ReLU6 (``hardtanh``) / ``clamp`` whose only user quantizes its
    result to a range that already lies within its bounds: the quantize step clamps to
    [quant_min, quant_max] itself, and quantizing is monotone, so ``quantize(clamp(x, lo, hi))``
    equals ``quantize(x)`` when ``quantize(lo) <= quant_min`` and ``quantize(hi) >= quant_max``.
    Calibrated ranges after a ReLU6 are such (they start at 0, so the zero point is quant_min,
    and end at 6 or below). Left on the rows, the step stood between an INT8 product and its
    quantize step, where oneDNN's INT8 linear does not take it: the product wrote FP32 rows and
    a kernel of its own clamped and quantized them (MobileNetV2 at batch 1: 5.36 against 5.03 ms)."""
    import torch

    aten = torch.ops.aten
    if node.op != "call_function" or node.kwargs or len(node.users) != 1:
        return False
    given: list[Any] = list(node.args[1:3])  # the bounds passed; the op's defaults for the rest
    if node.target is aten.relu.default:
        bounds = [0.0, None]
    elif node.target is aten.hardtanh.default:
        bounds = given + [-1.0, 1.0][len(given) :]
    elif node.target is aten.clamp.default:
        bounds = given + [None, None][len(given) :]
    else:
        return False
    quantize = next(iter(node.users))
    if not graph.is_quantize_per_tensor(quantize) or quantize.args[0] is not node or quantize.kwargs:
        return False
    params: tuple[Any, ...] = tuple(quantize.args[1:5])
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (*params, *bounds) if v is not None):
        return False
    scale, zero_point, qmin, qmax = (float(v) for v in params)
    lo: float | None = None if bounds[0] is None else float(bounds[0])
    hi: float | None = None if bounds[1] is None else float(bounds[1])
    # value / scale + zero point before rounding; a margin of a thousandth of a step keeps the
    # answer the same however the compiled kernel rounds its FP32 product
    return (lo is None or lo / scale + zero_point <= qmin + 0.5 - ROUNDING_MARGIN) and (
        hi is None or hi / scale + zero_point >= qmax - 0.5 + ROUNDING_MARGIN
    )


def _shape(gm: GraphModule, node: Any) -> tuple[int, ...] | None:
    """A node's shape: from its recorded value, else (the quantize/dequantize steps PT2E inserts
    record none) from what it quantizes or dequantizes."""
    if getattr(node, "op", None) == "get_attr":
        return tuple(graph.get_attr(gm, node.target).shape)
    if SHAPE_KEY in getattr(node, "meta", {}):
        return tuple(node.meta[SHAPE_KEY])
    value = getattr(node, "meta", {}).get("val")
    if value is not None:
        return tuple(value.shape)
    if graph.is_quantize_per_tensor(node) or graph.dequantize_kind(node) is not None:
        return _shape(gm, node.args[0])
    return None
