"""The per-call set-up of torch's INT8 convolution operator: wall time per call against the time
oneDNN reports executing the convolution, for depthwise convolutions of MobileNetV2's shapes.

The operator behind every INT8 convolution in a qcli package (``onednn::qconv_pointwise``) builds
its oneDNN descriptor, memory objects, scale tensors and output on each call; a convolution whose
kernel runs for a microsecond still costs tens of microseconds. That is what keeps small mobile
models at batch 1 behind ONNX Runtime (README, "Why this cell needs torch itself"). The figures
come from two child processes, 1 thread: one timing the calls, one run with
``ONEDNN_VERBOSE=profile_exec`` (oneDNN prints each execution's time; printing slows the calls).

    python benchmarks/conv_setup.py [--calls 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# (channels, map height = width): depthwise 3x3, stride 1, padding 1, as in MobileNetV2
SHAPES = ((16, 1), (960, 7), (384, 14), (144, 56))


def child(calls: int) -> None:
    """Time each shape's convolution; print one JSON line of wall times (µs per call) to stderr,
    which oneDNN's verbose lines (stdout) do not share."""
    import torch

    torch.set_num_threads(1)
    walls = []
    for channels, size in SHAPES:
        x = torch.randint(0, 255, (1, channels, size, size), dtype=torch.uint8)
        x = x.contiguous(memory_format=torch.channels_last)
        w = torch.randint(-127, 127, (channels, 1, 3, 3), dtype=torch.int8)
        w_scale = torch.rand(channels) * 0.01 + 1e-4
        w_zp = torch.zeros(channels, dtype=torch.int64)
        packed = torch.ops.onednn.qconv_prepack(w, w_scale, 0.02, 3, [1, 1], [1, 1], [1, 1], channels, list(x.shape))
        bias = torch.randn(channels)

        op = torch.ops.onednn.qconv_pointwise
        # the arguments a package passes: INT8 input and its scale / zero point, packed weight with
        # per-channel scales, bias, stride, padding, dilation, groups, output scale / zero point
        call_args = (x, 0.02, 3, packed, w_scale, w_zp, bias, [1, 1], [1, 1], [1, 1],
                     channels, 0.05, 0, None, "relu", [], "")  # fmt: skip
        for _ in range(200):
            op(*call_args)
        sys.stdout.flush()
        print(f"qcli-conv-setup-start {channels} {size}", flush=True)
        start = time.perf_counter()
        for _ in range(calls):
            op(*call_args)
        walls.append((time.perf_counter() - start) / calls * 1e6)
        print(f"qcli-conv-setup-end {channels} {size}", flush=True)
    print(json.dumps(walls), file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.calls)
        return 0

    def run_child(verbose: bool) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop("ONEDNN_VERBOSE", None)
        if verbose:
            env["ONEDNN_VERBOSE"] = "profile_exec"
        argv = [sys.executable, __file__, "--child", "--calls", str(args.calls)]
        return subprocess.run(argv, env=env, capture_output=True, text=True, check=True)

    # wall times without the verbose log (printing a line per call costs more than the set-up);
    # execution times from a second run with it
    walls = json.loads(run_child(False).stderr.strip().splitlines()[-1])
    run = run_child(True)
    execs: list[list[float]] = []
    times: list[float] = []
    inside = False
    for line in run.stdout.splitlines():
        if line.startswith("qcli-conv-setup-start"):
            inside, times = True, []
        elif line.startswith("qcli-conv-setup-end"):
            inside = False
            execs.append(times)
        elif inside and line.startswith("onednn_verbose") and ",exec," in line:
            times.append(float(line.rsplit(",", 1)[1]) * 1e3)  # oneDNN prints milliseconds
    print("| depthwise 3x3 map | µs per call (wall) | µs executing (oneDNN) | set-up per call |")
    print("|---|---|---|---|")
    for (channels, size), wall, times in zip(SHAPES, walls, execs, strict=True):
        kernel = statistics.median(times)
        print(f"| {size}x{size}x{channels} | {wall:.1f} | {kernel:.1f} | {wall - kernel:.1f} |")
    print(f"\n1 thread, {args.calls} calls per shape, torch {__import__('torch').__version__}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
