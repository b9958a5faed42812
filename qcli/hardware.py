"""What the CPU can do: the instruction sets that decide whether INT8 is faster here."""

from __future__ import annotations

from functools import lru_cache

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
