"""Shared fixtures. The expensive ones (AOTInductor compiles, ~15-40 s each) are session-scoped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from models import residual_mlp

from qcli import demo
from qcli.api import convert_model_file
from qcli.config import PreprocessConfig, load_recipe
from qcli.data import SampleFolder, infer_input_spec
from qcli.load import ArchSpec, load_model
from qcli.options import CalibrationOptions, ConvertOptions

ROOT = Path(__file__).resolve().parent.parent

# Hypothesis: a fixed number of examples, derandomized so that CI runs are repeatable;
# QCLI_FUZZ_EXAMPLES=2000 make test runs a longer campaign.
settings.register_profile(
    "qcli", max_examples=int(os.environ.get("QCLI_FUZZ_EXAMPLES", "300")), derandomize=True, deadline=None
)
settings.load_profile("qcli")
MNIST_RECIPE = ROOT / "configs" / "mnist.toml"


@pytest.fixture(scope="session")
def demo_model():
    return load_model(demo.WEIGHTS, ArchSpec.parse(demo.ARCH))


@pytest.fixture(scope="session")
def mnist_preprocess() -> PreprocessConfig:
    return load_recipe(MNIST_RECIPE).preprocess


@pytest.fixture(scope="session")
def demo_spec(demo_model):
    return infer_input_spec(demo_model.module)


@pytest.fixture(scope="session")
def eval_batch(demo_spec, mnist_preprocess):
    """400 held-out digits as one batch (x, labels)."""
    folder = SampleFolder.open(demo.EVAL_DIR, mnist_preprocess, seed=0)
    batch = next(folder.batches(demo_spec, batch_size=400, limit=400))
    return batch.inputs["x"], batch.labels


@pytest.fixture(scope="session")
def demo_artifacts(tmp_path_factory):
    """The demo quantized once: package and program (one AOTInductor compile)."""
    out = tmp_path_factory.mktemp("demo") / "digits-int8.pt2"
    report = convert_model_file(
        demo.WEIGHTS,
        out,
        calib_dir=demo.CALIB_DIR,
        arch=ArchSpec.parse(demo.ARCH),
        recipe=load_recipe(MNIST_RECIPE),
        options=ConvertOptions(calibration=CalibrationOptions(limit=128), form="both"),
    )
    return {form: Path(info.path) for form, info in report.outputs.items()} | {"report": report}


@pytest.fixture(scope="session")
def residual_model_file(tmp_path_factory) -> tuple[Path, Path]:
    """ResidualMLP as a state dict plus a folder of 64 tensor samples (one .pt file of a batch)."""
    root = tmp_path_factory.mktemp("residual")
    torch.save(residual_mlp().state_dict(), root / "model.pt")
    calib = root / "calib"
    calib.mkdir()
    torch.save(torch.randn(64, 64, generator=torch.Generator().manual_seed(1)), calib / "batch.pt")
    return root / "model.pt", calib


def run_qcli(*args, cwd=None, env=None, timeout=900):
    """The real entry point in a subprocess (tests/ on PYTHONPATH for --arch models:...)."""
    import subprocess
    import sys

    full_env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "qcli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def bench_run(tmp_path_factory, demo_artifacts):
    """One `qcli bench` of the demo package with a failing speed gate, a JSON file and an HTML report."""
    root = tmp_path_factory.mktemp("bench")
    files = {"json": root / "bench.json", "html": root / "report.html"}
    proc = run_qcli(
        "bench", demo.WEIGHTS, demo_artifacts["package"], "--arch", demo.ARCH, "--eval-dir", demo.EVAL_DIR, "--config", MNIST_RECIPE,
        "--batch-sizes", "1,16", "--runs", "3", "--warmup", "1", "--time-budget", "1", "--eval-limit", "200",
        "--min-speedup", "1000", "--inconclusive", "fail", "--max-drop", "0.5", "--format", "json", "-o", files["json"],
        "--report", files["html"],
    )  # fmt: skip
    return proc, files
