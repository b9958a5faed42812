"""Calibration cost: `qcli calibrate` on N samples against plain FP32 inference over the same
samples (time and peak memory, each in its own process), and how the statistics file grows with N.

The demo model and its real digits (copied under new names up to N). Results go to stdout and
benchmarks/results/calibration.json.

    python benchmarks/calibration.py [--samples 512] [--sizes 128,512,2048]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

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
    print(json.dumps(result, indent=2))
    out_file = ROOT / "benchmarks" / "results" / "calibration.json"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
