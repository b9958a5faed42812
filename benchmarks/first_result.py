"""Time from loading an INT8 artifact to its first result, compilation included, per form.

Run with `make bench-first-result`. For the demo CNN and a ResNet-18-class network, `qcli convert
--form both` writes the AOTInductor package and the exported program; then fresh Python processes
each load one form the way the README shows (``load_package``; ``torch.export.load`` +
``torch.compile`` with freezing), or the package with qcli's own loader (``load_artifact``: the C++
package loader for the one model needed), and run one batch-1 input. Each process reports the seconds from
before the load call to the first output (``import torch`` excluded, measured apart). The program
form is measured twice: with an empty Inductor cache (``TORCHINDUCTOR_CACHE_DIR`` pointed at a new
folder: the first start on a machine) and with the cache the previous start filled (every later
start). The program is also loaded with qcli's loader and a compile cache (``QCLI_COMPILE_CACHE``:
the first start compiles an AOTInductor package for the input shape into it, later starts load
that), cold and warm. Results: benchmarks/results/first_result.json.
"""

from __future__ import annotations

import json
import os
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
RUNS = 3

CHILD = r"""
import sys, time, json
import torch
form, path, shape = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
x = torch.randn(*shape)
t0 = time.perf_counter()
if form == "package":
    from torch._inductor.package import load_package
    model = load_package(path, "model")
elif form in ("package_qcli", "program_qcli"):  # qcli's loader: torch's C++ model runner, this model
    from pathlib import Path                      # only; a program compiles into QCLI_COMPILE_CACHE
    from qcli.artifact import load_artifact      # (set by the parent) on its first start
    model = load_artifact(Path(path)).run
else:
    import torch._inductor.config
    import torch.ao.quantization.fx._decomposed  # registers the quantize ops
    torch._inductor.config.freezing = True
    model = torch.compile(torch.export.load(path).module(), dynamic=False)
t1 = time.perf_counter()
with torch.no_grad():
    model(x)
t2 = time.perf_counter()
print(json.dumps({"load": t1 - t0, "first_result": t2 - t0}))
"""


def child(form: str, path: Path, shape: list[int], cache: Path) -> dict[str, float]:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "QCLI_COMPILE_CACHE": str(cache / "qcli")}
    out = subprocess.run([sys.executable, "-c", CHILD, form, str(path), json.dumps(shape)], env=env,
                         check=True, capture_output=True, text=True).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    report: dict = {"runs": RUNS, "threads": torch.get_num_threads(), "models": {}}
    with tempfile.TemporaryDirectory(prefix="qcli-first-") as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        torch.save(ResNet18().eval().state_dict(), root / "resnet18.pt")
        calib = root / "calib"
        calib.mkdir()
        rng = np.random.default_rng(0)
        for i in range(16):
            np.save(calib / f"{i:03d}.npy", rng.standard_normal((3, 224, 224), dtype=np.float32))
        models = {
            "demo": ([str(demo.WEIGHTS), "--arch", demo.ARCH, "--config", str(ROOT / "configs" / "mnist.toml"),
                      "--calib-dir", str(demo.CALIB_DIR)], [1, 1, 28, 28]),
            "resnet18": ([str(root / "resnet18.pt"), "--arch", "qcli.demo.model:ResNet18", "--calib-dir", str(calib)],
                         [1, 3, 224, 224]),
        }  # fmt: skip
        start = subprocess.run([sys.executable, "-c", "import time; t = time.perf_counter(); import torch; "
                                "print(time.perf_counter() - t)"], check=True, capture_output=True, text=True)  # fmt: skip
        report["import_torch_seconds"] = float(start.stdout.strip())
        for name, (args, shape) in models.items():
            out = root / f"{name}.pt2"
            subprocess.run([sys.executable, "-m", "qcli", "convert", *args, "--form", "both", "-o", str(out), "-q"],
                           check=True)  # fmt: skip
            program = out.with_name(out.stem + ".program.pt2")
            entry = {}
            entry["package"] = [child("package", out, shape, root / f"cache-{name}-pkg") for _ in range(RUNS)]
            entry["package_qcli"] = [child("package_qcli", out, shape, root / f"cache-{name}-pkg") for _ in range(RUNS)]
            cold = [child("program", program, shape, root / f"cache-{name}-{i}") for i in range(RUNS)]
            warm = [child("program", program, shape, root / f"cache-{name}-0") for _ in range(RUNS)]
            entry["program_cold_cache"], entry["program_warm_cache"] = cold, warm
            cold = [child("program_qcli", program, shape, root / f"cache-{name}-qcli-{i}") for i in range(RUNS)]
            warm = [child("program_qcli", program, shape, root / f"cache-{name}-qcli-0") for _ in range(RUNS)]
            entry["program_qcli_cold_cache"], entry["program_qcli_warm_cache"] = cold, warm
            report["models"][name] = {
                k: {"median_first_result_s": statistics.median(r["first_result"] for r in v),
                    "median_load_s": statistics.median(r["load"] for r in v)}
                for k, v in entry.items()
            }  # fmt: skip
    (results / "first_result.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"import torch: {report['import_torch_seconds']:.2f} s (not included below)")
    print("| model | form | load s | to first INT8 result s |")
    print("|---|---|---|---|")
    for name, forms in report["models"].items():
        for form, v in forms.items():
            print(f"| {name} | {form} | {v['median_load_s']:.2f} | {v['median_first_result_s']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
