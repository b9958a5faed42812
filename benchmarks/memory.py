"""Peak memory of `qcli calibrate` for 500 and for 5000 samples: calibration streams the folder, so
the peak resident set size should not grow with the number of samples (goal: within 10%).

Each run is a separate `qcli calibrate` process on the demo model; its peak RSS is the kernel's
``ru_maxrss`` for that process (``os.wait4``). The samples are the demo's real MNIST PNGs, copied
under new names until the folder holds N files. Results go to stdout and benchmarks/results/memory.json.

    python benchmarks/memory.py [--sizes 500,5000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qcli import demo  # noqa: E402


def make_folder(folder: Path, n: int) -> None:
    sources = sorted(demo.EVAL_DIR.rglob("*.png")) + sorted(demo.CALIB_DIR.glob("*.png"))
    folder.mkdir(parents=True)
    for i in range(n):
        shutil.copy(sources[i % len(sources)], folder / f"{i:05d}.png")


def calibrate(folder: Path, out: Path) -> dict:
    argv = [sys.executable, "-m", "qcli", "calibrate", str(demo.WEIGHTS), str(folder), "--arch", demo.ARCH]
    argv += [
        "--config",
        str(ROOT / "configs/mnist.toml"),
        "-o",
        str(out),
        "--force",
        "-q",
        "--format",
        "json",
        "--limit",
        "1000000",
    ]
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)  # the rusage of this process alone
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"calibrate failed ({proc.returncode}): {stderr.read().decode().strip()}")
        report = json.loads(stdout.read())
    return {
        "samples": report["samples"],
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # ru_maxrss is in KiB on Linux
        "seconds": round(elapsed, 2),
        "stats_file_bytes": out.stat().st_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="500,5000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            folder = Path(tmp) / f"n{n}"
            make_folder(folder, n)
            rows.append(calibrate(folder, Path(tmp) / f"stats{n}.safetensors"))
    base = rows[0]["peak_rss_mib"]
    print(f"{'samples':>8} {'peak RSS MiB':>13} {'vs first':>9} {'seconds':>8} {'stats bytes':>12}")
    for row in rows:
        row["rss_ratio"] = round(row["peak_rss_mib"] / base, 3)
        print(
            f"{row['samples']:>8} {row['peak_rss_mib']:>13} {row['rss_ratio']:>9} {row['seconds']:>8} {row['stats_file_bytes']:>12}"
        )
    result = {"benchmark": "calibrate-memory", "python": platform.python_version(), "rows": rows}
    out = ROOT / "benchmarks" / "results" / "memory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
