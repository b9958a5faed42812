"""Stage 6b: latency of FP32 and INT8, measured interleaved in one process on identical inputs.

Three variants run round-robin after warm-up: FP32 eager, FP32 compiled the same way as the INT8
artifact (an AOTInductor package with frozen weights), and the INT8 artifact as a user loads it.
Interleaving spreads machine noise evenly over the variants; the order rotates every round.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qcli import engine, metrics
from qcli.data import InputSpec

FP32_EAGER, FP32_COMPILED, INT8 = "fp32_eager", "fp32_compiled", "int8"


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p90_ms: float
    throughput: float  # samples per second at the median

    @classmethod
    def of(cls, seconds: list[float], batch_size: int) -> Latency:
        p50 = metrics.percentile(seconds, 50)
        return cls(p50 * 1e3, metrics.percentile(seconds, 90) * 1e3, batch_size / p50 if p50 > 0 else 0.0)


@dataclass(frozen=True)
class BatchTiming:
    batch_size: int
    runs: int
    variants: dict[str, Latency] = field(default_factory=dict)

    def speedup(self, baseline: str, variant: str = INT8) -> float | None:
        if baseline not in self.variants or variant not in self.variants:
            return None
        return self.variants[baseline].p50_ms / self.variants[variant].p50_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "runs": self.runs,
            "variants": {k: v.__dict__ for k, v in self.variants.items()},
            "speedup_vs_fp32_compiled": self.speedup(FP32_COMPILED),
            "speedup_vs_fp32_eager": self.speedup(FP32_EAGER),
        }


def time_interleaved(
    runners: dict[str, Callable[..., Any]],
    inputs: tuple[Any, ...],
    *,
    warmup: int = 3,
    runs: int = 20,
    min_seconds: float = 0.0,
) -> dict[str, list[float]]:
    """Call every runner ``runs`` times, round-robin with rotating order; return seconds per call.

    Each call gets fresh clones of ``inputs`` (made outside the timed region) so no runner can
    see another's writes.
    """
    import torch

    names = list(runners)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.no_grad():
        for _ in range(warmup):
            for name in names:
                runners[name](*[t.clone() for t in inputs])
        start = time.perf_counter()
        i = 0
        while i < runs or (time.perf_counter() - start < min_seconds and i < 10 * runs):
            order = names[i % len(names) :] + names[: i % len(names)]
            for name in order:
                args = [t.clone() for t in inputs]
                t0 = time.perf_counter()
                runners[name](*args)
                times[name].append(time.perf_counter() - t0)
            i += 1
    return times


def compile_fp32_package(
    module: Any, example: tuple[Any, ...], spec: InputSpec, batch_sizes: list[int], workdir: Path
) -> tuple[Callable[..., Any], int]:
    """The FP32 model compiled exactly like the INT8 artifact (export, AOTInductor package with
    frozen weights under no_grad, one model per batch size); returns its runner and file size."""
    import torch

    from qcli.artifact import base_metadata, load_artifact, write_package
    from qcli.convert import protect_inputs

    if isinstance(module, torch.jit.ScriptModule):
        from qcli.torchscript import to_module

        module = to_module(module, example, "model")
    graph = engine.export(module, example, spec.names, sequence=spec.sequence).module()
    protect_inputs(graph)
    path = workdir / "fp32.pt2"
    write_package(graph, example, path, {**base_metadata(), "mode": "fp32"}, batch_sizes)
    return load_artifact(path).run, path.stat().st_size


def thread_warning(meta: dict[str, Any], threads: int) -> str | None:
    """Why a package's timings would mislead at ``threads``: oneDNN packs weights for the thread
    count it compiles with and re-packs some of them on every call at another count (measured:
    MobileNetV2 at batch 1, compiled with 2 threads, ran 10x slower with 1)."""
    compiled = meta.get("compiled_threads")
    if meta.get("form") != "package" or not compiled or compiled == threads:
        return None
    return (
        f"the package was compiled with {compiled} thread(s) and runs with {threads}: oneDNN re-packs some "
        f"weights on every call at another thread count (up to 10x slower); convert with --threads {threads}"
    )


def make_inputs(example: tuple[Any, ...], batch_size: int) -> tuple[Any, ...]:
    """Inputs of ``batch_size`` rows cycled from the example rows (real samples when available)."""
    idx = [i % example[0].shape[0] for i in range(batch_size)]
    return tuple(t[idx].contiguous() for t in example)


def benchmark(
    runners: dict[str, Callable[..., Any]],
    example: tuple[Any, ...],
    batch_sizes: list[int],
    *,
    warmup: int = 3,
    runs: int = 20,
) -> list[BatchTiming]:
    results = []
    for bs in batch_sizes:
        times = time_interleaved(runners, make_inputs(example, bs), warmup=warmup, runs=runs)
        results.append(BatchTiming(bs, runs, {name: Latency.of(ts, bs) for name, ts in times.items()}))
    return results


def temp_workdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="qcli-bench-")
