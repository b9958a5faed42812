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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qcli import layers as layer_report
from qcli.calibrate import Prepared, Stats, apply_stats, observer_kinds, prepare, stats_tensors
from qcli.convert import layer_table, quantize
from qcli.evaluate import Accuracy
from qcli.load import LoadedModel
from qcli.options import SearchOptions

if TYPE_CHECKING:  # torch is imported when a function runs, never when qcli is imported
    from torch import Tensor


@dataclass
class Trial:
    excluded: tuple[str, ...]
    drop: float
    int8_metric: float | None
    seconds: float
    reason: str
    metric: str | None = None  # what int8_metric is (qcli.evaluate.Score.metric)

    def to_dict(self) -> dict[str, Any]:
        return {
            "excluded": list(self.excluded),
            "drop": self.drop,
            "metric": self.metric,
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
    warnings: list[str] = field(default_factory=list)  # what looked wrong about the evaluation

    def add(self, trial: Trial) -> None:
        """Record a trial; the best is the smallest drop, then the fewest FP32 layers."""
        self.trials.append(trial)
        if (trial.drop, len(trial.excluded)) < (self.best.drop, len(self.best.excluded)):
            self.best = trial

    def to_dict(self, max_drop: float) -> dict[str, Any]:
        return {
            "max_drop": max_drop,
            "metric": self.best.metric,
            "met": self.met,
            "stopped_by": self.stopped_by,
            "ranking": self.ranking,
            "best": self.best.to_dict(),
            "trials": [t.to_dict() for t in self.trials],
        }


def snapshot(prepared: Prepared, loaded: LoadedModel) -> Stats:
    """The observer states of a calibrated graph, as an in-memory statistics file."""
    meta = {"observers": observer_kinds(prepared), "model_sha256": loaded.sha256, "mode": prepared.mode}
    return Stats(stats_tensors(prepared), meta, Path("<calibration>"))


@dataclass
class Searcher:
    """Runs trials: each re-prepares the graph with some layers excluded, re-uses the collected
    statistics, converts with the chosen range method and evaluates the INT8 graph."""

    loaded: LoadedModel
    prepared: Prepared
    samples: tuple[Tensor, ...] | None
    evaluate_int8: Callable[[Any], Accuracy]
    method: str
    percentile: float

    def __post_init__(self) -> None:
        self.stats = snapshot(self.prepared, self.loaded)

    def trial(self, excluded: tuple[str, ...], reason: str, keep_reference: bool = False) -> tuple[Trial, Any, Any]:
        """One conversion and evaluation; with ``keep_reference`` also the FP32 graph that ranks layers."""
        t0 = time.monotonic()
        p = self.prepared
        trial_prepared = prepare(self.loaded, p.example, p.spec, p.mode, excluded, p.weights)
        apply_stats(trial_prepared, self.stats, self.loaded.sha256, fill_from=self.samples)
        keep = keep_reference and self.samples is not None
        fp32_graph = layer_report.fp32_reference(trial_prepared.graph) if keep else None
        converted = quantize(trial_prepared, self.method, self.percentile, self.samples)
        accuracy = self.evaluate_int8(converted)
        score = accuracy.score
        trial = Trial(
            excluded,
            accuracy.drop,
            score.int8 if score is not None else None,
            time.monotonic() - t0,
            reason,
            score.metric if score is not None else None,
        )
        return trial, fp32_graph, converted


def search(searcher: Searcher, options: SearchOptions) -> SearchResult:
    """Run the trials; ``searcher.prepared`` is the calibrated graph with the user's exclusions."""
    start = time.monotonic()
    user_excluded = searcher.prepared.exclude
    first, fp32_graph, converted = searcher.trial(
        user_excluded, "every layer INT8" if not user_excluded else "your --exclude", keep_reference=True
    )
    result = SearchResult(best=first, trials=[first])
    if first.drop <= options.max_drop:
        result.met, result.stopped_by = True, "budget met"
        return result
    if fp32_graph is None or searcher.samples is None:
        result.stopped_by = "no calibration samples to rank layers by"
        return result
    rows = layer_report.per_layer_errors(fp32_graph, converted, [searcher.samples], layer_table(converted))
    result.ranking = _ranking(rows, user_excluded)
    for k, name in enumerate(result.ranking, start=1):
        if len(result.trials) >= options.max_trials:
            result.stopped_by = f"--max-trials {options.max_trials}"
            break
        if options.timeout is not None and time.monotonic() - start > options.timeout:
            result.stopped_by = f"--timeout {options.timeout:g}s"
            break
        trial, _, _ = searcher.trial(user_excluded + tuple(result.ranking[:k]), _reason(rows, name, k))
        result.add(trial)
        if trial.drop <= options.max_drop:
            result.met, result.stopped_by = True, "budget met"
            break
    result.stopped_by = result.stopped_by or "every layer tried"
    return result


def _ranking(rows: list[dict[str, Any]], user_excluded: tuple[str, ...]) -> list[str]:
    """Module names, worst output SQNR first, without the user's exclusions (a reused module once)."""
    names = (r["name"].split("#")[0] for r in rows)
    return list(dict.fromkeys(n for n in names if n not in user_excluded))


def _reason(rows: list[dict[str, Any]], name: str, rank: int) -> str:
    sqnr = next((r["output_sqnr_db"] for r in rows if r["name"].split("#")[0] == name), None)
    if sqnr is None:
        return f"{name} to FP32 (rank {rank})"
    return f"{name} to FP32 (output SQNR {sqnr:.1f} dB, rank {rank})"
