"""What the CPU can do: the instruction sets that decide whether INT8 is faster here."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

# AOTInductor names the ISA it compiled for; these are the /proc/cpuinfo flags each one needs.
ISA_FLAGS = {
    "AVX2": ("avx2", "fma"),
    "AVX512": ("avx512f", "avx512bw", "avx512vl", "avx512dq"),
    "AVX512_VNNI": ("avx512_vnni",),
    "AVX512_BF16": ("avx512_bf16",),
    "AMX_TILE": ("amx_tile",),
    "AMX_INT8": ("amx_int8",),
}
SHOWN = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "asimddp", "i8mm")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``); empty where that file does not exist."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def capability() -> str:
    """torch's own name for the vector ISA its kernels use here (e.g. AVX512, AVX2, DEFAULT)."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def int8_features() -> list[str]:
    """The INT8-relevant features present, in a stable order, for reports."""
    flags = cpu_flags()
    return [f for f in SHOWN if f in flags]


def missing_for(isa: str) -> list[str]:
    """Flags required by an AOTInductor ISA string (e.g. 'AVX512 AVX512_VNNI') that this CPU lacks."""
    flags = cpu_flags()
    if not flags:
        return []  # cannot tell: let the package try
    needed = [flag for name in isa.split() for flag in ISA_FLAGS.get(name, ())]
    return [flag for flag in needed if flag not in flags]


# Features that give INT8 dot products (several INT8 multiply-adds per FP32 one), per family.
INT8_DOT_PRODUCT = {
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "amx_int8": "AMX INT8",
    "asimddp": "ARM dot product",
    "i8mm": "ARM i8mm",
}


def reduced_range() -> bool:
    """True on an x86 CPU without INT8 dot products (VNNI or AMX): INT8 must use 7 bits there.

    Without VNNI, oneDNN multiplies INT8 with ``vpmaddubsw``, which adds two u8 x s8 products into
    a saturating int16: 255 x 127 x 2 overflows it. Measured on an AVX2-only CPU, a compiled
    dynamic INT8 linear with full-range operands had cosine 0.989 to FP32 (0.99997 uncompiled),
    a static residual MLP 0.93. With one operand in 7 bits (activations 0..127 for static INT8,
    as torchao advises; weights -63..63 for dynamic INT8) the products cannot overflow (cosine
    0.99994). ARM and CPUs whose flags cannot be read keep 8 bits.
    """
    flags = cpu_flags()
    x86 = "avx2" in flags or "sse4_2" in flags
    return x86 and not any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def quantized_engine() -> str:
    """The backend torch uses for quantized kernels here (x86, fbgemm, onednn, qnnpack)."""
    import torch

    return str(torch.backends.quantized.engine)


def explain() -> dict[str, Any]:
    """What this CPU offers INT8, in words a user can act on; ``warning`` is None when INT8 should win."""
    flags = cpu_flags()
    dot = [name for flag, name in INT8_DOT_PRODUCT.items() if flag in flags]
    present = {
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "vnni": "avx512_vnni" in flags or "avx_vnni" in flags,
        "amx": "amx_int8" in flags and "amx_tile" in flags,
    }
    if not flags:
        warning = (
            "cannot read the CPU's features (/proc/cpuinfo); INT8 speed is unknown here, measure it with `qcli bench`"
        )
    elif not dot:
        warning = (
            "this CPU has no INT8 dot-product instructions (AVX-512 VNNI, AVX-VNNI, AMX or ARM dot product): "
            "INT8 is unlikely to be faster than FP32 here, except for memory-bound models; measure with `qcli bench`"
        )
    else:
        warning = None
    return {
        "capability": capability(),
        "features": int8_features(),
        **present,
        "int8_dot_product": dot,
        "quantized_engine": quantized_engine(),
        "warning": warning,
    }


ONEDNN_ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def onednn_isa_limit() -> str | None:
    """The instruction-set limit oneDNN was told to keep to (``ONEDNN_MAX_CPU_ISA``), if any."""
    import os

    return next((os.environ[v] for v in ONEDNN_ISA_VARIABLES if os.environ.get(v)), None)


def isa_limit_warning(meta: dict[str, Any]) -> str | None:
    """Why a package would run orders of magnitude slower here: its oneDNN weights were packed under
    another instruction-set limit (measured: a dynamic INT8 ViT package packed with AMX ran 1.4 s
    per call under ``ONEDNN_MAX_CPU_ISA=AVX2``, against 1.3 ms without the limit)."""
    if meta.get("form") != "package":
        return None
    then, now = meta.get("onednn_max_cpu_isa"), onednn_isa_limit()
    if (then or "").upper() == (now or "").upper():
        return None
    return (
        f"the package was compiled with oneDNN limited to {then or 'no limit'} and runs with {now or 'no limit'} "
        "(ONEDNN_MAX_CPU_ISA): its packed weights do not fit the kernels available, which can make it hundreds "
        "of times slower; convert again under the same setting"
    )


@dataclass
class Captured:
    """What C code printed on a file descriptor during a ``fd_to_file`` block (after it ends)."""

    possible: bool = True
    text: str = ""


@contextlib.contextmanager
def fd_to_file(fd: int) -> Iterator[Captured]:
    """File descriptor ``fd`` (1 or 2) pointed at a temporary file while the block runs, so what
    C code prints there is captured rather than shown; ``possible`` is False, with nothing
    redirected, where that cannot be done."""
    import ctypes
    import sys
    import tempfile

    captured = Captured()
    try:
        libc = ctypes.CDLL(None)
        (sys.stdout if fd == 1 else sys.stderr).flush()
        saved = os.dup(fd)
    except (OSError, AttributeError):
        captured.possible = False
        yield captured
        return
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), fd)
        try:
            yield captured
        finally:
            libc.fflush(None)
            os.dup2(saved, fd)
            os.close(saved)
            log.seek(0)
            captured.text = log.read().decode("utf-8", errors="replace")


def onednn_log(call: Callable[[], Any]) -> str:
    """What oneDNN reports while ``call`` runs (``torch.backends.mkldnn.verbose``): one line per
    primitive it creates or executes, with the implementation it chose. oneDNN prints them
    with C stdio on file descriptor 1, which is pointed at a temporary file meanwhile; "" where
    that is not possible."""
    import torch

    with fd_to_file(1) as log:
        if log.possible:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                call()
    return log.text


def reference_kernels(log: str) -> list[str]:
    """The executions in a oneDNN log (``onednn_log``) that ran a reference implementation
    (``ref_int8:any``, ``ref:any``...: oneDNN's unoptimised fallbacks), as "kind shape impl"."""
    found = []
    for line in log.splitlines():
        fields = line.split(",")
        if len(fields) > 7 and fields[3] == "exec" and fields[6].startswith("ref"):
            shape = next((f for f in reversed(fields[:-1]) if f), "")
            found.append(f"{fields[5]} {shape} on {fields[6]}")
    return found


def reference_kernel_warning(run: Callable[..., Any], inputs_by_batch: dict[int, tuple[Any, ...]]) -> str | None:
    """A warning when the INT8 model runs any oneDNN operation on a reference kernel, which is
    many times slower than the optimised ones (a MobileViT's fused linear+add on
    ``ref_int8:any`` made the whole model 3.6x slower than FP32): one call per batch size."""
    import functools

    for batch, inputs in inputs_by_batch.items():
        slow = reference_kernels(onednn_log(functools.partial(run, *inputs)))
        if slow:
            shown = "; ".join(dict.fromkeys(slow))
            return (
                f"oneDNN runs {len(slow)} operation(s) of the INT8 model on its unoptimised reference kernel at batch "
                f"{batch} ({shown}): they run many times slower than they should; the latency above includes them "
                "(keeping those layers FP32 with --exclude avoids them)"
            )
    return None
