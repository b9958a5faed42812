"""Benchmarks a CI can gate on: intervals, adaptive rounds, noise flags and three-valued gates.

Correctness only: the runners here sleep for known times, so the expected ratios are known; no
test compares wall-clock figures between machines.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time

import numpy as np
import pytest

from qcli import bench, metrics
from qcli.errors import GateFailed, GateInconclusive


def test_ratio_interval_covers_the_true_ratio_about_95_percent_of_the_time():
    """Lognormal latencies with a true median ratio of 1.5: the bootstrap interval of 40 paired
    rounds should contain 1.5 in roughly 95% of 300 repetitions, and narrow as rounds grow."""
    rng = np.random.default_rng(7)
    hits, widths = 0, {}
    for rep in range(300):
        int8 = np.exp(rng.normal(np.log(2.0), 0.2, 40))
        fp32 = np.exp(rng.normal(np.log(3.0), 0.2, 40))
        ratio, lo, hi = metrics.ratio_interval(fp32, int8, resamples=500, seed=rep)
        hits += lo <= 1.5 <= hi
    for n in (20, 320):
        int8 = np.exp(rng.normal(np.log(2.0), 0.2, n))
        fp32 = np.exp(rng.normal(np.log(3.0), 0.2, n))
        _, lo, hi = metrics.ratio_interval(fp32, int8)
        widths[n] = hi - lo
    assert 0.88 <= hits / 300 <= 0.995, hits
    assert widths[320] < widths[20] / 2.5  # about 1/sqrt(n): 4x narrower for 16x the rounds


def test_median_interval_degenerate_cases():
    assert metrics.median_interval([5.0]) == (5.0, 5.0, 5.0)
    med, lo, hi = metrics.median_interval([1.0, 2.0, 3.0, 4.0, 100.0])
    assert med == 3.0 and lo <= 3.0 <= hi and hi <= 100.0
    with pytest.raises(ValueError):
        metrics.median_interval([])


@pytest.mark.parametrize(
    ("low", "high", "threshold", "expected"),
    [(1.6, 1.9, 1.5, "pass"), (1.1, 1.4, 1.5, "fail"), (1.4, 1.6, 1.5, "inconclusive"), (1.5, 1.6, 1.5, "pass")],
)
def test_three_valued_verdict(low, high, threshold, expected):
    assert metrics.verdict(low, high, threshold) == expected


def sleeper(seconds):
    def run(*args):
        time.sleep(seconds)

    return run


RUNNERS = {bench.FP32_COMPILED: sleeper(0.003), bench.INT8: sleeper(0.002)}


def test_measurement_stops_when_the_ratio_is_known_to_the_precision_asked():
    import torch

    plan = bench.Plan(warmup=1, min_rounds=10, precision=0.05, time_budget=20)
    rounds = bench.measure(RUNNERS, (torch.zeros(1),), plan)
    (found,) = bench.speedups(rounds.times).values()
    assert rounds.stopped_by == "precision" and found.half_width <= 0.05
    assert 1.2 < found.value < 1.6 and len(rounds.times[bench.INT8]) >= 10  # 3 ms / 2 ms, plus overhead
    tight = bench.measure(RUNNERS, (torch.zeros(1),), bench.Plan(1, 10, precision=1e-6, time_budget=0.5))
    assert tight.stopped_by == "time budget" and 0.5 <= tight.seconds < 5


def test_a_disturbed_run_is_flagged_and_its_speed_gate_is_undecided():
    """A CPU hog beside the measurement: the noise monitor names it with a figure, and no speed
    threshold is decided on that run, however clear (a hog turned the demo's 2.35x into a tight
    0.63x); on an undisturbed run a threshold inside the interval is undecided, outside decided."""
    import torch

    hog = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 30\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.3)
        (timing,) = bench.benchmark(RUNNERS, (torch.zeros(1),), [1], bench.Plan(1, 10, 0.05, time_budget=3))
    finally:
        hog.kill()
    assert timing.noise is not None and timing.noise.disturbed and timing.noise.other_cores > 0.5
    assert "other programs used" in timing.noise.reason and "cores" in timing.noise.reason
    found = timing.speedups[bench.FP32_COMPILED]
    assert found.low < found.value < found.high
    for threshold in (found.value, found.low * 0.9, found.high * 1.1):
        failures, inconclusive = bench.gate_verdicts(None, [timing], None, threshold)
        assert failures == [] and len(inconclusive) == 1 and "the run was disturbed" in inconclusive[0]
    quiet = dataclasses.replace(timing, noise=None)
    for threshold, failed, undecided in ((found.value, 0, 1), (found.low * 0.9, 0, 0), (found.high * 1.1, 1, 0)):
        failures, inconclusive = bench.gate_verdicts(None, [quiet], None, threshold)
        assert (len(failures), len(inconclusive)) == (failed, undecided), threshold


def test_a_thread_mismatch_leaves_the_speed_gate_undecided():
    timing = bench.BatchTiming(1, 10, {}, {bench.FP32_COMPILED: bench.Interval(3.0, 2.9, 3.1)})
    failures, undecided = bench.gate_verdicts(None, [timing], None, 1.5, mismatch="compiled with 2 threads")
    assert failures == [] and undecided == ["--min-speedup not judged: compiled with 2 threads"]


def test_a_compiled_reference_far_slower_than_eager_is_named():
    """FP32 compiled is the speed-up's reference: when its whole interval lies beyond twice eager's,
    the report says so; a compiled model merely no faster than eager, or noisy, is not flagged."""

    def timing(eager: tuple[float, float, float], compiled: tuple[float, float, float]) -> bench.BatchTiming:
        def latency(m: tuple[float, float, float]) -> bench.Latency:
            return bench.Latency(m[0], m[0], 1.0, p50_low_ms=m[1], p50_high_ms=m[2])

        return bench.BatchTiming(1, 20, {bench.FP32_EAGER: latency(eager), bench.FP32_COMPILED: latency(compiled)})

    slow = bench.compiled_slower_warning([timing((3.0, 2.9, 3.2), (22.7, 22.2, 23.0))])
    assert slow is not None and slow.startswith("FP32 compiled is 7.6x slower than FP32 eager at batch 1")
    assert bench.compiled_slower_warning([timing((3.0, 2.9, 3.2), (3.5, 3.3, 3.7))]) is None
    assert bench.compiled_slower_warning([timing((3.0, 2.0, 4.0), (7.0, 6.0, 8.5))]) is None  # intervals meet


@pytest.mark.parametrize(
    ("failures", "inconclusive", "on", "raised"),
    [
        ([], ["x"], "error", GateInconclusive),
        ([], ["x"], "fail", GateFailed),
        ([], ["x"], "pass", None),
        (["y"], ["x"], "pass", GateFailed),
        ([], [], "error", None),
    ],
)
def test_undecided_gates_exit_4_unless_the_user_settles_them(failures, inconclusive, on, raised):
    from test_ux import _report

    from qcli.api import raise_for_gates

    report = _report(1.0, 2.0, 99.0)
    report.gates.on_inconclusive = on
    report.gates.fail(failures, inconclusive)
    if raised is None:
        raise_for_gates(report)
        assert report.gates.passed
        return
    with pytest.raises(raised) as info:
        raise_for_gates(report)
    assert type(info.value) is raised and info.value.exit_code == (4 if raised is GateInconclusive else 3)
    assert info.value.report is report and report.to_dict()["gates"]["verdict"] == (
        "fail" if failures else "inconclusive"
    )


def test_a_variant_orders_of_magnitude_slower_stops_the_run_with_a_message():
    """A broken variant (here 0.6 s per call against 2 ms) ends the run after warm-up, naming it,
    instead of minutes of measuring; the first warm-up call (a compile) is not judged."""
    import torch

    from qcli.errors import QcliError

    calls = []

    def compiles_then_fast(*_):
        calls.append(1)
        time.sleep(0.6 if len(calls) == 1 else 0.002)

    rounds = bench.measure({bench.FP32_EAGER: sleeper(0.002), bench.INT8: compiles_then_fast},
                           (torch.zeros(1),), bench.Plan(warmup=2, min_rounds=3, time_budget=0.2))  # fmt: skip
    assert len(rounds.times[bench.INT8]) >= 3
    with pytest.raises(QcliError, match=r"int8 takes 0\.\d+ s per call at batch 1, \d+ times fp32_eager"):
        bench.measure({bench.FP32_EAGER: sleeper(0.002), bench.INT8: sleeper(0.6)}, (torch.zeros(1),),
                      bench.Plan(warmup=2, min_rounds=3, time_budget=0.2))  # fmt: skip


def test_no_variant_always_runs_after_the_same_one():
    """Rounds come in seeded random orders: repeatable, every variant once per round, and across
    rounds each variant follows each other one (a rotated order gave each a fixed predecessor,
    which moved a small model's batch-1 time by a fifth)."""
    from collections import Counter

    names = ["fp32_eager", "fp32_compiled", "int8"]
    orders = [bench.round_order(names, r) for r in range(30)]
    assert orders == [bench.round_order(names, r) for r in range(30)]
    assert all(sorted(o) == sorted(names) for o in orders)
    sequence = [name for order in orders for name in order]
    after = Counter((a, b) for a, b in zip(sequence, sequence[1:], strict=False) if a != b)
    assert set(after) == {(a, b) for a in names for b in names if a != b}
    assert min(after.values()) >= 10
