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
from typing import TYPE_CHECKING, Any

from qcli import engine, graph, metrics
from qcli.config import PreprocessConfig
from qcli.data import InputSpec
from qcli.errors import DataError, OptionError, QcliError

if TYPE_CHECKING:  # torch is imported when a function runs, never when qcli is imported
    from torch import Tensor
    from torch.nn import Module


if TYPE_CHECKING:
    from qcli.evaluate import Accuracy
    from qcli.reports import Environment

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
    inputs: tuple[Tensor, ...],
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
    module: Module, example: tuple[Tensor, ...], spec: InputSpec, batch_sizes: list[int], workdir: Path
) -> tuple[Callable[..., Any], int]:
    """The FP32 model compiled exactly like the INT8 artifact (export, AOTInductor package with
    frozen weights under no_grad, one model per batch size); returns its runner and file size."""
    import torch

    from qcli.artifact import base_metadata, load_artifact, write_package

    if isinstance(module, torch.jit.ScriptModule):
        from qcli.torchscript import to_module

        module = to_module(module, example, "model")
    module_graph = engine.export(module, example, spec.names, sequence=spec.sequence).module()
    graph.protect_inputs(module_graph)
    path = workdir / "fp32.pt2"
    write_package(module_graph, example, path, {**base_metadata(), "mode": "fp32"}, batch_sizes)
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


def make_inputs(example: tuple[Tensor, ...], batch_size: int) -> tuple[Any, ...]:
    """Inputs of ``batch_size`` rows cycled from the example rows (real samples when available)."""
    idx = [i % example[0].shape[0] for i in range(batch_size)]
    return tuple(t[idx].contiguous() for t in example)


def benchmark(
    runners: dict[str, Callable[..., Any]],
    example: tuple[Tensor, ...],
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


def check_batch_sizes(meta: dict[str, Any], path: Path, batch_sizes: tuple[int, ...]) -> None:
    """A package runs the batch sizes it was compiled for: refuse others before any work."""
    if meta.get("form") != "package":
        return
    compiled = sorted(int(b) for b in meta["package_models"])
    missing = [b for b in batch_sizes if b not in compiled]
    if missing:
        raise OptionError(
            f"artifact '{path}' was compiled for batch sizes {', '.join(map(str, compiled))}; "
            f"bench {{batch_sizes}} within those, or convert with {{package_batch_sizes}} "
            f"{','.join(map(str, batch_sizes))}"
        )


def example_inputs(
    meta: dict[str, Any], spec: InputSpec, folder_path: Path | None, preprocess: PreprocessConfig
) -> tuple[Any, ...]:
    """Up to 16 real samples from the evaluation (or calibration) folder; else seeded random inputs
    of the shapes the artifact records."""
    import torch

    if folder_path is not None:
        from qcli.calibrate import args_for
        from qcli.data import SampleFolder

        folder = SampleFolder.open(folder_path, preprocess, seed=0, what="sample folder")
        batch = next(folder.batches(spec, batch_size=16, limit=16), None)
        if batch is None:
            raise DataError(f"sample folder '{folder_path}' holds no samples (its files hold zero rows)")
        return args_for(batch.inputs, spec)
    gen = torch.Generator().manual_seed(0)
    out = []
    for item in meta.get("inputs", []):
        shape = [16, *item["shape"][1:]]
        dtype = getattr(torch, item["dtype"])
        out.append(
            torch.randn(shape, generator=gen).to(dtype) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)
        )
    if not out:
        raise QcliError("the artifact records no input shapes; pass an evaluation folder with samples")
    return tuple(out)


def environment() -> Environment:
    """What decides the timings: threads, versions, CPU."""
    import platform

    import torch

    from qcli import __version__, hardware
    from qcli.reports import Environment

    return Environment(
        threads=torch.get_num_threads(),
        torch_version=str(torch.__version__),
        torchao_version=engine.torchao_version(),
        qcli_version=__version__,
        python=platform.python_version(),
        cpu_capability=hardware.capability(),
        cpu_features=hardware.int8_features(),
        machine=platform.machine(),
    )


def gate_failures(
    accuracy: Accuracy | None, timings: list[BatchTiming], max_drop: float | None, min_speedup: float | None
) -> list[str]:
    """What fails ``--max-drop`` (points) and ``--min-speedup`` (INT8 vs FP32 compiled, every batch size)."""
    failures = []
    if max_drop is not None:
        if accuracy is None:
            failures.append("--max-drop needs --eval-dir to measure accuracy")
        elif accuracy.drop > max_drop:
            what = "top-1 accuracy" if accuracy.labeled else "top-1 agreement with FP32"
            failures.append(f"{what} dropped {accuracy.drop:.2f} points, more than --max-drop {max_drop:g}")
    if min_speedup is not None:
        for t in timings:
            ratio = t.speedup(FP32_COMPILED)
            if ratio is not None and ratio < min_speedup:
                failures.append(
                    f"INT8 is {ratio:.2f}x FP32 compiled at batch {t.batch_size}, under --min-speedup {min_speedup:g}"
                )
    return failures
