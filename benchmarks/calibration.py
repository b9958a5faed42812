"""Calibration cost: `qcli calibrate` on N samples against plain FP32 inference over the same
samples (time and peak memory, each in its own process), and how the statistics file grows with N.

The demo model and its real digits (copied under new names up to N). Then, in this process, where
calibration's time goes, for the demo (256 real digits) and for a ResNet-18-class network (64
seeded 224x224 inputs): export, observer insertion, and the observed forward passes in samples/s
against FP32 eager over the same batches, with the share of the observed passes spent building
histograms (``aten::histc``). Results go to stdout and benchmarks/results/calibration.json.

    python benchmarks/calibration.py [--samples 512] [--sizes 128,512,2048]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from memory import make_folder  # noqa: E402

from qcli import demo  # noqa: E402

FP32 = """
import sys, time, torch
from pathlib import Path
from qcli.config import load_recipe
from qcli.data import SampleFolder, infer_input_spec
from qcli.load import ArchSpec, load_model
model = load_model(Path(sys.argv[1]), ArchSpec.parse(sys.argv[2]))
spec = infer_input_spec(model.module)
folder = SampleFolder.open(Path(sys.argv[3]), load_recipe(Path(sys.argv[4])).preprocess)
start = time.perf_counter()
n = 0
with torch.no_grad():
    for batch in folder.batches(spec, batch_size=32):
        model.module(batch.inputs["x"])
        n += batch.inputs["x"].shape[0]
print(n, time.perf_counter() - start)
"""


def measure(argv: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of one process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = __import__("subprocess").Popen(argv, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(err.read().decode())
        return seconds, usage.ru_maxrss / 1024, out.read().decode()


def breakdown(module: Any, batches: list[Any]) -> dict[str, float]:
    """Seconds of export and observer insertion; samples/s of observed and FP32 forward passes."""
    import torch

    from qcli import engine

    example = engine.first_row_repeated((batches[0],), 2)
    start = time.perf_counter()
    program = engine.export(module, example, ["x"])
    export_s = time.perf_counter() - start
    start = time.perf_counter()
    observed = engine.prepare_pt2e(program.module())
    prepare_s = time.perf_counter() - start

    def rate(fn: Any) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for x in batches:
                fn(x)
        return sum(len(x) for x in batches) / (time.perf_counter() - start)

    fp32 = statistics.median(rate(module) for _ in range(3))
    with torch.profiler.profile() as prof:
        observed_rate = rate(observed)  # the observers see each batch once, as in calibrate
    events = prof.key_averages()
    histc = sum(e.self_cpu_time_total for e in events if e.key == "aten::histc")
    total = sum(e.self_cpu_time_total for e in events)
    return {
        "export_s": round(export_s, 2),
        "insert_observers_s": round(prepare_s, 2),
        "observed_samples_per_s": round(observed_rate, 1),
        "fp32_samples_per_s": round(fp32, 1),
        "observed_vs_fp32_time": round(fp32 / observed_rate, 2),
        "histc_share_of_observed": round(histc / total, 3),
    }


def breakdowns() -> dict[str, dict[str, float]]:
    import numpy as np
    import torch

    from qcli.config import load_recipe
    from qcli.data import SampleFolder, infer_input_spec
    from qcli.demo.model import ResNet18
    from qcli.load import ArchSpec, load_model

    digits = load_model(demo.WEIGHTS, ArchSpec.parse(demo.ARCH)).module
    folder = SampleFolder.open(demo.CALIB_DIR, load_recipe(ROOT / "configs" / "mnist.toml").preprocess)
    batches = [b.inputs["x"] for b in folder.batches(infer_input_spec(digits), 32, 256)]
    out = {"demo": breakdown(digits, batches)}
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = [torch.from_numpy(rng.standard_normal((32, 3, 224, 224), dtype=np.float32)) for _ in range(2)]
    out["resnet18"] = breakdown(ResNet18().eval(), images)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--sizes", default="128,512,2048")
    args = parser.parse_args()
    recipe = ROOT / "configs" / "mnist.toml"
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "samples"
        make_folder(folder, args.samples)
        stats = Path(tmp) / "stats.safetensors"
        qcli = [sys.executable, "-m", "qcli", "calibrate", str(demo.WEIGHTS), str(folder), "--arch", demo.ARCH]
        qcli += ["--config", str(recipe), "-o", str(stats), "--force", "-q", "--limit", str(args.samples)]
        cal_s, cal_mib, _ = measure(qcli)
        fp_s, fp_mib, out = measure(
            [sys.executable, "-c", FP32, str(demo.WEIGHTS), demo.ARCH, str(folder), str(recipe)]
        )
        n, loop_s = out.split()
        result["calibrate"] = {"samples": args.samples, "seconds": round(cal_s, 2), "peak_rss_mib": round(cal_mib, 1)}
        result["fp32_inference"] = {
            "samples": int(n),
            "seconds": round(fp_s, 2),
            "loop_seconds": round(float(loop_s), 2),
            "peak_rss_mib": round(fp_mib, 1),
        }
        result["time_ratio"] = round(cal_s / fp_s, 2)
        result["memory_ratio"] = round(cal_mib / fp_mib, 2)
        sizes = {}
        for size in [int(s) for s in args.sizes.split(",")]:
            sub = Path(tmp) / f"n{size}"
            make_folder(sub, size)
            argv = qcli[:5] + [str(sub)] + qcli[6:]
            argv[argv.index("--limit") + 1] = str(size)
            measure(argv)
            sizes[size] = stats.stat().st_size
        result["stats_file_bytes"] = sizes
    result["in_process"] = breakdowns()
    print(json.dumps(result, indent=2))
    out_file = ROOT / "benchmarks" / "results" / "calibration.json"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
