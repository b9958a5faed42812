"""TorchScript input against the state-dict route: the same INT8 accuracy and speed.

Run with `make bench-torchscript`. Two models, each quantized twice with the same calibration
samples, once from the state dict (+ --arch) and once from a TorchScript archive of the same
weights; both artifacts are then loaded in one process, evaluated on the same samples and timed
interleaved at batch 1 and 16 (`make bench-resnet18` has the FP32 comparison):

- the demo CNN (``qcli/demo/weights/digits.torchscript.pt``, traced; 256 calibration digits,
  accuracy on the 1000 labeled evaluation digits);
- a ResNet-18-class network (``qcli.demo.model:ResNet18``, seeded initialisation) scripted with
  ``torch.jit.script``; 32 seeded random 3x224x224 calibration tensors, fidelity to FP32 on them.

Reports go to benchmarks/results/torchscript-<model>.json; a summary table is printed.
"""

from __future__ import annotations

import json
import statistics
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


def compare(name: str, spec: dict, artifacts: dict[str, Path], results: Path) -> list[str]:
    """Both artifacts in this process: accuracy on the evaluation folder, then latency interleaved."""
    from qcli.artifact import load_artifact
    from qcli.bench import Plan, measure
    from qcli.config import Recipe, load_recipe
    from qcli.data import SampleFolder, infer_input_spec
    from qcli.evaluate import evaluate
    from qcli.load import ArchSpec, load_model

    model, *arch = spec["state-dict"]
    fp32 = load_model(Path(model), ArchSpec.parse(arch[1])).module
    recipe = load_recipe(Path(spec["config"][1])) if spec["config"] else Recipe()
    input_spec = infer_input_spec(fp32)
    loaded = {route: load_artifact(path) for route, path in artifacts.items()}
    report: dict = {"model": name, "accuracy": {}, "latency": []}
    folder = SampleFolder.open(Path(spec["eval"]), recipe.preprocess)
    for route, artifact in loaded.items():
        report["accuracy"][route] = evaluate(fp32, artifact.run, folder, input_spec).to_dict()
    example = next(folder.batches(input_spec, batch_size=16, limit=16)).inputs[input_spec.single]
    rows = []
    for batch in (1, 16):
        x = example[[i % len(example) for i in range(batch)]].contiguous()
        runners = {route: artifact.run for route, artifact in loaded.items()}
        # neither route is named INT8/FP32, so `measure` has no ratio to refine: it runs the minimum
        times = measure(runners, (x,), Plan(warmup=3, min_rounds=40 if batch == 1 else 20)).times
        medians = {route: 1e3 * statistics.median(t) for route, t in times.items()}
        report["latency"].append({"batch": batch, "median_ms": medians})
        acc = report["accuracy"]
        score = {
            r: f"{acc[r]['int8_top1']:.2f}%" if acc[r]["labeled"] else f"{acc[r]['sqnr_db']:.1f} dB" for r in loaded
        }
        rows.append(
            f"| {name} | {batch} | {medians['state-dict']:.2f} | {medians['torchscript']:.2f} | "
            f"{medians['state-dict'] / medians['torchscript']:.2f}x | {score['state-dict']} | {score['torchscript']} |"
        )
    (results / f"torchscript-{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    return rows


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
            artifacts = {}
            for route in ("state-dict", "torchscript"):
                model, *arch = spec[route]
                artifacts[route] = root / f"{name}-{route}.pt2"
                code = run("convert", model, *arch, *spec["config"], "--calib-dir", spec["calib"],
                           "-o", str(artifacts[route]), "-q")  # fmt: skip
                if code:
                    return code
            rows.extend(compare(name, spec, artifacts, results))
    print(f"\nINT8 artifacts from the state dict and from TorchScript, {torch.get_num_threads()} threads")
    print(
        "| model | batch | state-dict INT8 ms | TorchScript INT8 ms | TorchScript speed | state-dict accuracy | TorchScript accuracy |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
