"""qcli's INT8 against the tools a user would otherwise reach for, on the same models and inputs.

Run with `make bench-peers` (installs the optional `peers` extra: ONNX Runtime, onnx, onnxscript;
none of them is needed by qcli itself). For a ResNet-18-class CNN, a MobileNetV2-class CNN, an
EfficientNet-Lite0-class CNN, a 6-layer transformer encoder (``qcli.demo.model``: ResNet18,
MobileNetV2, EfficientNetLite0, TextEncoder; seeded
initialisation, no pretrained weights may be downloaded here) and two small CNNs of the kind
served one request at a time (the demo's trained DigitNet on its 28x28 digits; ONet48, MTCNN's
48x48 output network with PReLU, seeded), it measures in one process, at batch 1 and 16, with 1
and 2 threads:

- ``fp32_eager``: the PyTorch module under ``torch.no_grad()``;
- ``fp32_compiled``: ``torch.compile`` with Inductor weight freezing (static shapes);
- ``ort_fp32``: the model exported with ``torch.onnx.export`` and run by ONNX Runtime (all graph
  optimisations, ``allow_spinning=0``: ORT's default spinning thread pool keeps the other core busy
  between calls, which slows torch when both run in one process);
- ``ort_int8``: ONNX Runtime ``quantize_static`` (QDQ, per-channel weights, U8 activations and
  S8 weights as ORT recommends for x86) calibrated on the same samples as qcli;
- ``ort_fp32_spin`` / ``ort_int8_spin``: the same sessions with ORT's default spinning, which is
  how a user gets ORT out of the box: without spinning ORT is handicapped at small batches, with it
  whatever runs right after it in the process is slowed by the spinning threads. So they are
  measured apart, against qcli's variants only, in blocks of 5 calls per variant and round (each
  round keeps the block's median): ORT's spinning helps its own next call, as in a serving loop,
  and the one qcli call its still-spinning threads slow down is dropped by the median;
- ``torchao_fx_int8``: PyTorch's deprecated ``torch.ao`` FX INT8 (x86 qconfig) on the same
  samples; the encoder cannot be FX-traced (shape-dependent views), so for it this is
  ``torch.ao``'s eager dynamic INT8 of the Linear layers, the path its docs give for transformers;
- ``qcli_int8``: ``qcli convert --threads N`` (static INT8, AOTInductor package for batch 1 and
  16, compiled for the thread count it runs with, as ORT gets a session per thread count) loaded
  with qcli's loader (``qcli.artifact.package_runner``, what ``load_artifact`` uses: torch's C++
  model runner with the weights re-placed at 64-byte alignment); for the encoder also
  ``qcli_int8_dynamic`` (``--mode dynamic``); for the CNNs also ``qcli_int8_speed``
  (``--prefer speed``: per batch size, layers measured faster in FP32 stay FP32);
  ``qcli_int8_load_package`` is the same package loaded with torch's ``load_package`` (weights
  as AOTInductor leaves them). qcli's figure is its fastest variant.

Variants run interleaved (a new seeded random order every round) after warm-up, for at least 40 rounds
(batch 1) or 15 (batch 16) and then until qcli's ratio to every peer is known to +-5% (95%
interval, paired bootstrap over rounds: ``qcli.metrics.ratio_interval``) or 20 s per cell. The
table shows medians and ratios; a ratio is bold only where its interval excludes 1 (a winner), and
marked ``~`` where it does not, and "(disturbed)" where another program used more than a quarter
of a core meanwhile (``qcli.noise``). benchmarks/results/peers.json holds every figure, interval,
the noise figures and the environment.
"""

from __future__ import annotations

import copy
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from qcli.bench import round_order
from qcli.demo.model import DigitNet, EfficientNetLite0, MobileNetV2, ONet48, ResNet18, TextEncoder
from qcli.metrics import median_interval, ratio_interval

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import encoder as text  # noqa: E402  (sentences from the standard library, tokenised like encoder.py)

BATCHES = (1, 16)
THREADS = (1, 2)
CALIB = 32  # calibration samples per model, the same for every tool


def image_model(cls: type, shape: tuple[int, ...] = (3, 224, 224)) -> dict[str, Any]:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    calib = [(torch.from_numpy(rng.standard_normal((1, *shape), dtype=np.float32)),) for _ in range(CALIB)]
    return {"module": cls().eval(), "arch": f"qcli.demo.model:{cls.__name__}", "kwargs": {}, "calib": calib,
            "names": ["x"], "modes": ["static", "speed"]}  # fmt: skip


def digit_model() -> dict[str, Any]:
    """The demo's trained DigitNet on real digits from its calibration folder (1x28x28)."""
    from safetensors.torch import load_file

    from qcli import demo

    module = DigitNet().eval()
    module.load_state_dict(load_file(str(demo.WEIGHTS)))
    files = sorted(Path(demo.CALIB_DIR).iterdir())[:CALIB]
    calib = [(image_tensor(f),) for f in files]
    return {"module": module, "arch": "qcli.demo.model:DigitNet", "kwargs": {}, "calib": calib, "names": ["x"],
            "modes": ["static", "speed"]}  # fmt: skip


def image_tensor(path: Path) -> torch.Tensor:
    """A demo digit as the demo's recipe reads it: grayscale, scaled to [0, 1], MNIST-normalised."""
    from PIL import Image

    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy((pixels - 0.1307) / 0.3081)[None, None]


def encoder_model() -> dict[str, Any]:
    torch.manual_seed(0)
    sentences = text.sentences()[:CALIB]
    calib = []
    for s in sentences:
        ids, mask = text.encode(s)
        calib.append((ids[None], mask[None]))
    kwargs = {"vocab": text.VOCAB}
    return {"module": TextEncoder(**kwargs).eval(), "arch": "qcli.demo.model:TextEncoder", "kwargs": kwargs,
            "calib": calib, "names": ["input_ids", "attention_mask"], "modes": ["static", "dynamic"]}  # fmt: skip


MODELS: dict[str, Callable[[], dict[str, Any]]] = {
    "resnet18": lambda: image_model(ResNet18),
    "mobilenetv2": lambda: image_model(MobileNetV2),
    "efficientnet_lite0": lambda: image_model(EfficientNetLite0),
    "encoder": encoder_model,
    # small CNNs served one request at a time: 28x28 grayscale digits, MTCNN-style 48x48 PReLU
    "digitnet": digit_model,
    "onet48": lambda: image_model(ONet48, (3, 48, 48)),
}


def batch_of(calib: list[tuple[Any, ...]], size: int) -> tuple[Any, ...]:
    rows = [calib[i % len(calib)] for i in range(size)]
    return tuple(torch.cat([r[k] for r in rows]).contiguous() for k in range(len(rows[0])))


# --- the tools ----------------------------------------------------------------------------------


def qcli_artifacts(spec: dict[str, Any], work: Path, threads: int) -> dict[str, dict[int, Callable[..., Any]]]:
    """Quantize with the qcli CLI for this thread count (as a user deploying with it would: oneDNN
    packs weights for the thread count it compiles with), then load each package model by batch size."""
    from torch._inductor.package import load_package

    from qcli.artifact import package_runner, read_metadata

    model = work / "model.safetensors"
    save_file(spec["module"].state_dict(), str(model))
    calib = work / "calib"
    if not calib.exists():
        calib.mkdir()
    for i, sample in enumerate(spec["calib"]):
        save_file(
            {n: t[0].contiguous() for n, t in zip(spec["names"], sample, strict=True)},
            str(calib / f"{i:03d}.safetensors"),
        )
    out = {}
    for mode in spec["modes"]:
        path = work / f"qcli-{mode}-{threads}.pt2"
        how = ["--mode", "static", "--prefer", "speed"] if mode == "speed" else ["--mode", mode]
        cmd = [sys.executable, "-m", "qcli", "convert", str(model), "--arch", spec["arch"], "--arch-kwargs",
               json.dumps(spec["kwargs"]), "--calib-dir", str(calib), *how, "--package-batch-sizes", "1,16",
               "--threads", str(threads), "-o", str(path), "-q"]  # fmt: skip
        subprocess.run(cmd, check=True)
        names = read_metadata(path)["package_models"]
        key = "qcli_int8" if mode == "static" else f"qcli_int8_{mode}"
        out[key] = {int(b): package_runner(path, name) for b, name in names.items()}
        if mode == "static":
            out["qcli_int8_load_package"] = {int(b): load_package(str(path), name) for b, name in names.items()}
    return out


def onnx_models(spec: dict[str, Any], work: Path) -> tuple[Path, Path]:
    """FP32 ONNX (dynamic batch) and its ORT static INT8 (QDQ, per channel) on the same samples."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32, pre, int8 = work / "fp32.onnx", work / "fp32-pre.onnx", work / "int8.onnx"
    example = batch_of(spec["calib"], 2)
    dynamic = {n: {0: torch.export.Dim("batch", min=1, max=64)} for n in spec["names"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(spec["module"], example, str(fp32), input_names=spec["names"], dynamic_shapes=dynamic,
                          dynamo=True, external_data=False)  # fmt: skip
    quant_pre_process(str(fp32), str(pre))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(spec["calib"])

        def get_next(self) -> dict[str, np.ndarray] | None:
            sample = next(self.items, None)
            return None if sample is None else {n: t.numpy() for n, t in zip(spec["names"], sample, strict=True)}

    quantize_static(str(pre), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
    return fp32, int8


def ort_session(path: Path, threads: int, spinning: bool = False) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:  # ORT's default is to spin
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def torch_ao_int8(spec: dict[str, Any]) -> tuple[Any, str]:
    """torch.ao FX static INT8 (x86 engine); eager dynamic INT8 when the model cannot be FX-traced."""
    from torch.ao.quantization import get_default_qconfig_mapping, quantize_dynamic
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    module = copy.deepcopy(spec["module"])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            prepared = prepare_fx(module, get_default_qconfig_mapping("x86"), spec["calib"][0])
        except Exception:  # noqa: BLE001 - FX symbolic tracing fails on shape-dependent code
            return quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8), "torch.ao eager dynamic INT8"
        for sample in spec["calib"]:
            prepared(*sample)
        return convert_fx(prepared), "torch.ao FX static INT8"


# --- timing -------------------------------------------------------------------------------------


PRECISION = 0.05  # qcli's ratio to every peer, +-5% (95% interval)
BUDGET = 20.0  # seconds per cell at most, after the minimum rounds


def qcli_best(times: dict[str, list[float]]) -> str:
    """qcli's result: its own loader, static or (encoder) dynamic INT8, whichever is faster."""
    own = [k for k in times if k.startswith("qcli") and k != "qcli_int8_load_package"]
    return min(own, key=lambda k: statistics.median(times[k]))


def settled(times: dict[str, list[float]]) -> bool:
    best = times[qcli_best(times)]
    for peer in times.values():
        ratio, lo, hi = ratio_interval(peer, best, resamples=500)
        if (hi - lo) / 2 / ratio > PRECISION:
            return False
    return True


def interleaved(
    runners: dict[str, Callable[[], Any]], rounds: int, warmup: int = 3, block: int = 1
) -> dict[str, list[float]]:
    """Rounds of calls to every runner, in a new seeded random order each round (as ``qcli bench``:
    ``qcli.bench.round_order``; a rotated order kept each runner's predecessor fixed, and two
    packages of one DigitNet graph measured 0.45 and 0.37 ms at batch 1). With ``block`` > 1 each
    runner is called ``block`` times in a row per round and the round keeps the block's median:
    how ORT's spinning sessions are measured, so that their spinning helps their own next call
    (as in a serving loop) and the block median drops the one call of the next runner that the
    still-spinning threads slow down."""
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    start, r = time.perf_counter(), 0
    while r < rounds or (time.perf_counter() - start < BUDGET and not (r % 5 == 0 and settled(times))):
        order = round_order(names, r)
        for name in order:
            calls = []
            for _ in range(block):
                t0 = time.perf_counter()
                runners[name]()
                calls.append(time.perf_counter() - t0)
            times[name].append(statistics.median(calls))
        r += 1
    return times


def cell(times: dict[str, list[float]]) -> dict[str, Any]:
    """Medians with intervals, and qcli's ratio (peer median / qcli median) to each variant."""
    best = qcli_best(times)
    medians = {k: [round(1e3 * x, 4) for x in median_interval(v)] for k, v in times.items()}
    ratios = {k: [round(x, 4) for x in ratio_interval(v, times[best])] for k, v in times.items() if k != best}
    return {"qcli": best, "median_ms": medians, "qcli_ratio": ratios, "rounds": len(times[best])}


SPIN = ("ort_fp32_spin", "ort_int8_spin")
SPIN_BLOCK = 5


def measure_cell(runners: dict[str, Callable[[], Any]], batch: int) -> dict[str, Any]:
    """Two measurements: every variant but ORT's spinning sessions interleaved call by call; then
    the spinning sessions against qcli's in blocks (``interleaved``), as a spinning thread pool
    slows whatever runs right after it. Each with what else used the CPU meanwhile."""
    from qcli.noise import Monitor

    quiet = {k: v for k, v in runners.items() if k not in SPIN}
    rounds = 40 if batch == 1 else 15
    with warnings.catch_warnings(), Monitor() as first:
        warnings.simplefilter("ignore")
        times = interleaved(quiet, rounds)
    result = cell(times)
    own = [k for k in runners if k.startswith("qcli") and k != "qcli_int8_load_package"]
    spinning = {k: v for k, v in runners.items() if k in SPIN or k in own}
    with warnings.catch_warnings(), Monitor() as second:
        warnings.simplefilter("ignore")
        spin_times = interleaved(spinning, max(10, rounds // 2), block=SPIN_BLOCK)
    best = result["qcli"]
    for k in SPIN:
        if k in spin_times:
            result["median_ms"][k] = [round(1e3 * x, 4) for x in median_interval(spin_times[k])]
            result["qcli_ratio"][k] = [round(x, 4) for x in ratio_interval(spin_times[k], spin_times[best])]
    result["spin_rounds"] = len(spin_times[best])
    result["qcli_median_ms_beside_spin"] = [round(1e3 * x, 4) for x in median_interval(spin_times[best])]
    result["noise"] = {"interleaved": vars(first.noise), "spinning": vars(second.noise)}
    return result


def main() -> int:
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    report: dict[str, Any] = {
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
        "models": {},
    }
    import onnxruntime

    report["environment"]["onnxruntime"] = onnxruntime.__version__
    rows = []
    torch._inductor.config.freezing = True
    only = set(sys.argv[1:])
    for name, make in MODELS.items():
        if only and name not in only:
            continue
        spec = make()
        with tempfile.TemporaryDirectory(prefix=f"qcli-peers-{name}-") as tmp:
            work = Path(tmp)
            print(f"{name}: quantizing with qcli, ONNX Runtime and torch.ao", flush=True)
            fp32_onnx, int8_onnx = onnx_models(spec, work)
            ao_model, ao_kind = torch_ao_int8(spec)
            compiled = torch.compile(spec["module"], dynamic=False)
            entry: dict[str, Any] = {"torch_ao_kind": ao_kind, "runs": []}
            for threads in THREADS:
                qcli = qcli_artifacts(spec, work, threads)
                torch.set_num_threads(threads)
                sessions = {
                    "ort_fp32": ort_session(fp32_onnx, threads),
                    "ort_int8": ort_session(int8_onnx, threads),
                    "ort_fp32_spin": ort_session(fp32_onnx, threads, spinning=True),
                    "ort_int8_spin": ort_session(int8_onnx, threads, spinning=True),
                }
                for batch in BATCHES:
                    inputs = batch_of(spec["calib"], batch)
                    feeds = {n: t.numpy() for n, t in zip(spec["names"], inputs, strict=True)}

                    def run_torch(fn: Callable[..., Any], args: tuple[Any, ...] = inputs) -> Callable[[], Any]:
                        def call() -> Any:
                            with torch.no_grad():
                                return fn(*args)

                        return call

                    runners: dict[str, Callable[[], Any]] = {
                        "fp32_eager": run_torch(spec["module"]),
                        "fp32_compiled": run_torch(compiled),
                        **{k: (lambda s=s, f=feeds: s.run(None, f)) for k, s in sessions.items()},
                        "torchao_fx_int8": run_torch(ao_model),
                    }
                    for variant, models in qcli.items():
                        runners[variant] = run_torch(models[batch])
                    result = {"threads": threads, "batch": batch, **measure_cell(runners, batch)}
                    entry["runs"].append(result)
                    rows.append((name, threads, batch, result))
                    medians = result["median_ms"]
                    disturbed = [w for w, n in result["noise"].items() if n["disturbed"]]
                    print(
                        f"  threads {threads} batch {batch} ({result['rounds']} rounds): "
                        + ", ".join(f"{k} {v[0]:.2f}" for k, v in medians.items())
                        + (f"; DISTURBED ({', '.join(disturbed)})" if disturbed else ""),
                        flush=True,
                    )
            report["models"][name] = entry
    (results / "peers.json").write_text(json.dumps(report, indent=2) + "\n")
    print_table(rows)
    return 0


def ratio_cell(found: list[float] | None) -> str:
    """qcli's speed-up over a variant: bold where the interval excludes 1, "~" where it does not."""
    if found is None:
        return "-"
    ratio, lo, hi = found
    text = f"{ratio:.2f}x [{lo:.2f}, {hi:.2f}]"
    return f"**{text}**" if lo > 1 or hi < 1 else f"~{text}"


def print_table(rows: list[tuple[str, int, int, dict[str, Any]]]) -> None:
    cols = ["fp32_eager", "fp32_compiled", "ort_fp32", "ort_fp32_spin", "ort_int8", "ort_int8_spin",
            "torchao_fx_int8", "qcli_int8_load_package", "qcli_int8", "qcli_int8_speed"]  # fmt: skip
    peers = ["ort_int8", "ort_int8_spin", "torchao_fx_int8", "fp32_compiled"]
    print(
        "\n| model | threads | batch | " + " | ".join(cols) + " | " + " | ".join(f"qcli vs {p}" for p in peers) + " |"
    )
    print("|---" * (len(cols) + len(peers) + 3) + "|")
    for name, threads, batch, result in rows:
        m, best = result["median_ms"], result["qcli"]
        cells = [f"{m[c][0]:.2f}" if c in m else "-" for c in cols]
        if best in cols:  # the variant qcli's ratios are for
            cells[cols.index(best)] = f"**{cells[cols.index(best)]}**"
        else:
            cells[-1] += f" ({best.removeprefix('qcli_int8_')}: {m[best][0]:.2f})"
        ratios = [ratio_cell(result["qcli_ratio"].get(p)) for p in peers]
        if any(n["disturbed"] for n in result.get("noise", {}).values()):
            ratios[-1] += " (disturbed)"
        print(f"| {name} | {threads} | {batch} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")


if __name__ == "__main__":
    raise SystemExit(main())
