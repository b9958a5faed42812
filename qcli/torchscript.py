"""TorchScript input: check that an archive can be quantized, and turn it into a module qcli can.

``torch._export.converter.TS2EPConverter`` turns TorchScript into an exported program, but its
graph holds raw ``aten.convolution``, ``aten.batch_norm`` and ``aten.linear`` calls on weights
stored as attributes, with no module structure: the X86 quantizer recognises none of it
(it annotates ``aten.conv2d`` and finds linears through their ``nn.Linear`` source), so the
result would be FP32. ``to_module`` *lifts* those calls back into ``nn.Conv*``, ``nn.BatchNorm*``
and ``nn.Linear`` modules named after their weights (``layer1.conv1.0.weight`` → module
``layer1.conv1.0``, the names of the model the archive was made from), in a ``GraphModule`` that
``torch.export`` traces like any model. The same quantizer then sees the same graph as for the
state dict.

``problems`` scans the archive without running it for what the converter cannot handle.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from qcli import engine, private
from qcli import graph as graph_helpers
from qcli.errors import UnsupportedModel

if TYPE_CHECKING:  # torch is imported when a function runs, never when qcli is imported
    from torch import Tensor
    from torch.fx import GraphModule


WHAT_TO_DO = (
    "save the model with torch.jit.trace on an example input, or pass the state dict with --arch "
    "(qcli quantizes any model torch.export can trace)"
)


def problems(script: Any) -> list[str]:
    """Reasons a TorchScript module cannot be converted to one static graph, found by reading its
    frozen, inlined graph: non-tensor arguments, Python control flow left after constant
    propagation (``prim::If``/``prim::Loop``), and attributes the model writes (internal state)."""
    import torch

    found: list[str] = []
    schema = script.forward.schema
    for arg in schema.arguments[1:]:
        kind = str(arg.type)
        if "Tensor" not in kind:
            found.append(f"forward takes a non-tensor argument '{arg.name}: {kind}'")
    try:
        with engine.quiet():
            graph = torch.jit.freeze(script.eval()).graph
    except Exception as exc:  # freezing refuses modules that mutate their attributes
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return [*found, f"it cannot be frozen ({first[:160]})"]
    seen = set()
    for node in graph.findAllNodes("prim::If") + graph.findAllNodes("prim::Loop"):
        if not _depends_on_values(node):  # shape checks (``if x.dim() != 4: raise``) are fine
            continue
        what = "data-dependent control flow (an if or loop on tensor values)"
        if what not in seen:
            seen.add(what)
            found.append(f"{what}{_where(node)}")
    for node in graph.findAllNodes("prim::SetAttr")[:1]:
        found.append(f"internal state (it assigns to a model attribute when run){_where(node)}")
    return found


TENSOR_TO_SCALAR = {"aten::Bool", "aten::Int", "aten::Float", "aten::item", "aten::is_nonzero", "aten::ScalarImplicit"}


def _depends_on_values(node: Any) -> bool:
    """Whether an If/Loop's condition (or trip count) is computed from tensor values, not shapes."""
    todo = list(node.inputs())[:2]
    seen = set()
    while todo:
        value = todo.pop()
        producer = value.node()
        if producer in seen:
            continue
        seen.add(producer)
        if producer.kind() in TENSOR_TO_SCALAR:
            return True
        todo.extend(producer.inputs())
    return False


def _where(node: Any) -> str:
    """`` at file:line `code` `` for the TorchScript source that made ``node``, when it is known.

    TorchScript prints a node's source as a ``File "...", line N`` header (N: the node's first
    line), then the code around it with the node's own lines underlined by ``~`` lines.
    """
    import re

    text = node.sourceRange()
    lines = text.splitlines()
    header = re.match(r'\s*File "(.+)", line (\d+)', lines[0]) if lines else None
    marked = [i for i, ln in enumerate(lines[1:-1], start=1) if lines[i + 1].strip().startswith("~")]
    if not marked:
        return ""
    shown = lines[marked[0]].strip()
    if header is None:
        return f" at `{shown[:80]}`"
    return f" at {Path(header.group(1)).name}:{header.group(2)} `{shown[:80]}`"


def to_module(script: Any, example: tuple[Tensor, ...], path: Any) -> Any:
    """A ``GraphModule`` computing what ``script`` computes, with its convolutions, batch norms and
    linears as modules (see the module docstring). Raises ``UnsupportedModel`` with the reason
    when the archive cannot be converted."""
    import torch

    found = problems(script)
    if found:
        raise UnsupportedModel(f"TorchScript '{path}' cannot be quantized: {'; '.join(found)}; {WHAT_TO_DO}", path=path)
    TS2EPConverter = private.ts2ep_converter()  # noqa: N806 (a class)

    try:
        with engine.quiet():
            program = TS2EPConverter(script, example).convert()
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UnsupportedModel(
            f"TorchScript '{path}' cannot be converted to a graph ({type(exc).__name__}: {first[:200]}); {WHAT_TO_DO}",
            path=path,
        ) from exc
    gm = lift_modules(program.module())
    with torch.no_grad(), engine.quiet():
        want, got = script(*example), gm(*example)
    if not _same(want, got):
        raise UnsupportedModel(
            f"TorchScript '{path}' converted to a graph that computes something else; {WHAT_TO_DO}", path=path
        )
    return gm


def lift_modules(gm: GraphModule) -> Any:
    """Replace ``aten.convolution``/``batch_norm``/``linear`` calls on stored weights by calls of
    equivalent ``nn`` modules named after the weights; returns a new ``GraphModule``."""
    import torch

    aten = torch.ops.aten
    graph = gm.graph
    modules: dict[str, Any] = {}
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        made = _module_for(gm, node, aten)
        if made is None:
            continue
        path, module, x = made
        if path in modules:  # one weight used twice: keep the first module, name the next call apart
            path = f"{path}_{sum(1 for p in modules if p.startswith(path))}"
        modules[path] = module
        with graph.inserting_before(node):
            call = graph.call_module(path, (x,))
        # no meta copied: export keeps a GraphModule node's meta, which would hide the module stack
        node.replace_all_uses_with(call)
        graph.erase_node(node)
    from torch.fx.operator_schemas import normalize_function

    functions, count = _functions(aten), 0
    for node in list(graph.nodes):
        function = functions.get(node.target) if node.op == "call_function" else None
        if function is None:
            continue
        normalized = normalize_function(node.target, node.args, node.kwargs)
        args, kwargs = (normalized.args, normalized.kwargs) if normalized else (node.args, node.kwargs)
        with graph.inserting_before(node):
            if isinstance(function, type):  # a stateless module: its own name, as a model's would have
                path = f"{function.__name__.lower()}_{count}"
                count += 1
                modules[path] = function(*args[1:], **kwargs)
                gm.add_module(path, modules[path])
                call = graph.call_module(path, (args[0],))
            else:
                call = graph.call_function(function, tuple(args), dict(kwargs))
        node.replace_all_uses_with(call)
        graph.erase_node(node)
    for node in [n for n in graph.nodes if n.op == "call_module" and n.target == "_guards_fn"]:
        graph.erase_node(node)  # the converter's input-shape guard: it pins the example's batch size
    graph.eliminate_dead_code()
    root: dict[str, Any] = dict(modules)
    for node in graph.nodes:
        if node.op in ("get_attr", "call_module") and node.target not in root:
            root[str(node.target)] = graph_helpers.get_attr(gm, str(node.target))
    lifted = torch.fx.GraphModule(root, graph)
    lifted.eval()
    return lifted


def _functions(aten: Any) -> dict[Any, Any]:
    """aten ops the converter emits → the module or function a Python model would call. The X86
    quantizer groups pooling and activations by the module they come from; without a module the
    pooled input of a classifier head was observed apart from its producer (another scale than
    for the state dict)."""
    import torch

    return {
        aten.adaptive_avg_pool2d.default: torch.nn.AdaptiveAvgPool2d,
        aten.avg_pool2d.default: torch.nn.AvgPool2d,
        aten.max_pool2d.default: torch.nn.MaxPool2d,
        aten.relu.default: torch.nn.ReLU,
        aten.flatten.using_ints: torch.flatten,
        aten.cat.default: torch.cat,
        aten.matmul.default: torch.matmul,
        aten.mul.Tensor: torch.mul,
        aten.add.Tensor: torch.add,
    }


def _module_for(gm: GraphModule, node: Any, aten: Any) -> tuple[str, Any, Any] | None:
    import torch
    from torch.fx.operator_schemas import normalize_function

    convs = {aten.convolution.default, aten.conv1d.default, aten.conv2d.default, aten.conv3d.default}
    if node.target not in convs | {aten.linear.default, aten.batch_norm.default}:
        return None
    normalized = normalize_function(node.target, node.args, node.kwargs, normalize_to_only_use_kwargs=True)
    if normalized is None:
        return None
    a: dict[str, Any] = dict(normalized.kwargs)
    module: torch.nn.Module

    def stored(name: str) -> bool:
        return a.get(name) is None or getattr(a[name], "op", None) == "get_attr"

    x, w, b = a.get("input"), a.get("weight"), a.get("bias")
    if node.target is aten.batch_norm.default:
        mean, var = a.get("running_mean"), a.get("running_var")
        if (
            a.get("training")
            or mean is None
            or var is None
            or not all(stored(k) for k in ("weight", "bias", "running_mean", "running_var"))
        ):
            return None
        rank = node.meta["val"].ndim if "val" in node.meta else 4
        norm = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}[
            rank
        ]
        module = norm(
            graph_helpers.get_attr(gm, mean.target).shape[0], eps=float(a.get("eps", 1e-5)), affine=w is not None
        )
        state = {
            "running_mean": graph_helpers.get_attr(gm, mean.target),
            "running_var": graph_helpers.get_attr(gm, var.target),
        }
        if w is not None and b is not None:
            state.update(weight=graph_helpers.get_attr(gm, w.target), bias=graph_helpers.get_attr(gm, b.target))
        module.load_state_dict(state, strict=False)
        return _path(mean.target), module.eval(), x
    if w is None or not (stored("weight") and stored("bias")):
        return None
    weight = graph_helpers.get_attr(gm, w.target)
    if node.target is aten.linear.default:
        if weight.ndim != 2:
            return None
        module = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=b is not None)
    else:
        conv = {3: torch.nn.Conv1d, 4: torch.nn.Conv2d, 5: torch.nn.Conv3d}.get(weight.ndim)
        padding, groups = a.get("padding", 0), int(a.get("groups", 1))
        if a.get("transposed") or conv is None or isinstance(padding, str):
            return None
        module = conv(
            weight.shape[1] * groups,
            weight.shape[0],
            _ints(tuple(weight.shape[2:])),
            stride=_ints(a.get("stride", 1)),
            padding=_ints(padding),
            dilation=_ints(a.get("dilation", 1)),
            groups=groups,
            bias=b is not None,
        )
    with torch.no_grad():
        module.weight.copy_(weight)
        if b is not None and module.bias is not None:  # the module was made with a bias when b exists
            module.bias.copy_(graph_helpers.get_attr(gm, b.target))
    return _path(w.target), module.eval(), x


def _ints(value: Any) -> Any:
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else int(value)


def _path(target: str) -> str:
    """``layer1.conv1.0.weight`` → ``layer1.conv1.0``."""
    return target.rsplit(".", 1)[0] if "." in target else target + "_module"


def _same(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)
