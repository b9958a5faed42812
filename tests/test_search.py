"""convert --max-drop: the FP32 fall-back search (qcli/search.py) and its CLI contract."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from conftest import MNIST_RECIPE, run_qcli

from qcli import demo, graph
from qcli.calibrate import calibrate
from qcli.data import SampleFolder
from qcli.options import CalibrationOptions, SearchOptions
from qcli.search import Searcher, search


@dataclass
class FakeAccuracy:
    drop: float
    labeled: bool = True
    int8_top1: float = 0.0
    top1_agreement: float = 0.0
    score: None = None


@pytest.fixture(scope="module")
def calibrated(demo_model, mnist_preprocess):
    result = calibrate(demo_model, SampleFolder.open(demo.CALIB_DIR, mnist_preprocess), CalibrationOptions(limit=64))
    return result


def run_search(demo_model, calibrated, drop_for, **kwargs):
    seen = []

    def evaluate_int8(converted):
        fp32_layers = sum(
            1
            for n in converted.graph.nodes
            if graph.layer_type(n) == "Conv2d" and graph.dequantize_kind(n.args[1]) is None
        )
        seen.append(fp32_layers)
        return FakeAccuracy(drop_for(fp32_layers))

    searcher = Searcher(demo_model, calibrated.prepared, calibrated.samples, evaluate_int8, "histogram", 99.99)
    result = search(searcher, SearchOptions(**{"max_drop": 1.0, "eval_dir": demo.EVAL_DIR, **kwargs}))
    return result, seen


def test_layers_fall_back_worst_first_until_the_budget_is_met(demo_model, calibrated):
    result, seen = run_search(demo_model, calibrated, lambda fp32_layers: max(0.0, 3.0 - fp32_layers))
    assert result.met and result.stopped_by == "budget met"
    assert [len(t.excluded) for t in result.trials] == [0, 1, 2]
    assert seen == [0, 1, 2]  # the evaluated graphs really had that many FP32 convolutions
    assert result.best.excluded == tuple(result.ranking[:2]) and result.best.drop == 1.0
    assert "output SQNR" in result.trials[1].reason
    again, _ = run_search(demo_model, calibrated, lambda fp32_layers: max(0.0, 3.0 - fp32_layers))
    assert again.ranking == result.ranking and [t.excluded for t in again.trials] == [t.excluded for t in result.trials]


def test_budget_not_met_keeps_the_best_trial(demo_model, calibrated):
    drops = {0: 5.0, 1: 2.0, 2: 3.0}
    result, _ = run_search(demo_model, calibrated, lambda n: drops.get(n, 4.0), max_trials=3)
    assert not result.met and result.stopped_by == "--max-trials 3"
    assert len(result.best.excluded) == 1 and result.best.drop == 2.0


def test_timeout_stops_the_search(demo_model, calibrated):
    result, _ = run_search(demo_model, calibrated, lambda n: 5.0, timeout=0.0)
    assert not result.met and result.stopped_by == "--timeout 0s" and len(result.trials) == 1


def test_cli_budget_met_and_not_met(tmp_path):
    """Exit 0 when the budget holds; exit 3 with the artifact still written when it cannot."""
    common = ["convert", demo.WEIGHTS, "--arch", demo.ARCH, "--calib-dir", demo.CALIB_DIR, "--limit", "64", "--config", MNIST_RECIPE,
              "--form", "program", "--eval-limit", "200", "--format", "json", "-q"]  # fmt: skip
    ok = run_qcli(*common, "--eval-dir", demo.EVAL_DIR, "-o", tmp_path / "ok.pt2", "--max-drop", "1")
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["search"]["met"] and report["search"]["trials"][0]["excluded"] == []
    assert (tmp_path / "ok.pt2").exists()


def test_cli_budget_not_met_exits_3_and_still_writes(tmp_path):
    """An input with one feature 10^4 times larger than the rest: min/max ranges wipe out the rest,
    INT8 disagrees with FP32, and one trial cannot fix it: exit 3, the best artifact written."""
    from models import residual_mlp_files

    residual_mlp_files(tmp_path, outlier_scale=1e4)
    proc = run_qcli(
        "convert", tmp_path / "mlp.pt", "--arch", "models:residual_mlp", "--calib-dir", tmp_path / "calib", "--method", "minmax",
        "--form", "program", "--eval-dir", tmp_path / "eval", "--max-drop", "0", "--max-trials", "1", "--metric", "agreement",
        "-o", tmp_path / "int8.pt2", "--format", "json", "-q",
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    report = json.loads(proc.stdout)
    search = report["search"]
    assert not search["met"] and search["stopped_by"] == "--max-trials 1" and search["trials"][0]["drop"] > 5
    assert (tmp_path / "int8.pt2").exists()
    assert "--max-drop 0 not met" in proc.stderr.strip().splitlines()[-1]
    assert proc.stderr.strip().splitlines()[-1].startswith("qcli: error: ")
