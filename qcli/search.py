"""``convert --max-drop X --eval-dir DIR``: fall back the most harmful layers to FP32 until the
accuracy drop (or fidelity loss, on an unlabeled folder) is within X.

Layers are ranked once, worst first, by the per-layer error report (output SQNR on calibration
samples). Trial k keeps the k worst layers in FP32 (on top of the user's ``--exclude``), re-uses
the observer statistics already collected (matched by the node they observe), converts, and
evaluates the INT8 graph against FP32 on the evaluation folder. The search stops at the first
trial within budget, after ``max_trials`` trials, or when ``timeout`` seconds have passed; the
best trial (smallest drop, then fewest FP32 layers) is what gets written. Everything is in a fixed
order, so the same inputs give the same trials.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qcli import layers as layer_report
from qcli.calibrate import Prepared, Stats, apply_stats, observer_kinds, prepare, stats_tensors
from qcli.convert import layer_table, quantize


@dataclass
class Trial:
    excluded: tuple[str, ...]
    drop: float
    int8_metric: float | None
    seconds: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "excluded": list(self.excluded),
            "drop": self.drop,
            "int8_metric": self.int8_metric,
            "seconds": round(self.seconds, 2),
            "reason": self.reason,
        }


@dataclass
class SearchResult:
    best: Trial
    trials: list[Trial] = field(default_factory=list)
    met: bool = False
    stopped_by: str = ""
    ranking: list[str] = field(default_factory=list)

    def to_dict(self, max_drop: float) -> dict[str, Any]:
        return {
            "max_drop": max_drop,
            "met": self.met,
            "stopped_by": self.stopped_by,
            "ranking": self.ranking,
            "best": self.best.to_dict(),
            "trials": [t.to_dict() for t in self.trials],
        }


def snapshot(prepared: Prepared, loaded: Any) -> Stats:
    """The observer states of a calibrated graph, as an in-memory statistics file."""
    meta = {"observers": observer_kinds(prepared), "model_sha256": loaded.sha256, "mode": prepared.mode}
    return Stats(stats_tensors(prepared), meta, Path("<calibration>"))


def search(
    loaded: Any,
    prepared: Prepared,
    *,
    user_excluded: tuple[str, ...],
    samples: tuple[Any, ...] | None,
    evaluate_int8: Any,  # (converted graph) -> Accuracy
    max_drop: float,
    max_trials: int,
    timeout: float | None,
    method: str,
    percentile: float,
) -> SearchResult:
    """Run the trials; ``prepared`` is the calibrated graph with the user's exclusions."""
    start = time.monotonic()
    stats = snapshot(prepared, loaded)
    example, spec, mode = prepared.example, prepared.spec, prepared.mode

    def run_trial(excluded: tuple[str, ...], reason: str, keep_reference: bool = False) -> tuple[Trial, Any]:
        t0 = time.monotonic()
        trial_prepared = prepare(loaded, example, spec, mode, excluded, prepared.weights)
        apply_stats(trial_prepared, stats, loaded.sha256, fill_from=samples)
        keep = keep_reference and samples is not None  # only the first trial's graphs rank the layers
        fp32_graph = layer_report.fp32_reference(trial_prepared.graph) if keep else None
        converted = quantize(trial_prepared, method, percentile, samples)
        accuracy = evaluate_int8(converted)
        metric = accuracy.int8_top1 if accuracy.labeled else accuracy.top1_agreement
        return Trial(excluded, accuracy.drop, metric, time.monotonic() - t0, reason), (fp32_graph, converted)

    first, (fp32_graph, converted) = run_trial(
        user_excluded, "every layer INT8" if not user_excluded else "your --exclude", keep_reference=True
    )
    result = SearchResult(best=first, trials=[first])
    if first.drop <= max_drop:
        result.met, result.stopped_by = True, "budget met"
        return result
    if fp32_graph is None or samples is None:
        result.stopped_by = "no calibration samples to rank layers by"
        return result
    rows = layer_report.per_layer_errors(fp32_graph, converted, [samples], layer_table(converted))
    ranking = list(dict.fromkeys(r["name"].split("#")[0] for r in rows if r["name"].split("#")[0] not in user_excluded))
    result.ranking = ranking
    for k in range(1, len(ranking) + 1):
        if len(result.trials) >= max_trials:
            result.stopped_by = f"--max-trials {max_trials}"
            break
        if timeout is not None and time.monotonic() - start > timeout:
            result.stopped_by = f"--timeout {timeout:g}s"
            break
        name = ranking[k - 1]
        sqnr = next((r["output_sqnr_db"] for r in rows if r["name"].split("#")[0] == name), None)
        reason = (
            f"{name} to FP32 (output SQNR {sqnr:.1f} dB, rank {k})"
            if sqnr is not None
            else f"{name} to FP32 (rank {k})"
        )
        trial, _ = run_trial(user_excluded + tuple(ranking[:k]), reason)
        result.trials.append(trial)
        if (trial.drop, len(trial.excluded)) < (result.best.drop, len(result.best.excluded)):
            result.best = trial
        if trial.drop <= max_drop:
            result.met, result.stopped_by = True, "budget met"
            break
    else:
        result.stopped_by = result.stopped_by or "every layer tried"
    return result
