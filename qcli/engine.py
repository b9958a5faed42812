"""The torch/torchao engine behind qcli: quiet imports, export with a dynamic batch, the quantizer.

torchao prints warnings about CUDA extensions on import and torch 2.13 prints deprecation notices
for APIs torchao still touches; none of them concern a CPU user, so ``quiet()`` hides them.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from qcli import graph as graph_helpers
from qcli import hardware
from qcli.errors import UnsupportedModel

if TYPE_CHECKING:  # torch is imported when a function runs, never when qcli is imported
    from torch import Tensor
    from torch.fx import GraphModule
    from torch.nn import Module


# loggers whose lines never concern a CPU user of qcli, whoever triggers them: torchao's warning for
# each CUDA library it cannot load, torch's pytree deprecations (the CLI keeps them at ERROR)
LIBRARY_NOISE = ("torchao", "torch.utils._pytree")
_NOISY_LOGGERS = (*LIBRARY_NOISE, "torch._inductor", "torch._dynamo", "torch.export", "torch._export")


@contextlib.contextmanager
def loggers_at_error(names: tuple[str, ...]) -> Iterator[None]:
    """Only errors from the loggers ``names`` while inside; their levels restored afterwards."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence library warnings and log lines that are noise for users; restore them afterwards."""
    with warnings.catch_warnings(), loggers_at_error(_NOISY_LOGGERS):
        warnings.simplefilter("ignore")
        yield


def torchao_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torchao")
    except PackageNotFoundError:
        return None


def export(module: Module, example_args: tuple[Tensor, ...], names: tuple[str, ...], sequence: bool = False) -> Any:
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
            if "Constraints violated (batch)" in first:
                raise UnsupportedModel(
                    "the model fixes its batch size, and qcli exports with a dynamic batch dimension; an exported "
                    "program must be exported with one (dynamic_shapes giving dimension 0 of each input a "
                    "torch.export.Dim), a module must not hard-code the batch size (e.g. in a reshape)"
                ) from exc
            raise UnsupportedModel(
                f"torch.export cannot trace the model ({type(exc).__name__}: {first}); qcli needs a "
                "model without data-dependent Python control flow"
            ) from exc


def first_row_repeated(tensors: tuple[Tensor, ...], batch: int) -> tuple[Any, ...]:
    """Each tensor's first row repeated ``batch`` times: example inputs of a chosen batch size."""
    return tuple(t[:1].repeat(batch, *([1] * (t.ndim - 1))) for t in tensors)


def quantizer(exclude: tuple[str, ...] = (), weights: str = "per-channel") -> Any:
    """X86 Inductor quantizer for static INT8: symmetric INT8 weights, per channel (default) or per
    tensor; activations with calibrated ranges. Modules named in ``exclude`` (and everything inside
    them) stay FP32. (Dynamic and weight-only INT8 do not use it: see ``qcli.dynamic``.)

    Asymmetric INT8 weights are not offered: torchao's X86 quantizer rejects such a weight spec
    ("Unsupported quantization_spec"), as its oneDNN kernels take symmetric weights.
    """
    with quiet():
        import torch
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq

        # 7-bit activations where INT8 products would saturate (no VNNI): see hardware.reduced_range
        config = xiq.get_default_x86_inductor_quantization_config(reduce_range=hardware.reduced_range())
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


def prepare_pt2e(graph: GraphModule, exclude: tuple[str, ...] = (), weights: str = "per-channel") -> Any:
    """Insert static-INT8 observers (see ``quantizer``)."""
    graph_helpers.split_reused_modules(graph)
    # what the model computes and drops (RoBERTa's pooler when a wrapper returns only the hidden
    # states: export keeps it) leaves a Linear -> Tanh partition without outputs, on which the X86
    # quantizer fails with IndexError
    graph.graph.eliminate_dead_code()
    graph.recompile()
    with quiet():
        from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e as _prepare

        prepared = _prepare(graph, quantizer(exclude, weights))
    graph_helpers.drop_integer_observers(prepared)
    return prepared


def convert_pt2e(prepared: Any) -> Any:
    with quiet():
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e as _convert

        return _convert(prepared)
