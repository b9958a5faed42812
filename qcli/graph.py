"""Helpers on torch.fx graphs that several stages share: which nodes are layers, observers and
quantize/dequantize steps, module paths, attribute access, and the passes that make a graph ready
to save (pruning, input protection, provenance, shape asserts, digest).

Ops are matched by identity (``node.target is torch.ops.aten.conv2d.default``, every overload of
the op), never by the text of their names.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from qcli import private

if TYPE_CHECKING:  # torch is imported when a function runs, never when qcli is imported
    from torch.export import ExportedProgram
    from torch.fx import GraphModule, Node

# the layers qcli quantizes: aten op name -> the nn.Module type users know it by
LAYER_TYPES = {"conv1d": "Conv1d", "conv2d": "Conv2d", "conv3d": "Conv3d", "linear": "Linear"}

LayerKey = tuple[str, int]  # (module path, call index): the 2nd call of a reused module is index 1


@functools.cache
def _ops(*names: str) -> frozenset[Any]:
    """Every overload of the named aten ops."""
    import torch

    found: set[Any] = set()
    for name in names:
        packet = getattr(torch.ops.aten, name)
        found.update(getattr(packet, overload) for overload in packet.overloads())
    return frozenset(found)


@functools.cache
def _layer_ops() -> dict[Any, str]:
    """Every overload of the layer ops (``conv2d.default``, ``conv2d.padding``, ...) -> module type."""
    return {op: kind for name, kind in LAYER_TYPES.items() for op in _ops(name)}


@functools.cache
def _dequantize_ops() -> dict[Any, str]:
    """quantized_decomposed dequantize overloads -> ``per_tensor`` or ``per_channel``."""
    import torch
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers the quantized_decomposed ops)

    found = {}
    for granularity in ("per_tensor", "per_channel"):
        packet = getattr(torch.ops.quantized_decomposed, f"dequantize_{granularity}")
        for overload in packet.overloads():
            found[getattr(packet, overload)] = granularity
    return found


# functions that stand for a linear layer after the dynamic/weight-only rewrite (qcli.dynamic
# registers its kernels), so the per-layer report and the search see those layers too
REWRITTEN_LINEARS: set[Any] = set()


def layer_type(node: Node) -> str | None:
    """``Conv2d``, ``Linear``, ... when ``node`` calls a layer op qcli quantizes (or a linear layer
    rewritten to dynamic/weight-only INT8); else None."""
    if node.op != "call_function":
        return None
    return "Linear" if node.target in REWRITTEN_LINEARS else _layer_ops().get(node.target)


def is_linear(node: Node) -> bool:
    return layer_type(node) == "Linear"


@functools.cache
def _quantize_per_tensor_ops() -> frozenset[Any]:
    import torch
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers the quantized_decomposed ops)

    packet = torch.ops.quantized_decomposed.quantize_per_tensor
    return frozenset(getattr(packet, overload) for overload in packet.overloads())


def is_quantize_per_tensor(node: Node) -> bool:
    """Whether ``node`` quantizes a tensor to INT8 with one scale and zero point."""
    return getattr(node, "op", None) == "call_function" and node.target in _quantize_per_tensor_ops()


def dequantize_kind(node: Node) -> str | None:
    """``per_tensor`` / ``per_channel`` when ``node`` dequantizes INT8 values; else None."""
    return (
        _dequantize_ops().get(getattr(node, "target", None)) if getattr(node, "op", None) == "call_function" else None
    )


def module_name(node: Node) -> str:
    """The module path a graph node came from (``layer1.conv1.0``), or the node name."""
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path = list(stack.values())[-1][0]
        return str(path).replace("L['self'].", "").replace("L__self___", "")
    return str(node.name)


def layer_nodes(gm: GraphModule) -> dict[LayerKey, Any]:
    """(module path, call index) -> conv/linear node, in graph order."""
    found: dict[LayerKey, Any] = {}
    seen: dict[str, int] = {}
    for node in gm.graph.nodes:
        if layer_type(node) is not None:
            name = module_name(node)
            found[(name, seen.get(name, 0))] = node
            seen[name] = seen.get(name, 0) + 1
    return found


def _is_observer(module: Any) -> bool:
    from torchao.quantization.pt2e.observer import ObserverBase

    return isinstance(module, ObserverBase)


def observer_nodes(gm: GraphModule) -> list[Any]:
    """The ``call_module`` nodes of the observers PT2E inserted, in graph order."""
    return [n for n in gm.graph.nodes if n.op == "call_module" and _is_observer(gm.get_submodule(n.target))]


def observers(gm: GraphModule) -> dict[str, Any]:
    """The observer modules PT2E inserted, by name, in graph order."""
    return {str(n.target): gm.get_submodule(n.target) for n in observer_nodes(gm)}


def get_attr(module: Any, target: str) -> Any:
    """The attribute a graph's ``get_attr`` node names (``layer1.conv1.0.weight``), by walking the path."""
    obj = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def split_reused_modules(gm: GraphModule) -> None:
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


def _root(parent: dict[Any, Any], node: Node) -> Any:
    """Union-find root of ``node``."""
    while parent[node] is not node:
        node = parent[node]
    return node


def prune_unused(gm: GraphModule) -> None:
    """Delete parameters and buffers no graph node reads (the FP32 weights convert_pt2e leaves)."""
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in [*gm.named_parameters(), *gm.named_buffers()]:
        if name in used:
            continue
        owner_path, _, attr = name.rpartition(".")
        owner = gm.get_submodule(owner_path) if owner_path else gm
        delattr(owner, attr)


def protect_inputs(gm: GraphModule) -> None:
    """Clone every tensor input first, so no fused in-place op can write into a caller's tensor.

    A compiled INT8 model was seen to fuse a residual add in place into a graph input (oneDNN
    "sum" post-op); working on a copy costs one memcpy of the input. Inductor drops the copy as
    a no-op when its layout equals the input's, so qcli's compiles also refuse such in-place
    fusions (``private.guard_inplace_fusions``).
    """
    import torch

    graph = gm.graph
    for node in [n for n in graph.nodes if n.op == "placeholder"]:
        with graph.inserting_after(node):
            copy = graph.call_function(torch.ops.aten.clone.default, (node,))
        node.replace_all_uses_with(copy, delete_user_cb=lambda user, c=copy: user is not c)
    gm.recompile()


def drop_provenance(program: ExportedProgram) -> None:
    """Remove ``from_node`` provenance from an exported program's nodes before saving it: it
    records ``id()`` of intermediate graphs (memory addresses), so every run would save different
    bytes. It is debugging information only; the graph and its other metadata are untouched."""
    for module in program.graph_module.modules():
        graph = getattr(module, "graph", None)
        for node in graph.nodes if graph is not None else ():
            node.meta.pop("from_node", None)


def has_conv(gm: GraphModule) -> bool:
    """Whether the graph calls a convolution (oneDNN packs its INT8 weights per input shape)."""
    return any((layer_type(node) or "").startswith("Conv") for node in gm.graph.nodes)


VIEW_OPS = ("view", "reshape", "_unsafe_view", "transpose", "permute", "unsqueeze", "squeeze", "flatten")


def contiguous_linear_addends(gm: GraphModule) -> int:
    """Copy into contiguous memory the addend of a residual add after a linear layer when it is a
    view, in a graph with convolutions; returns how many adds changed.

    Inductor fuses ``linear -> add`` into one INT8 matmul with a oneDNN ``binary_add`` post-op.
    When the addend is a view of a convolution's channels-last output (a MobileViT unfolding its
    feature map into patches), Inductor passes it in column-major order (``binary_add:f32:3:ba``
    in ``ONEDNN_VERBOSE``), and oneDNN has no optimised kernel for that: it runs ``ref_int8:any``,
    its reference implementation. A MobileViT's static INT8 package ran at 0.28x of FP32 at batch 1
    (two such matmuls took 9.6 of 13 ms); with the copy, 0.93x, outputs bit for bit the same.
    """
    import torch

    if not has_conv(gm):
        return 0
    views, skip = _ops(*VIEW_OPS), _ops("dropout", *VIEW_OPS)
    adds = _ops("add")

    def through(node: Any) -> Any:
        while getattr(node, "op", None) == "call_function" and node.target in skip:
            node = node.args[0]
        return node

    graph, changed = gm.graph, 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in adds or len(node.args) < 2:
            continue
        for linear, other in (node.args[:2], node.args[1::-1]):
            source = through(linear)
            if getattr(source, "op", None) == "call_function" and is_linear(source):
                if getattr(other, "op", None) == "call_function" and other.target in views:
                    with graph.inserting_before(node):
                        copy = graph.call_function(
                            torch.ops.aten.clone.default, (other,), {"memory_format": torch.contiguous_format}
                        )
                    node.replace_input_with(other, copy)
                    changed += 1
                break
    if changed:
        gm.recompile()
    return changed


def strip_shape_asserts(gm: GraphModule) -> None:
    """Drop ``aten._assert_tensor_metadata`` checks that ``torch.export`` puts after dtype casts.

    They are a second user of the ``_int_mm`` result, which stops Inductor from matching the
    INT8 linear pattern (``_int_mm`` stays a plain extern call: 1.3x instead of 1.8x on a 6-layer
    encoder). They check nothing the graph does not already guarantee.
    """
    import torch

    target = private.assert_tensor_metadata_op()
    for module in gm.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        graph = module.graph
        for node in [n for n in graph.nodes if n.op == "call_function" and n.target is target]:
            graph.erase_node(node)
        module.recompile()


def digest(program: ExportedProgram) -> str:
    """SHA-256 of an exported program's code and of every weight and constant, in name order:
    identifies the INT8 model itself, whatever bytes a compiler wraps around it."""
    import hashlib

    import torch

    sha = hashlib.sha256(program.graph_module.code.encode())
    tensors = {**program.state_dict, **program.constants}
    for name in sorted(tensors):
        value = tensors[name]
        sha.update(name.encode())
        if isinstance(value, torch.Tensor):
            value = value.detach().contiguous().cpu()
            sha.update(f"{value.dtype}{tuple(value.shape)}".encode())
            sha.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def drop_integer_observers(gm: GraphModule) -> list[str]:
    """Remove the observers PT2E put on integer tensors; returns their names.

    The X86 quantizer annotates ``mul``/``add`` nodes whatever their dtype, so integer arithmetic
    (RoBERTa derives position ids from the token ids: ``cumsum(mask) * mask``) got observers,
    whose histogram fails on integers ("histogram_cpu" not implemented for 'Int'). Integer
    tensors are not quantized: their observers go, and the ops stay as they are.
    """
    import torch

    dropped = []
    for node in observer_nodes(gm):
        source = node.args[0] if node.args else None
        value = getattr(source, "meta", {}).get("val")
        if isinstance(value, torch.Tensor) and not value.dtype.is_floating_point:
            node.replace_all_uses_with(source)
            gm.graph.erase_node(node)
            gm.delete_submodule(str(node.target))
            dropped.append(str(node.target))
    if dropped:
        gm.recompile()
    return dropped


def explicit_conv_padding(gm: GraphModule) -> int:
    """Rewrite ``conv2d(..., padding="same"|"valid")`` into ``conv2d`` with integer padding, in
    place; returns how many.

    ``nn.Conv2d(padding="same")`` (EfficientNet's depthwise convolutions in ``transformers``)
    exports as the ``aten.conv2d.padding`` overload, which torchao's X86 quantizer refuses with an
    internal ``ValueError: conv2d is not an aten conv2d operator``. "valid" is padding 0; "same"
    is ``dilation * (kernel - 1) / 2`` on each side when that is a whole number (odd kernels);
    an even kernel pads unevenly, which integer padding cannot say: that convolution is left as
    it is and the quantizer's refusal stands. Convolutions of ``nn.Conv2d`` subclasses are marked
    as ``nn.Conv2d``, which is all the quantizer looks for (they stayed FP32).
    """
    import torch

    aten = torch.ops.aten
    changed = 0
    for node in list(gm.graph.nodes):
        conv = node.op == "call_function" and node.target in (aten.conv2d.default, aten.conv2d.padding)
        if conv and _in_conv2d_subclass(node):  # EfficientNetDepthwiseConv2d: the quantizer matches nn.Conv2d
            node.meta["source_fn_stack"] = [(node.name, torch.nn.functional.conv2d)]
        if node.op != "call_function" or node.target != aten.conv2d.padding:
            continue
        args = list(node.args) + [None] * (7 - len(node.args))
        x, weight, bias, stride, padding, dilation, groups = args
        stride, dilation = stride or [1, 1], dilation or [1, 1]
        groups = 1 if groups is None else groups
        val = getattr(weight, "meta", {}).get("val")
        if not isinstance(val, torch.Tensor) and getattr(weight, "op", None) == "get_attr":
            val = get_attr(gm, str(weight.target))
        if padding in (None, "valid"):  # the overload's default is "valid"
            pads = [0, 0]
        elif padding == "same" and isinstance(val, torch.Tensor):
            total = [d * (k - 1) for d, k in zip(dilation, val.shape[2:], strict=False)]
            if any(t % 2 for t in total):
                continue
            pads = [t // 2 for t in total]
        else:
            continue
        node.target = aten.conv2d.default
        node.args = (x, weight, bias, list(stride), pads, list(dilation), groups)
        changed += 1
    if changed:
        gm.graph.lint()
        gm.recompile()
    return changed


def whole_input_pooling(gm: GraphModule) -> int:
    """Rewrite each 2-D average pooling whose one window covers its whole input into a mean over
    height and width, in place; returns how many.

    ``transformers``' EfficientNet pools its last feature map with
    ``nn.AvgPool2d(config.hidden_dim, ceil_mode=True)``: a 1280x1280 window (640 in a small
    config) over a 2x2 map. Inductor's C++ kernel for it walks the whole window: 21 ms of a 23 ms
    call at batch 1, FP32 compiled 7x slower than eager and INT8 no faster than FP32. Without
    padding, torch clips the window (and its divisor) to the input, so a window at least as large
    as the input with one output position is exactly the mean.
    """
    import torch

    aten = torch.ops.aten
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target != aten.avg_pool2d.default:
            continue
        names = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
        args = {**dict(zip(names, node.args, strict=False)), **node.kwargs}
        x, kernel = args.get("input"), args.get("kernel_size")
        padding, divisor = args.get("padding", 0), args.get("divisor_override")
        val, out = getattr(x, "meta", {}).get("val"), node.meta.get("val")
        if not isinstance(val, torch.Tensor) or not isinstance(out, torch.Tensor) or divisor is not None or not kernel:
            continue
        kernel = [kernel] if isinstance(kernel, int) else list(kernel)
        kernel = kernel * 2 if len(kernel) == 1 else kernel  # one size for both dimensions
        padding = [padding] if isinstance(padding, int) else list(padding)
        size, out_size = list(val.shape[-2:]), list(out.shape[-2:])
        if not all(isinstance(d, int) for d in size + out_size) or any(padding) or out_size != [1, 1]:
            continue
        if any(k < d for k, d in zip(kernel, size, strict=True)):
            continue
        with gm.graph.inserting_before(node):
            mean = gm.graph.call_function(aten.mean.dim, (x, [-2, -1], True))
        mean.meta = dict(node.meta)
        node.replace_all_uses_with(mean)
        gm.graph.erase_node(node)
        count += 1
    if count:
        gm.graph.lint()
        gm.recompile()
    return count


def quantized_max_pools(gm: GraphModule) -> list[str]:
    """The pooling modules (``nn.MaxPool1d/2d/3d``, in graph order, once each) whose max pooling
    runs on INT8 values in ``gm``: its input comes through a dequantize step. Those are what
    ``--prefer speed`` may keep FP32 by name; a max pooling called inside a larger module is
    left alone (keeping its module FP32 would keep that module's layers FP32 too)."""
    pools = _ops("max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices", "max_pool3d_with_indices")
    found: list[str] = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in pools or not node.args:
            continue
        pooling_module = _owner_class(node).split(".")[-1] in ("MaxPool1d", "MaxPool2d", "MaxPool3d")
        if pooling_module and dequantize_kind(node.args[0]) and module_name(node) not in found:
            found.append(module_name(node))
    return found


def _owner_class(node: Any) -> str:
    """The dotted class name of the node's own module (``nn_module_stack`` holds a class or its
    dotted name); "" when the node came from no module."""
    owner = list((node.meta.get("nn_module_stack") or {}).values())[-1:]
    if not owner:
        return ""
    kind = owner[0][1]
    return kind if isinstance(kind, str) else f"{getattr(kind, '__module__', '')}.{getattr(kind, '__qualname__', '')}"


def _in_conv2d_subclass(node: Any) -> bool:
    """Whether the node's own module is a subclass of ``nn.Conv2d`` rather than ``nn.Conv2d`` itself."""
    name = _owner_class(node)
    return name != "torch.nn.modules.conv.Conv2d" and name.endswith("Conv2d")


def linears_in_other_clothes(gm: GraphModule) -> int:
    """Rewrite linear layers that are not ``aten.linear`` into it, in place; returns how many.

    ``transformers``' ``Conv1D`` (GPT-2's attention and MLP projections) stores its weight as
    ``[in, out]`` and calls ``addmm(bias, x, weight)``; other models multiply by a parameter
    (``x @ W``: ``matmul``/``mm``). The quantizer, the dynamic rewrite and the layer count know
    only ``aten.linear``: a GPT-2 reported "1 of 1 conv/linear layers INT8" (its LM head). Each
    such call on a stored 2-D float weight becomes ``linear(x, W.T, bias)`` with the transposed
    weight stored once (the original stays for any other use, e.g. tied embeddings).
    """
    import torch

    aten = torch.ops.aten
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.kwargs:
            continue
        if node.target == aten.addmm.default and len(node.args) == 3:
            bias, x, w = node.args
        elif node.target in (aten.matmul.default, aten.mm.default) and len(node.args) == 2:
            (x, w), bias = node.args, None
        else:
            continue
        if getattr(w, "op", None) != "get_attr" or (bias is not None and getattr(bias, "op", None) != "get_attr"):
            continue
        weight = get_attr(gm, str(w.target))
        if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or not weight.is_floating_point():
            continue
        if bias is not None and get_attr(gm, str(bias.target)).ndim != 1:
            continue
        name = str(w.target).replace(".", "_") + "_as_linear"
        if not hasattr(gm, name):
            gm.register_parameter(name, torch.nn.Parameter(weight.detach().t().contiguous(), requires_grad=False))
        with gm.graph.inserting_before(node):
            transposed = gm.graph.get_attr(name)
            if "val" in w.meta:
                transposed.meta["val"] = w.meta["val"].t()
            args = (x, transposed) if bias is None else (x, transposed, bias)
            linear = gm.graph.call_function(aten.linear.default, args)
        linear.meta = dict(node.meta)
        # the X86 quantizer finds linear layers by the function they came from
        linear.meta["source_fn_stack"] = [(linear.name, torch.nn.functional.linear)]
        stack = dict(linear.meta.get("nn_module_stack") or {})
        if not stack or not list(stack.values())[-1][0]:  # x @ W in the top module: named after W
            stack[f"qcli_{name}"] = (str(w.target).removesuffix(".weight"), "Linear")
            linear.meta["nn_module_stack"] = stack
        node.replace_all_uses_with(linear)
        gm.graph.erase_node(node)
        count += 1
    if count:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return count
