"""Stage 6b: latency of FP32 and INT8, measured interleaved in one process on identical inputs.

Three variants run round-robin after warm-up: FP32 eager, FP32 compiled the same way as the INT8
artifact (an AOTInductor package with frozen weights for a package; an exported program compiled
with ``torch.compile`` for a program), and the INT8 artifact as a user loads it.
Interleaving spreads machine noise evenly over the variants; each round has its own random order
(``round_order``), so no variant always runs after the same one.
"""

from __future__ import annotations

import math
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
from qcli.noise import Noise

if TYPE_CHECKING:  # torch is imported when a function runs, never when qcli is imported
    from torch import Tensor
    from torch.nn import Module

    from qcli.evaluate import Accuracy
    from qcli.reports import Environment

FP32_EAGER, FP32_COMPILED, INT8 = "fp32_eager", "fp32_compiled", "int8"
THREAD_MISMATCH = "the package was compiled with"  # how the thread-count warning starts


@dataclass(frozen=True)
class Interval:
    """A figure with its 95% interval (percentile bootstrap over measurement rounds)."""

    value: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        """Half the interval's width relative to the value: 0.05 is "plus or minus 5%"."""
        return (self.high - self.low) / 2 / self.value if self.value else math.inf


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p90_ms: float
    throughput: float  # samples per second at the median
    p10_ms: float | None = None
    calls: int | None = None  # timed calls (one per round)
    p50_low_ms: float | None = None  # the median's 95% interval
    p50_high_ms: float | None = None

    @classmethod
    def of(cls, seconds: list[float], batch_size: int) -> Latency:
        p50, low, high = metrics.median_interval(seconds)
        return cls(
            p50_ms=p50 * 1e3,
            p90_ms=metrics.percentile(seconds, 90) * 1e3,
            throughput=batch_size / p50 if p50 > 0 else 0.0,
            p10_ms=metrics.percentile(seconds, 10) * 1e3,
            calls=len(seconds),
            p50_low_ms=low * 1e3,
            p50_high_ms=high * 1e3,
        )


@dataclass(frozen=True)
class BatchTiming:
    batch_size: int
    runs: int  # rounds: each calls every variant once, in a random order (``round_order``)
    variants: dict[str, Latency] = field(default_factory=dict)
    speedups: dict[str, Interval] = field(default_factory=dict)  # INT8 vs each FP32 variant
    seconds: float | None = None  # wall time of the timed rounds
    stopped_by: str | None = None  # "precision", "time budget" or "rounds"
    noise: Noise | None = None

    def speedup(self, baseline: str, variant: str = INT8) -> float | None:
        if variant == INT8 and baseline in self.speedups:
            return self.speedups[baseline].value
        if baseline not in self.variants or variant not in self.variants:
            return None
        return self.variants[baseline].p50_ms / self.variants[variant].p50_ms

    def to_dict(self) -> dict[str, Any]:
        from qcli.reports import plain

        return {
            "batch_size": self.batch_size,
            "runs": self.runs,
            "variants": {k: plain(v) for k, v in self.variants.items()},
            "speedup_vs_fp32_compiled": self.speedup(FP32_COMPILED),
            "speedup_vs_fp32_eager": self.speedup(FP32_EAGER),
            "speedups": {k: plain(v) for k, v in self.speedups.items()},
            "seconds": self.seconds,
            "stopped_by": self.stopped_by,
            "noise": plain(self.noise) if self.noise is not None else None,
        }


@dataclass(frozen=True)
class Plan:
    """How long to measure: at least ``min_rounds`` rounds, then until every INT8/FP32 ratio is
    known to ``precision`` (and a ``threshold`` gate is decided), or ``time_budget`` seconds per
    batch size have passed (None: 30 rounds' worth, between 10 and 120 s)."""

    warmup: int = 3
    min_rounds: int = 20
    precision: float = 0.05
    time_budget: float | None = None
    threshold: float | None = None  # --min-speedup: keep measuring while it is undecided
    check_every: int = 5  # rounds between looks at the intervals
    max_rounds: int = 100_000


@dataclass
class Rounds:
    """Seconds per call, by variant; entry i of each list is from round i."""

    times: dict[str, list[float]]
    seconds: float
    stopped_by: str


def round_order(names: list[str], r: int) -> list[str]:
    """Round ``r``'s order: a permutation drawn with ``r`` as the seed (repeatable). Not a rotation:
    rotating keeps each variant's predecessor fixed, and what ran just before changes a small
    model's call. In `make bench-peers`, two packages of the same DigitNet graph measured 0.45
    and 0.37 ms at batch 1 in rotated order and 0.46 and 0.47 ms in random order."""
    import random

    return random.Random(r).sample(names, len(names))


def _round(runners: dict[str, Callable[..., Any]], inputs: tuple[Tensor, ...], times: dict[str, list[float]]) -> None:
    """Call each runner once, in ``round_order``, on fresh input clones (made outside the timed
    region, so no runner sees another's writes)."""
    names = list(runners)
    for name in round_order(names, len(times[names[0]])):
        args = [t.clone() for t in inputs]
        t0 = time.perf_counter()
        runners[name](*args)
        times[name].append(time.perf_counter() - t0)


def speedups(times: dict[str, list[float]]) -> dict[str, Interval]:
    """INT8's speed-up over each FP32 variant measured, with its interval."""
    return {
        base: Interval(*metrics.ratio_interval(times[base], times[INT8]))
        for base in (FP32_COMPILED, FP32_EAGER)
        if base in times and INT8 in times and times[INT8]
    }


def _settled(times: dict[str, list[float]], plan: Plan) -> bool:
    """Every ratio known to ``plan.precision``, and the speed gate decided (if there is one)."""
    found = speedups(times)
    if any(i.half_width > plan.precision for i in found.values()):
        return False
    gate = found.get(FP32_COMPILED)
    if plan.threshold is not None and gate is not None:
        return metrics.verdict(gate.low, gate.high, plan.threshold) != "inconclusive"
    return True


def measure(runners: dict[str, Callable[..., Any]], inputs: tuple[Tensor, ...], plan: Plan) -> Rounds:
    """Interleaved rounds until the plan is satisfied (see ``Plan``); returns every call's time."""
    import torch

    times: dict[str, list[float]] = {n: [] for n in runners}
    with torch.no_grad():
        for round_number in range(plan.warmup):
            warm: dict[str, float] = {}
            for name in runners:
                args = [t.clone() for t in inputs]
                t0 = time.perf_counter()
                runners[name](*args)
                warm[name] = time.perf_counter() - t0
            if round_number > 0:  # the first call of a shape may compile (a program form)
                check_runaway(warm, int(inputs[0].shape[0]))
        start = time.perf_counter()
        _round(runners, inputs, times)
        budget = plan.time_budget
        if budget is None:
            budget = min(120.0, max(10.0, 30 * (time.perf_counter() - start)))
        stopped_by = "rounds"
        for done in range(1, plan.max_rounds):  # rounds finished so far
            if done >= plan.min_rounds and done % plan.check_every == 0 and _settled(times, plan):
                stopped_by = "precision"
                break
            if done >= plan.min_rounds and time.perf_counter() - start > budget:
                stopped_by = "time budget"
                break
            _round(runners, inputs, times)
    return Rounds(times, time.perf_counter() - start, stopped_by)


RUNAWAY_FACTOR = 100  # a variant this many times slower than the fastest one is broken, not slow
RUNAWAY_SECONDS = 0.5  # ... and only when its call takes this long (tiny models vary a lot)


def check_runaway(seconds: dict[str, float], batch_size: int) -> None:
    """Stop before many minutes of measuring when a variant runs orders of magnitude slower than
    the others (measured: a dynamic INT8 package whose oneDNN weights were packed for another
    instruction set took 1.4 s per call where the same program took 4 ms)."""
    fastest = min(seconds, key=lambda k: seconds[k])
    for name, took in seconds.items():
        if took > RUNAWAY_SECONDS and took > RUNAWAY_FACTOR * seconds[fastest]:
            raise QcliError(
                f"{name} takes {took:.2f} s per call at batch {batch_size}, {took / seconds[fastest]:.0f} times "
                f"{fastest} ({seconds[fastest] * 1e3:.1f} ms): something is wrong with it, not slow, so it was "
                "not measured; for a package, convert again on the machine and thread count it runs on"
            )


def compile_fp32(
    module: Module,
    example: tuple[Tensor, ...],
    spec: InputSpec,
    batch_sizes: list[int],
    workdir: Path,
    form: str = "package",
) -> tuple[Callable[..., Any], int, tuple[float, float]]:
    """The FP32 model compiled exactly like the INT8 artifact of ``form``: an AOTInductor package
    with frozen weights under no_grad, one model per batch size; or an exported program that
    ``load_artifact`` compiles with ``torch.compile`` (frozen weights, static shapes) on first
    call, as it does the INT8 program. Returns its runner, file size, and the seconds and
    resident MiB its loading took."""
    import torch

    from qcli.artifact import base_metadata, load_artifact, write_package, write_program

    if isinstance(module, torch.jit.ScriptModule):
        from qcli.torchscript import to_module

        module = to_module(module, example, "model")
    # two rows at least: export specialises a batch dimension of size 1 and refuses it as dynamic
    rows = make_inputs(example, 2)
    program = engine.export(module, rows, spec.names, sequence=spec.sequence)
    module_graph = program.module()
    # the graph rewrites INT8 gets that are not about quantization (``calibrate.prepare``)
    if graph.whole_input_pooling(module_graph) and form == "program":
        program = engine.export(module_graph, rows, spec.names, sequence=spec.sequence)
    path = workdir / "fp32.pt2"
    metadata = {**base_metadata(), "mode": "fp32"}
    if form == "program":
        write_program(program, path, metadata)
    else:
        graph.protect_inputs(module_graph)
        write_package(module_graph, rows, path, metadata, batch_sizes)
    loading = Loading.start()
    runner = load_artifact(path, trust_model=True).run  # written just now, by this process
    return runner, path.stat().st_size, loading.done()


def rss_mib() -> float | None:
    """This process's resident memory now, in MiB (Linux ``/proc/self/statm``; None elsewhere)."""
    import os

    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """The process's peak resident memory so far, in MiB (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Loading:
    """Seconds and resident memory added while something loads: ``Loading.start()`` ... ``.done()``."""

    t0: float
    rss0: float | None

    @classmethod
    def start(cls) -> Loading:
        return cls(time.perf_counter(), rss_mib())

    def done(self) -> tuple[float, float]:
        now = rss_mib()
        added = now - self.rss0 if now is not None and self.rss0 is not None else math.nan
        return time.perf_counter() - self.t0, added


def first_call_ms(runner: Callable[..., Any], inputs: tuple[Tensor, ...]) -> float:
    """The first call's time, in ms: what a service pays on its first request after loading."""
    import torch

    args = [t.clone() for t in inputs]
    with torch.no_grad():
        t0 = time.perf_counter()
        runner(*args)
    return (time.perf_counter() - t0) * 1e3


def thread_warning(meta: dict[str, Any], threads: int) -> str | None:
    """Why a package's timings would mislead at ``threads``: oneDNN packs weights for the thread
    count it compiles with and re-packs some of them on every call at another count (measured:
    MobileNetV2 at batch 1, compiled with 2 threads, ran 10x slower with 1)."""
    compiled = meta.get("compiled_threads")
    if meta.get("form") != "package" or not compiled or compiled == threads:
        return None
    return (
        f"{THREAD_MISMATCH} {compiled} thread(s) and runs with {threads}: oneDNN re-packs some "
        f"weights on every call at another thread count (up to 10x slower); convert with --threads {threads}"
    )


SLOW_COMPILE = 2.0  # FP32 compiled this many times slower than eager (its whole interval) is a fault


def compiled_slower_warning(timings: list[BatchTiming]) -> str | None:
    """Whether FP32 compiled, the reference of INT8's speed-up and of ``--min-speedup``, is itself
    far slower than eager: then some operation compiles badly (transformers' EfficientNet pooling
    with a 640x640 window ran 7x slower compiled before qcli rewrote it), and a speed-up over it
    says little about INT8."""
    for t in timings:
        eager, compiled = t.variants.get(FP32_EAGER), t.variants.get(FP32_COMPILED)
        if eager is None or compiled is None or not eager.p50_ms:
            continue
        low, high = compiled.p50_low_ms or compiled.p50_ms, eager.p50_high_ms or eager.p50_ms
        if low > SLOW_COMPILE * high:
            return (
                f"FP32 compiled is {compiled.p50_ms / eager.p50_ms:.1f}x slower than FP32 eager at batch "
                f"{t.batch_size} ({compiled.p50_ms:.3g} against {eager.p50_ms:.3g} ms): Inductor compiles some "
                "operation of this model badly and INT8, compiled the same way, inherits it: its speed-up over "
                "FP32 compiled (and --min-speedup) is measured against a slow reference"
            )
    return None


def make_inputs(example: tuple[Tensor, ...], batch_size: int) -> tuple[Any, ...]:
    """Inputs of ``batch_size`` rows cycled from the example rows (real samples when available)."""
    idx = [i % example[0].shape[0] for i in range(batch_size)]
    return tuple(t[idx].contiguous() for t in example)


def benchmark(
    runners: dict[str, Callable[..., Any]], example: tuple[Tensor, ...], batch_sizes: list[int], plan: Plan
) -> list[BatchTiming]:
    """Each batch size measured by ``measure``, with what else used the CPU meanwhile."""
    from qcli.noise import Monitor

    results = []
    for bs in batch_sizes:
        with Monitor() as monitor:
            rounds = measure(runners, make_inputs(example, bs), plan)
        variants = {name: Latency.of(ts, bs) for name, ts in rounds.times.items()}
        count = len(next(iter(rounds.times.values())))
        results.append(
            BatchTiming(
                bs, count, variants, speedups(rounds.times), round(rounds.seconds, 3), rounds.stopped_by, monitor.noise
            )
        )
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


METRIC_NAMES = {
    "top1": "top-1 accuracy",
    "top5": "top-5 accuracy",
    "agreement": "top-1 agreement with FP32",
    "sqnr": "SQNR",
    "cosine": "cosine similarity to FP32",
    "spearman": "Spearman correlation",
    "auc": "AUC",
    "mae": "mean absolute error",
    "rmse": "root mean square error",
}


def describe_drop(accuracy: Accuracy) -> str:
    """'top-1 accuracy (output logits) dropped 1.20 points': what the gate judged, in words."""
    score = accuracy.score
    if score is None:
        return f"accuracy dropped {accuracy.drop:.2f} points"
    what = METRIC_NAMES.get(score.metric, f"metric {score.metric}")
    where = f" of output '{score.output}'" if score.output and len(accuracy.outputs) > 1 else ""
    if score.metric == "sqnr":
        worst = accuracy.worst_output
        where = where or (f" of the worst output ('{worst.name}')" if worst and len(accuracy.outputs) > 1 else "")
        return f"SQNR{where} is {score.int8:.1f} dB: noise of {score.drop:.2f}% of the output's power (points)"
    fp = f"{score.fp32:.4g}" if score.fp32 is not None else "-"
    return f"{what}{where} went from {fp} (FP32) to {score.int8:.4g} (INT8): a drop of {score.drop:.2f} points"


def gate_verdicts(
    accuracy: Accuracy | None,
    timings: list[BatchTiming],
    max_drop: float | None,
    min_speedup: float | None,
    mismatch: str | None = None,
) -> tuple[list[str], list[str]]:
    """(failures, undecided) of ``--max-drop`` (points) and ``--min-speedup`` (INT8 vs FP32
    compiled, every batch size). The speed gate judges the ratio's 95% interval: it passes when
    all of it clears the threshold, fails when none of it does, and is undecided otherwise, when
    the package runs at another thread count than it was compiled for (``mismatch``), or when
    other programs disturbed the measurement (``Noise.disturbed``)."""
    failures: list[str] = []
    undecided: list[str] = []
    if max_drop is not None:
        if accuracy is None:
            failures.append("--max-drop needs --eval-dir to measure accuracy")
        elif accuracy.drop > max_drop:
            failures.append(f"{describe_drop(accuracy)}, more than --max-drop {max_drop:g}")
    if min_speedup is None:
        return failures, undecided
    if mismatch:
        undecided.append(f"--min-speedup not judged: {mismatch}")
        return failures, undecided
    for t in timings:
        found = t.speedups.get(FP32_COMPILED)
        if found is None:
            continue
        where = f"INT8 is {found.value:.2f}x FP32 compiled at batch {t.batch_size} (95% interval {found.low:.2f}-{found.high:.2f}x)"
        if t.noise is not None and t.noise.disturbed:
            # measured: two busy processes beside the demo turned 2.35x [2.19, 2.41] into 0.63x
            # [0.61, 0.65], a tight interval around a wrong figure; a disturbed run decides nothing
            undecided.append(
                f"--min-speedup not judged at batch {t.batch_size}: the run was disturbed (other programs used "
                f"{t.noise.other_cores:.2f} cores); {where}"
            )
            continue
        decision = metrics.verdict(found.low, found.high, min_speedup)
        if decision == "fail":
            failures.append(f"{where}, under --min-speedup {min_speedup:g}")
        elif decision == "inconclusive":
            undecided.append(f"{where}: the interval straddles --min-speedup {min_speedup:g}")
    return failures, undecided
