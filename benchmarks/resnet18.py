"""INT8 vs FP32 on a ResNet-18-class model (qcli.demo.model:ResNet18), batch 1 and 16.

Run with `make bench-resnet18`. Speed does not depend on the weights' values, so the network keeps its
seeded initialisation, and calibration uses 32 seeded random 3x224x224 tensors; the report's
fidelity figures (SQNR, cosine) are against FP32 on those same tensors. Everything is written to
a temporary folder except the JSON report (benchmarks/results/resnet18.json).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from qcli.demo.model import ResNet18

HERE = Path(__file__).resolve().parent


def main() -> int:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qcli-resnet18-") as tmp:
        root = Path(tmp)
        torch.save(ResNet18().eval().state_dict(), root / "resnet18.pt")
        calib = root / "calib"
        calib.mkdir()
        for i in range(32):
            np.save(calib / f"{i:03d}.npy", rng.standard_normal((3, 224, 224), dtype=np.float32))
        cmd = [
            sys.executable,
            "-m",
            "qcli",
            "bench",
            str(root / "resnet18.pt"),
            "--arch",
            "qcli.demo.model:ResNet18",
            "--calib-dir",
            str(calib),
            "--eval-dir",
            str(calib),
            "--batch-sizes",
            "1,16",
            "--runs",
            "30",
            "-o",
            str(results / "resnet18.json"),
        ]
        return subprocess.call(cmd)


if __name__ == "__main__":
    raise SystemExit(main())
