"""Start-up time of `qcli --help` against `python -c "import torch"` (median of N fresh processes).

`qcli --help` (and shell completion) must not import torch; this measures what that is worth.

    python benchmarks/startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def median_seconds(argv: list[str], runs: int) -> float:
    subprocess.run(argv, capture_output=True, check=True)  # warm the file cache
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    qcli = Path(sys.executable).with_name("qcli")
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "qcli --help": [str(qcli), "--help"],
        "qcli convert --help": [str(qcli), "convert", "--help"],
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
    }
    results = {name: median_seconds(argv, args.runs) for name, argv in cases.items()}
    torch_s = results['python -c "import torch"']
    print(f"{'command':<28} {'median s':>9} {'vs import torch':>16}")
    for name, seconds in results.items():
        print(f"{name:<28} {seconds:>9.3f} {seconds / torch_s:>15.2f}x")
    out = ROOT / "benchmarks" / "results" / "startup.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": args.runs, "median_seconds": results}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
