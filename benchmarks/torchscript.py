"""TorchScript input against the state-dict route: the same INT8 accuracy and speed.

Run with `make bench-torchscript`. Two models, each quantized twice with the same calibration
samples, once from the state dict (+ --arch) and once from a TorchScript archive of the same
weights, then benchmarked with `qcli bench` (FP32 eager, FP32 compiled, INT8; batch 1 and 16):

- the demo CNN (``qcli/demo/weights/digits.torchscript.pt``, traced; 256 calibration digits,
  accuracy on the 1000 labeled evaluation digits);
- a ResNet-18-class network (``qcli.demo.model:ResNet18``, seeded initialisation) scripted with
  ``torch.jit.script``; 32 seeded random 3x224x224 calibration tensors, fidelity to FP32 on them.

Reports go to benchmarks/results/torchscript-<model>-<route>.json; a summary table is printed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from qcli import demo
from qcli.demo.model import ResNet18

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def run(*args: str) -> int:
    return subprocess.call([sys.executable, "-m", "qcli", *args])


def main() -> int:
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="qcli-torchscript-") as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        resnet = ResNet18().eval()
        torch.save(resnet.state_dict(), root / "resnet18.pt")
        torch.jit.save(torch.jit.script(resnet), str(root / "resnet18.torchscript.pt"))
        calib = root / "calib224"
        calib.mkdir()
        rng = np.random.default_rng(0)
        for i in range(32):
            np.save(calib / f"{i:03d}.npy", rng.standard_normal((3, 224, 224), dtype=np.float32))
        config = ["--config", str(ROOT / "configs" / "mnist.toml")]
        models = {
            "demo": {
                "state-dict": [str(demo.WEIGHTS), "--arch", demo.ARCH],
                "torchscript": [str(demo.TORCHSCRIPT)],
                "calib": str(demo.CALIB_DIR),
                "eval": str(demo.EVAL_DIR),
                "config": config,
            },
            "resnet18": {
                "state-dict": [str(root / "resnet18.pt"), "--arch", "qcli.demo.model:ResNet18"],
                "torchscript": [str(root / "resnet18.torchscript.pt")],
                "calib": str(calib),
                "eval": str(calib),
                "config": [],
            },
        }
        for name, spec in models.items():
            for route in ("state-dict", "torchscript"):
                model, *arch = spec[route]
                artifact = root / f"{name}-{route}.pt2"
                code = run(
                    "convert", model, *arch, *spec["config"], "--calib-dir", spec["calib"], "-o", str(artifact), "-q"
                )
                if code:
                    return code
                report = results / f"torchscript-{name}-{route}.json"
                bench = ["bench", model, str(artifact), *arch, *spec["config"], "--eval-dir", spec["eval"]]
                code = run(*bench, "--batch-sizes", "1,16", "--runs", "30", "-o", str(report), "-q")
                if code not in (0, 3):
                    return code
                data = json.loads(report.read_text())
                acc = data["accuracy"]
                score = f"top-1 {acc['int8_top1']:.2f}%" if acc["labeled"] else f"SQNR {acc['sqnr_db']:.1f} dB"
                for row in data["latency"]:
                    v = row["variants"]
                    rows.append(
                        f"| {name} | {route} | {row['batch_size']} | {v['fp32_compiled']['p50_ms']:.2f} | "
                        f"{v['int8']['p50_ms']:.2f} | {row['speedup_vs_fp32_compiled']:.2f}x | {score} |"
                    )
    print(f"\nTorchScript vs state dict, {torch.get_num_threads()} threads")
    print("| model | route | batch | FP32 compiled ms | INT8 ms | speed-up | INT8 accuracy |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
