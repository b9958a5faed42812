"""Option objects, the one path for recipes and flags, typed reports against the schema, and the
private torch/torchao/typer surfaces qcli depends on."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from conftest import ROOT, run_qcli

from qcli import demo, private, reports
from qcli.errors import OptionError
from qcli.options import BenchOptions, CalibrationOptions, ConvertOptions, SearchOptions

SCHEMA = json.loads((ROOT / "qcli" / "schemas" / "report-v1.schema.json").read_text())


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: CalibrationOptions(limit=0), "limit must be a positive number of samples, not 0"),
        (lambda: CalibrationOptions(mode="fast"), "mode must be one of static, dynamic, weight-only, not 'fast'"),
        (lambda: ConvertOptions(method="magic"), "method must be one of histogram, minmax"),
        (lambda: ConvertOptions(percentile=40.0), "percentile must be in (50, 100], not 40"),
        (lambda: ConvertOptions(exclude=[1]), "exclude must be a list of module-name patterns"),  # type: ignore[list-item]
        (lambda: ConvertOptions(exclude="fc"), "exclude must be a list of module-name patterns"),
        (lambda: ConvertOptions(weights="asymmetric"), "weights must be one of per-channel, per-tensor"),
        (lambda: ConvertOptions(form="packge"), "form must be one of package, program, both, not 'packge'"),
        (lambda: ConvertOptions(package_batch_sizes=(0,)), "package_batch_sizes must list positive batch sizes"),
        (lambda: SearchOptions(max_drop=-1, eval_dir=Path("e")), "max_drop must be at least 0 points"),
        (lambda: SearchOptions(max_drop=1, eval_dir=Path("e"), max_trials=0), "max_trials must be at least 1, not 0"),
        (lambda: SearchOptions(max_drop=1, eval_dir=Path("e"), eval_limit=0), "eval_limit must be a positive"),
        (lambda: BenchOptions(runs=0), "runs must be at least 1, not 0"),
        (lambda: BenchOptions(latency_tolerance=12), "latency_tolerance is a fraction"),
        (lambda: BenchOptions(batch_sizes=()), "batch_sizes must list positive batch sizes"),
    ],
)
def test_options_check_themselves_and_speak_of_option_names(make, needle):
    """The library names options by their Python names; no flag (--x) appears in its messages."""
    with pytest.raises(OptionError) as info:
        make()
    assert needle in str(info.value) and "--" not in str(info.value)


def test_defaults_are_declared_once_and_shown_in_help():
    proc = run_qcli("convert", "--help", env={"COLUMNS": "200"})
    text = " ".join(proc.stdout.split())
    assert "[default: histogram]" in text and "[default: 99.99]" in text and "[default: 1,16]" in text
    assert "[default: per-channel]" in text and "[default: 20]" in text
    assert ConvertOptions().package_batch_sizes == BenchOptions().batch_sizes == (1, 16)


@pytest.mark.parametrize(
    ("recipe", "flags", "message"),
    [
        (
            "[convert]\nmax_trials = 0\n",
            [],
            "qcli: error: 'convert.max_trials' (from r.toml) must be at least 1, not 0",
        ),
        ("", ["--max-trials", "0"], "qcli: error: --max-trials must be at least 1, not 0"),
        ("[convert]\nform = 'packge'\n", [], "qcli: error: r.toml: 'convert.form': 'packge' is not one of"),
        ("[convert]\nexclude = [1]\n", [], "expected list of a string, got an integer 1"),
    ],
)
def test_a_bad_value_gets_one_message_from_a_flag_or_a_recipe(tmp_path, recipe, flags, message):
    (tmp_path / "r.toml").write_text(recipe)
    argv = ["convert", demo.WEIGHTS, "--arch", demo.ARCH, "--calib-dir", demo.CALIB_DIR, "-o", "x.pt2"]
    argv += ["--max-drop", "1", "--eval-dir", demo.EVAL_DIR, "--config", "r.toml", *flags]
    proc = run_qcli(*argv, cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.startswith("qcli: error: ") and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.pt2").exists()


def _schema_properties(name: str) -> tuple[set[str], set[str]]:
    definition = SCHEMA["$defs"][name]
    return set(definition["properties"]), set(definition.get("required", []))


@pytest.mark.parametrize(
    "report",
    [
        reports.CalibrateReport,
        reports.ConvertReport,
        reports.BenchReport,
        reports.InspectModelReport,
        reports.InspectArtifactReport,
    ],
)
def test_report_classes_match_the_json_schema(report):
    """The schema documents every field of the typed reports and requires only fields they have."""
    fields = {f.name for f in dataclasses.fields(report)} | ({"kind"} if report.kind else set())
    properties, required = _schema_properties(f"inspect_{report.kind}" if report.kind else report.command)
    assert fields == properties, (fields - properties, properties - fields)
    assert required <= fields


def test_a_bench_report_reads_back_from_its_json(bench_run):
    data = json.loads(bench_run[1]["json"].read_text())
    report = reports.BenchReport.from_dict(data)
    assert report.to_dict() == data
    assert report.latency[0].variants["int8"].p50_ms == data["latency"][0]["variants"]["int8"]["p50_ms"]


def test_private_surfaces_are_all_present():
    """Fails naming the API when a torch, torchao or typer upgrade removes or changes one."""
    assert private.check() == []


def test_a_missing_private_surface_is_named(monkeypatch):
    monkeypatch.setitem(private.SURFACES, "torch._not_there", lambda: __import__("torch")._not_there)
    broken = private.check()
    assert len(broken) == 1 and broken[0].startswith("torch._not_there: AttributeError")


def test_package_loader_falls_back_to_load_package(monkeypatch, demo_artifacts, eval_batch):
    """Without torch's private C++ runner, packages load through the public load_package."""
    import torch

    from qcli import artifact

    x = eval_batch[0][:1].clone()
    with torch.no_grad():
        fast = artifact.load_artifact(demo_artifacts["package"]).run(x.clone())
        monkeypatch.setattr(private, "aoti_runner_class", lambda: None)
        slow = artifact.load_artifact(demo_artifacts["package"]).run(x.clone())
    torch.testing.assert_close(fast, slow, rtol=0, atol=0)


def test_weight_realignment_leaves_a_runner_without_the_methods_alone():
    """The fallback for a torch whose model runner lacks the constant-buffer methods: no copies."""
    from qcli.artifact import realign_weights

    class OlderRunner:
        def run(self, inputs):
            return inputs

    assert realign_weights(OlderRunner()) == {}
