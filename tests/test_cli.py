"""Thin CLI tests: exit codes, one-line errors, JSON on stdout. Subprocesses run the real entry point."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_qcli
from models import residual_mlp

from qcli import demo

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
ARCH = ["--arch", demo.ARCH]


def qcli(*args, cwd=None, env=None):
    return run_qcli(*args, cwd=cwd, env=env, timeout=600)


def one_line_error(proc):
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qcli: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_help_does_not_import_torch():
    code = (
        "import sys; from typer.testing import CliRunner; from qcli.cli.app import app; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0 and 'calibrate' in r.output; "
        "r = CliRunner().invoke(app, ['bench', '--help']); assert r.exit_code == 0 and '--max-drop' in r.output; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_usage_errors_exit_2(tmp_path):
    assert qcli("inspect", tmp_path / "missing.pt").returncode == 2
    assert qcli("calibrate", demo.WEIGHTS, tmp_path, "-o", tmp_path / "s.safetensors", "--mode", "fast").returncode == 2
    assert qcli("bench", demo.WEIGHTS, "--batch-sizes", "1,x").returncode == 2


def test_bad_model_one_line_exit_1(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(os.urandom(256))
    proc = qcli("calibrate", bad, demo.CALIB_DIR, "-o", tmp_path / "s.safetensors")
    assert proc.returncode == 1
    assert "is not a TorchScript archive" in one_line_error(proc)
    assert not (tmp_path / "s.safetensors").exists()


def test_debug_shows_traceback(tmp_path):
    proc = qcli("inspect", demo.WEIGHTS, env={"QCLI_DEBUG": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "pass --arch" in proc.stderr


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "s.safetensors"
    out.write_bytes(b"keep me")
    proc = qcli("calibrate", demo.WEIGHTS, demo.CALIB_DIR, "-o", out, *ARCH)
    assert proc.returncode == 1 and "--force" in one_line_error(proc)
    assert out.read_bytes() == b"keep me"


def test_calibrate_convert_inspect_end_to_end(tmp_path):
    stats = tmp_path / "stats.safetensors"
    proc = qcli(
        "calibrate",
        demo.WEIGHTS,
        demo.CALIB_DIR,
        "-o",
        stats,
        *ARCH,
        "--config",
        ROOT / "configs/mnist.toml",
        "--limit",
        "48",
        "--format",
        "json",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["samples"] == 48 and report["schema_version"] == 1
    out = tmp_path / "int8.pt2"
    proc = qcli("convert", demo.WEIGHTS, *ARCH, "--stats", stats, "-o", out, "--form", "program", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["quantized_layers"] == 10
    proc = qcli("inspect", out, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["kind"] == "artifact" and info["calibration"]["samples"] == 48
    proc = qcli("inspect", out, "--format", "markdown")
    assert proc.returncode == 0 and "| layer |" in proc.stdout
    # statistics of the demo do not fit another model: refused before any work, nothing written
    other = tmp_path / "mlp.pt"
    torch.save(residual_mlp().state_dict(), other)
    proc = qcli("convert", other, "--arch", "models:residual_mlp", "--stats", stats, "-o", tmp_path / "x.pt2")
    assert proc.returncode == 1 and "were computed for another model" in proc.stderr, proc.stderr
    assert not (tmp_path / "x.pt2").exists()


def test_bench_gate_fails_with_exit_3_and_still_reports(bench_run):
    proc, files = bench_run
    assert proc.returncode == 3, proc.stderr
    report = json.loads(proc.stdout)
    assert report == json.loads(files["json"].read_text())
    assert files["html"].read_text().startswith("<!doctype html>")
    assert report["gates"]["passed"] is False
    gates, latency = report["gates"], report["latency"]
    judged = gates["failures"] + gates["inconclusive"]  # a batch size measured while disturbed is undecided
    assert len(judged) == 2 and all("--min-speedup" in f for f in judged)
    assert len(gates["failures"]) == sum(not t["noise"]["disturbed"] for t in latency)
    assert report["accuracy"]["samples"] == 200 and report["accuracy"]["drop"] <= 0.5
    assert [lat["batch_size"] for lat in report["latency"]] == [1, 16]
    assert set(report["latency"][0]["variants"]) == {"fp32_eager", "fp32_compiled", "int8"}
    assert report["environment"]["threads"] >= 1 and report["environment"]["torch_version"]
    resources = report["resources"]  # loading and first call, measured in the same run
    assert resources["int8_load_seconds"] > 0 and resources["int8_first_call_ms"] > 0
    assert resources["fp32_compiled_first_call_ms"] > 0 and resources["peak_rss_mib"] > 100  # torch alone is more
    assert resources["int8_rss_mib"] is not None and resources["fp32_model_rss_mib"] is not None
    assert "--min-speedup" in proc.stderr.strip().splitlines()[-1]
    assert proc.stderr.strip().splitlines()[-1].startswith("qcli: error: ")


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_interrupt_leaves_nothing(tmp_path, signame):
    import signal
    import time

    out = tmp_path / "s.safetensors"
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qcli",
            "calibrate",
            str(demo.WEIGHTS),
            str(demo.EVAL_DIR),
            "-o",
            str(out),
            *ARCH,
            "--batch-size",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    # the signal arrives mid-calibration: after the first progress line (10% of 1000 samples),
    # however fast this machine is
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen.append(line)
        if not line or "calibrating:" in line:
            break
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (130 if signame == "SIGINT" else 143), "".join(seen) + err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("signame", "during"), [("SIGINT", ".int8.program.pt2."), ("SIGTERM", ".int8.pt2.")])
def test_interrupted_convert_leaves_nothing(tmp_path, signame, during):
    """--form both writes the program, then the package: the signal arrives while the named one
    is being written (its temporary folder exists), and neither file is left."""
    import signal
    import time

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    argv = [
        sys.executable,
        "-m",
        "qcli",
        "convert",
        str(demo.WEIGHTS),
        *ARCH,
        "--calib-dir",
        str(demo.CALIB_DIR),
        "--limit",
        "32",
    ]
    argv += ["-o", str(out_dir / "int8.pt2"), "--form", "both", "--package-batch-sizes", "1,3,5"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    while (
        not any(p.name.startswith(during) for p in out_dir.iterdir())
        and proc.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.01)
    assert proc.poll() is None, "convert finished before the signal could be sent"
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (130 if signame == "SIGINT" else 143), err
    assert err.strip().splitlines()[-1] == "qcli: interrupted; no partial output was left"
    assert list(out_dir.iterdir()) == []


def test_a_report_that_cannot_be_written_after_a_failed_gate_still_exits_3(tmp_path, monkeypatch, capsys):
    """The gate's verdict is the exit code; the write failure is reported beside it."""
    from test_ux import _report

    from qcli import api
    from qcli.cli import bench as bench_cli
    from qcli.cli.app import run
    from qcli.errors import GateFailed, QcliError

    report = _report(1.0, 2.0, 99.0)
    report.gates.fail(["INT8 is 2.00x FP32 compiled at batch 16, under --min-speedup 9"])

    def failed_gate(*args, **kwargs):
        raise GateFailed(report.gates.failures[0], report=report)

    def disk_full(path, text):
        raise QcliError(f"cannot write the report to '{path}': No space left on device")

    monkeypatch.setattr(api, "bench_model", failed_gate)
    monkeypatch.setattr(bench_cli, "write_text", disk_full)
    (tmp_path / "int8.pt2").write_bytes(b"x")
    code = run(["bench", str(demo.WEIGHTS), str(tmp_path / "int8.pt2"), "--arch", demo.ARCH,
                "-o", str(tmp_path / "bench.json"), "--format", "json"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3
    assert err[0].startswith("qcli: error: cannot write the report") and "under --min-speedup 9" in err[-1]


NOISY_ARCH = """
import logging
from models import residual_mlp

# what importing transformers does on this machine: torchao logs each CUDA library it cannot load,
# torch logs pytree deprecations
logging.getLogger("torchao").warning("Failed to load /x/torchao/_C_mxfp8.so: Could not load this library")
logging.getLogger("torch.utils._pytree").warning("<enum 'KernelPreference'> is an Enum subclass")
logging.getLogger("mine").warning("the user's own warning")

def build():
    return residual_mlp()
"""


def test_library_noise_from_an_arch_import_is_hidden(tmp_path):
    """An --arch module that imports transformers made torchao and torch print their log lines on
    every command; they are hidden now, and the user's own warnings are not."""
    (tmp_path / "noisy.py").write_text(NOISY_ARCH)
    torch.save(residual_mlp().state_dict(), tmp_path / "mlp.pt")
    proc = run_qcli("inspect", "mlp.pt", "--arch", "noisy:build", cwd=tmp_path,
                    env={"PYTHONPATH": f"{TESTS}{os.pathsep}{tmp_path}"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Failed to load" not in proc.stderr and "Enum subclass" not in proc.stderr
    assert "the user's own warning" in proc.stderr
