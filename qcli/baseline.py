"""``bench --baseline``: compare a bench report with a stored earlier one and name what regressed.

Compared figures (only those present in both reports):

- per batch size, INT8 median latency (``int8 p50 ms``): regressed when all of its 95% interval
  lies above the baseline's median plus the latency tolerance (a fraction, 0.10 = 10%);
- per batch size, INT8 speed-up over FP32 compiled: regressed when all of its interval lies below
  the baseline's speed-up less the same fraction (machine noise moves both variants, so the ratio
  is the steadier figure);
- a latency figure whose interval straddles the line is undecided (``verdict: inconclusive``), and
  so is every latency figure of a run that other programs disturbed;
- INT8's figure of the primary metric (``qcli.evaluate``: top-1, agreement, SQNR, AUC, ...), when
  both reports judged by the same metric and output: regressed when it fell by more than the
  accuracy tolerance, in the points ``--max-drop`` uses for that metric (``score_points``); reports
  from before the metric was recorded compare INT8 top-1 (labeled) or top-1 agreement (unlabeled).
"""

from __future__ import annotations

import json
from pathlib import Path

from qcli.bench import Interval
from qcli.errors import QcliError
from qcli.evaluate import Score, noise_points
from qcli.metrics import verdict
from qcli.reports import SCHEMA_VERSION, BenchReport, Comparison


def load_baseline(path: Path) -> BenchReport:
    """Read a report written by ``qcli bench --format json`` (or ``-o``); clear errors otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QcliError(f"baseline '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QcliError(f"baseline '{path}' is not a JSON report ({exc})") from None
    if not isinstance(data, dict) or data.get("command") != "bench":
        raise QcliError(f"baseline '{path}' is not a `qcli bench` report; write one with `qcli bench -o FILE`")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise QcliError(
            f"baseline '{path}' has schema_version {data.get('schema_version')!r}; this qcli writes {SCHEMA_VERSION}"
        )
    try:
        report = BenchReport.from_dict(data)
        timings = [v.p50_ms for t in report.latency for v in t.variants.values()]
        if not all(isinstance(ms, (int, float)) and ms > 0 for ms in timings):
            raise ValueError("a latency that is not a positive number")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise QcliError(f"baseline '{path}' is a damaged `qcli bench` report ({type(exc).__name__}: {exc})") from None
    return report


def environment_changes(current: BenchReport, baseline: BenchReport) -> list[str]:
    """Warnings when the baseline was measured where timings are not comparable."""
    now, then = current.environment, baseline.environment
    changes = []
    for label, a, b in (
        ("threads", then.threads, now.threads),
        ("CPU features", ", ".join(then.cpu_features), ", ".join(now.cpu_features)),
        ("CPU capability", then.cpu_capability, now.cpu_capability),
        ("torch", then.torch_version, now.torch_version),
    ):
        if a != b:
            changes.append(f"the baseline was measured with {label} {a or '-'}, this run with {b or '-'}: latency "
                           "comparisons across them mostly measure the difference")  # fmt: skip
    return changes


def compare(
    current: BenchReport, baseline: BenchReport, latency_tolerance: float, accuracy_tolerance: float
) -> list[Comparison]:
    """One entry per compared figure: baseline and current values, the change, and the verdict."""
    rows: list[Comparison] = []
    old_by_batch = {t.batch_size: t for t in baseline.latency}
    for timing in current.latency:
        old = old_by_batch.get(timing.batch_size)
        if old is None or "int8" not in timing.variants or "int8" not in old.variants:
            continue
        b = timing.batch_size
        now, then_ms = timing.variants["int8"], old.variants["int8"].p50_ms
        rise = now.p50_ms / then_ms - 1
        ceiling = then_ms * (1 + latency_tolerance)  # regressed: the median is above it
        low, high = now.p50_low_ms or now.p50_ms, now.p50_high_ms or now.p50_ms
        disturbed = timing.noise is not None and timing.noise.disturbed  # decides nothing on speed
        decided = "inconclusive" if disturbed else verdict(-high, -low, -ceiling)  # pass: all of it under
        rows.append(_row(f"int8 p50 ms at batch {b}", then_ms, now.p50_ms, rise, "%", decided))
        then_x, now_x = old.speedup("fp32_compiled"), timing.speedup("fp32_compiled")
        found = timing.speedups.get("fp32_compiled") or (Interval(now_x, now_x, now_x) if now_x else None)
        if found is not None and then_x:
            fall = found.value / then_x - 1
            decided = "inconclusive" if disturbed else verdict(found.low, found.high, then_x * (1 - latency_tolerance))
            rows.append(_row(f"speedup vs FP32 compiled at batch {b}", then_x, found.value, fall, "%", decided))
    acc_now, acc_then = current.accuracy, baseline.accuracy
    now_score, then_score = (acc_now.score if acc_now else None), (acc_then.score if acc_then else None)
    if now_score is not None and then_score is not None:
        if (now_score.metric, now_score.output) == (then_score.metric, then_score.output):
            change = score_points(now_score) - score_points(then_score)
            name = SCORE_FIGURES.get(now_score.metric, f"int8 {now_score.metric}")
            name += f" ({now_score.output})" if now_score.output not in (None, "output") else ""  # one tensor: no name
            decided = "fail" if -change > accuracy_tolerance else "pass"
            rows.append(_row(name, then_score.int8, now_score.int8, change, "points", decided))
    elif acc_now is not None and acc_then is not None and acc_now.labeled == acc_then.labeled:
        key, label = ("int8_top1", "int8 top-1 %") if acc_now.labeled else ("top1_agreement", "top-1 agreement %")
        now, then = getattr(acc_now, key), getattr(acc_then, key)
        if now is not None and then is not None:
            change = now - then
            rows.append(_row(label, then, now, change, "points", "fail" if -change > accuracy_tolerance else "pass"))
    return rows


SCORE_FIGURES = {"top1": "int8 top-1 %", "top5": "int8 top-5 %", "agreement": "top-1 agreement %"}


def score_points(score: Score) -> float:
    """INT8's figure on a scale where higher is better and a point means what ``--max-drop``'s
    points mean for the metric (``qcli.evaluate``): percentages as they are, fractions x100, SQNR
    as minus the noise's share of the power, errors negated."""
    if score.metric in ("auc", "spearman", "cosine"):
        return 100.0 * score.int8
    if score.metric == "sqnr":
        return -noise_points(score.int8)
    return score.int8 if score.higher_is_better else -score.int8


def _row(figure: str, then: float, now: float, change: float, unit: str, decided: str) -> Comparison:
    return Comparison(figure, then, now, change, unit, decided == "fail", decided)


def failures(rows: list[Comparison], latency_tolerance: float, accuracy_tolerance: float) -> list[str]:
    """One sentence per regressed figure, naming it, its values and the tolerance it broke."""
    out = []
    for r in rows:
        if not r.regressed:
            continue
        if r.unit == "%":
            direction = "rose" if r.change > 0 else "fell"
            out.append(
                f"baseline: {r.figure} {direction} {abs(r.change) * 100:.1f}% "
                f"({r.baseline:.3g} -> {r.current:.3g}; --latency-tolerance {latency_tolerance:g})"
            )
        else:
            out.append(
                f"baseline: {r.figure} fell {-r.change:.2f} points "
                f"({r.baseline:.2f} -> {r.current:.2f}; --accuracy-tolerance {accuracy_tolerance:g})"
            )
    return out
