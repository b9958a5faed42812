"""Coverage matrix: which real architectures survive qcli's export → PT2E → package path.

Run with `make bench-coverage` (not part of `make test`; about 40 minutes on 2 cores). Each
architecture is built by ``transformers`` from a small config with seeded weights and saved with
``save_pretrained``, so qcli reads it as a user's model folder; the project's own CNNs come as a
state dict and ``--arch``. Random weights are fine for coverage, but ``transformers``' initialisation
can leave outputs at absurd magnitudes (a MobileViT's logits were about 1e-41, where every ratio is
meaningless): every module's own ``reset_parameters`` (torch's defaults) is applied first, batch
norms get statistics from a few training-mode passes over the samples, and a model whose outputs
are of an absurd size or barely depend on the input is reported as such instead of measured.

For each model and each mode that applies (static for all; dynamic for models with linear layers),
as a user would: `qcli convert MODEL --calib-dir samples/ --mode M` (package, batch sizes 1 and 16),
then `qcli bench MODEL int8.pt2 --eval-dir samples/ --batch-sizes 1,16`. Where static INT8 is
accurate but not faster at batch 16, the next thing a user tries is measured too: the row
"static, prefer speed" (`--mode static --prefer speed`). Recorded: exported or not,
"N of M conv/linear layers INT8", the worst output's cosine and SQNR against FP32 (every output is
compared), the FP32 model's own sensitivity (the cosine between its outputs on the samples and
on the samples rounded to 8 bits: what the first INT8 activation alone does; random deep
networks can amplify it far more than trained ones), INT8 speed-up against FP32 compiled the
same way at batch 1 and 16 with its 95% interval, the artifact's size, and where it fails, the one line a user sees. Results go to
benchmarks/results/coverage.json and a Markdown table (benchmarks/results/coverage.md); the
README's table is a copy of a run kept in benchmarks/recorded/.

    python benchmarks/coverage.py [NAME ...]     # a subset, e.g. bert gpt2
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SAMPLES = 32  # calibration and evaluation samples (the same folder: fidelity, not accuracy)
TIME_BUDGET = "8"  # seconds of measuring per batch size


@dataclass(frozen=True)
class Arch:
    name: str
    family: str
    build: Callable[[], Any]  # a transformers model (saved as a folder) or (state dict path, --arch)
    samples: Callable[[torch.Generator], dict[str, torch.Tensor]]  # SAMPLES rows per input
    modes: tuple[str, ...] = ("static", "dynamic")
    one_per_file: bool = False  # samples whose rank qcli cannot tell from a batch: a file each


def tokens(vocab: int, length: int = 32, mask: bool = True) -> Callable[[torch.Generator], dict[str, torch.Tensor]]:
    def make(gen: torch.Generator) -> dict[str, torch.Tensor]:
        ids = torch.randint(5, vocab, (SAMPLES, length), generator=gen)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)} if mask else {"input_ids": ids}

    return make


def pixels(size: int, channels: int = 3, name: str = "pixel_values") -> Callable[[torch.Generator], Any]:
    return lambda gen: {name: torch.randn(SAMPLES, channels, size, size, generator=gen)}


def hf(class_name: str, config_name: str, **config: Any) -> Callable[[], Any]:
    def build() -> Any:
        import transformers

        torch.manual_seed(0)
        model = getattr(transformers, class_name)(getattr(transformers, config_name)(**config))
        for module in model.modules():  # torch's default initialisation: outputs of normal size
            reset = getattr(module, "reset_parameters", None)
            if callable(reset) and module is not model:
                reset()
        return model.eval()

    return build


def project(arch: str, make: Callable[[], Any]) -> Callable[[], Any]:
    return lambda: ("project", arch, make)


TEXT = {"vocab_size": 1000, "max_position_embeddings": 64}
SMALL = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256}
VISION = {"image_size": 32, "num_channels": 3, "num_labels": 10}

ARCHS = [
    Arch("bert", "encoder", hf("BertForSequenceClassification", "BertConfig", **TEXT, **SMALL, num_labels=3),
         tokens(1000)),
    Arch("distilbert", "encoder", hf("DistilBertForSequenceClassification", "DistilBertConfig", **TEXT, dim=128,
         n_layers=2, n_heads=4, hidden_dim=256, num_labels=3), tokens(1000)),
    Arch("roberta", "encoder", hf("RobertaForSequenceClassification", "RobertaConfig", vocab_size=1000,
         max_position_embeddings=66, **SMALL, num_labels=3), tokens(1000)),
    Arch("albert", "encoder", hf("AlbertForSequenceClassification", "AlbertConfig", **TEXT, embedding_size=64,
         **SMALL, num_labels=3), tokens(1000)),
    Arch("electra", "encoder", hf("ElectraForSequenceClassification", "ElectraConfig", **TEXT, embedding_size=64,
         **SMALL, num_labels=3), tokens(1000)),
    Arch("t5-encoder", "encoder", hf("T5EncoderModel", "T5Config", vocab_size=1000, d_model=128, d_kv=32, d_ff=256,
         num_layers=2, num_heads=4), tokens(1000)),
    Arch("gpt2", "decoder", hf("GPT2LMHeadModel", "GPT2Config", vocab_size=1000, n_positions=64, n_embd=128,
         n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0), tokens(1000)),
    Arch("vit", "vision", hf("ViTForImageClassification", "ViTConfig", **VISION, patch_size=8, **SMALL),
         pixels(32)),
    Arch("deit", "vision", hf("DeiTForImageClassification", "DeiTConfig", **VISION, patch_size=8, **SMALL),
         pixels(32)),
    Arch("swin", "vision", hf("SwinForImageClassification", "SwinConfig", **VISION, patch_size=4, embed_dim=96,
         depths=[2, 2], num_heads=[3, 6], window_size=4), pixels(32)),
    Arch("convnext", "vision", hf("ConvNextForImageClassification", "ConvNextConfig", num_channels=3, num_labels=10,
         hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 2, 1]), pixels(64)),
    Arch("resnet", "vision", hf("ResNetForImageClassification", "ResNetConfig", num_channels=3, num_labels=10,
         embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], layer_type="bottleneck"),
         pixels(64)),
    Arch("mobilevit", "vision", hf("MobileViTForImageClassification", "MobileViTConfig", num_channels=3,
         image_size=64, num_labels=10, hidden_sizes=[64, 80, 96], neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320]),
         pixels(64)),
    Arch("efficientnet", "vision", hf("EfficientNetForImageClassification", "EfficientNetConfig", num_channels=3,
         image_size=64, num_labels=10, width_coefficient=0.5, depth_coefficient=0.5, hidden_dim=640), pixels(64)),
    Arch("wav2vec2", "speech", hf("Wav2Vec2ForSequenceClassification", "Wav2Vec2Config", vocab_size=32,
         hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, conv_dim=(64,) * 3,
         conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
         num_labels=4, do_stable_layer_norm=True, feat_extract_norm="layer"),
         lambda gen: {"input_values": torch.randn(SAMPLES, 4000, generator=gen)}, one_per_file=True),
    Arch("whisper-encoder", "speech", hf("WhisperForAudioClassification", "WhisperConfig", num_mel_bins=80,
         d_model=128, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=256, decoder_layers=1,
         decoder_attention_heads=4, decoder_ffn_dim=256, max_source_positions=64, num_labels=4),
         lambda gen: {"input_features": torch.randn(SAMPLES, 80, 128, generator=gen)}),
    Arch("digitnet (demo)", "project CNN", project("qcli.demo.model:DigitNet", lambda: None), pixels(28, 1, "x"),
         ("static",)),
    Arch("digit-detector (tests)", "project CNN", project("models:digit_detector", lambda: None), pixels(32, 1, "x"),
         ("static",)),
    Arch("tiny-segmenter (tests)", "project CNN", project("models:tiny_segmenter", lambda: None), pixels(28, 1, "x"),
         ("static",)),
]  # fmt: skip


def qcli(*args: Any, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}  # this checkout's qcli
    return subprocess.run([sys.executable, "-m", "qcli", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=3600)  # fmt: skip


def failure(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("qcli:") and "error" in line]
    return (lines[-1] if lines else (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1])[:300]


def model_files(arch: Arch, work: Path) -> tuple[Path, list[str], str | None, float | None]:
    """The model as a user has it (a folder, or a state dict + --arch), its samples, a reason it
    cannot be measured (abnormal output magnitude) or None, and its own sensitivity
    (``rounding_cosine``)."""
    built = arch.build()
    gen = torch.Generator().manual_seed(1)
    samples = work / "samples"
    samples.mkdir()
    if isinstance(built, tuple):  # the project's own CNNs
        _, spec, _ = built
        module_name, _, attr = spec.partition(":")
        sys.path.insert(0, str(ROOT / "tests"))
        import importlib

        torch.manual_seed(0)
        module = getattr(importlib.import_module(module_name), attr)().eval()
        path = work / "model.safetensors"
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
        data = arch.samples(gen)
        torch.save(next(iter(data.values())), samples / "x.pt")
        with torch.no_grad():
            out = module(next(iter(data.values())))
        sensitivity = rounding_cosine(lambda **d: module(*d.values()), data, out)
        return path, ["--arch", spec], magnitude_problem(out), sensitivity
    folder = work / "model"
    data = arch.samples(gen)
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in built.modules()):
        # untrained batch norms (mean 0, variance 1) let activations fade through a deep network
        # until the output no longer depends on the input (EfficientNet's logits were identical
        # for every sample): a few training-mode passes give them the statistics of real inputs
        # (cumulative averages: with the default momentum, 5 passes leave 59% of the initial
        # mean 0 / variance 1, and MobileViT's outputs still did not depend on the input)
        norms = [m for m in built.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        built.train()
        with torch.no_grad():
            for _ in range(5):
                built(**data)
        built.eval()
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
    built.save_pretrained(folder)
    if arch.one_per_file:  # wav2vec2's [batch, time] audio: its first conv is 1-D, on [batch, 1, time]
        for i in range(SAMPLES):
            save_file({k: v[i].contiguous() for k, v in data.items()}, str(samples / f"{i:03d}.safetensors"))
    else:
        save_file(data, str(samples / "samples.safetensors"))
    with torch.no_grad():
        out = built(**data)
    return folder, [], magnitude_problem(out), rounding_cosine(built, data, out)


def tensors(out: Any) -> list[torch.Tensor]:
    """A model's output tensors, in tuples, lists and dicts (a ``ModelOutput`` is one); other
    objects (GPT-2's key/value cache) hold none of its outputs."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in tensors(v)]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in tensors(v)]
    return []


def rounding_cosine(model: Callable[..., Any], data: dict[str, torch.Tensor], out: Any) -> float | None:
    """The FP32 model's own sensitivity: the cosine between its outputs on the samples (``out``)
    and on the samples rounded to 8 bits (256 levels over each input's range, what the first INT8
    activation alone does); mean over samples, worst output, as ``bench`` reports INT8's. None for
    integer inputs (token ids). A randomly initialised deep network can amplify such a
    perturbation far more than a trained one does; every INT8 layer adds one like it."""
    floats = {k for k, v in data.items() if v.is_floating_point()}
    if not floats:
        return None
    rounded = dict(data)
    for k in floats:
        v = data[k]
        low, step = v.min(), (v.max() - v.min()) / 255
        rounded[k] = torch.round((v - low) / step) * step + low
    with torch.no_grad():
        pairs = zip(tensors(out), tensors(model(**rounded)), strict=True)
        worst = [
            float(torch.nn.functional.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1).mean())
            for a, b in pairs
            if a.is_floating_point() and a.ndim >= 2
        ]
    return min(worst) if worst else None


def magnitude_problem(out: Any) -> str | None:
    """A reason the outputs are no basis for ratios: an absurd size, or (nearly) the same output
    whatever the input (their spread across samples under 1e-3 of their size)."""
    for t in tensors(out):
        t = t.float()
        size, across = float(t.abs().mean()), float(t.std(0).mean())
        if not 1e-3 <= size <= 1e4:
            return f"output size {size:.2g}: not a normal magnitude, not measured"
        if across < 1e-3 * size:
            return f"outputs barely depend on the input (spread {across:.2g} against size {size:.2g}), not measured"
    return None


PREFER_SPEED = "static, prefer speed"  # the row measured when static INT8 is accurate but slower
MODE_ORDER = ("static", PREFER_SPEED, "dynamic")


def measure(arch: Arch, mode: str, model: Path, extra: list[str], work: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"model": arch.name, "family": arch.family, "mode": mode}
    out = work / f"int8-{mode.replace(', ', '-').replace(' ', '-')}.pt2"
    how = ["--mode", "static", "--prefer", "speed"] if mode == PREFER_SPEED else ["--mode", mode]
    start = time.perf_counter()
    proc = qcli("convert", model, *extra, "--calib-dir", "samples", *how, "-o", out,
                "--package-batch-sizes", "1,16", "--format", "json", cwd=work)  # fmt: skip
    row["convert_seconds"] = round(time.perf_counter() - start, 1)
    if proc.returncode != 0:
        return {**row, "exported": "export" not in failure(proc), "failure": failure(proc)}
    report = json.loads(proc.stdout)
    row.update(exported=True, int8_layers=report["quantized_layers"], layers=len(report["layers"]),
               size_bytes=out.stat().st_size)  # fmt: skip
    if report.get("speed"):  # --prefer speed: what each batch size's model keeps in FP32
        names = {layer["name"] for layer in report["layers"]}
        row["fp32_for_speed"] = {
            str(s["batch"]): {"layers": [n for n in s["fp32_layers"] if n in names],
                              "other": [n for n in s["fp32_layers"] if n not in names],
                              "products": list(s.get("matmul_layers") or [])}
            for s in report["speed"]
        }  # fmt: skip
    proc = qcli("bench", model, out, *extra, "--eval-dir", "samples", "--batch-sizes", "1,16", "--time-budget",
                TIME_BUDGET, "--format", "json", cwd=work)  # fmt: skip
    if proc.returncode not in (0, 4):
        return {**row, "failure": failure(proc)}
    bench = json.loads(proc.stdout)
    outputs = bench["accuracy"]["outputs"]
    row["outputs"] = len(outputs)
    row["cosine"] = min(o["cosine"] for o in outputs)
    row["sqnr_db"] = min(o["sqnr_db"] for o in outputs)
    for cell in bench["latency"]:
        s = cell["speedups"]["fp32_compiled"]
        row[f"speedup_b{cell['batch_size']}"] = [round(s["value"], 3), round(s["low"], 3), round(s["high"], 3)]
        row[f"disturbed_b{cell['batch_size']}"] = bool((cell.get("noise") or {}).get("disturbed"))
    row["fp32_compiled_size_bytes"] = bench.get("fp32_compiled_size_bytes")
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| model | family | mode | exported | INT8 layers | outputs | worst cosine | worst SQNR dB "
            "| FP32, input at 8 bits | speed-up b1 [95%] | speed-up b16 [95%] | artifact | failure |")  # fmt: skip
    lines = [head, "|" + "---|" * 13]

    def speed(value: Any) -> str:
        return f"{value[0]:.2f}x [{value[1]:.2f}, {value[2]:.2f}]" if value else "-"

    for r in rows:
        layers = f"{r['int8_layers']} of {r['layers']}" if "layers" in r else "-"
        for batch, kept in (r.get("fp32_for_speed") or {}).items():  # the layers each batch size keeps FP32
            pools = f" + {len(kept['other'])} poolings" if kept["other"] else ""
            n = len(kept.get("products") or [])
            products = f", {n} conv{'s' * (n != 1)} as product{'s' * (n != 1)}" if n else ""
            layers += f"; b{batch}: {len(kept['layers'])} FP32{pools}{products}"
        size = f"{r['size_bytes'] / 1e6:.1f} MB" if "size_bytes" in r else "-"
        cos = f"{r['cosine']:.4f}" if "cosine" in r else "-"
        sqnr = ("identical" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f}") if "sqnr_db" in r else "-"
        exported = {True: "yes", False: "no"}.get(r.get("exported"), "-")  # type: ignore[arg-type]
        own = f"{r['rounding_cosine']:.4f}" if r.get("rounding_cosine") is not None else "-"
        lines.append(f"| {r['model']} | {r['family']} | {r['mode']} | {exported} | {layers} | {r.get('outputs', '-')} "
                     f"| {cos} | {sqnr} | {own} | {speed(r.get('speedup_b1'))} | {speed(r.get('speedup_b16'))} | {size} "
                     f"| {r.get('failure', '')} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def accurate(row: dict[str, Any]) -> bool:
    return bool(row.get("cosine", 0) >= 0.99)


def faster(row: dict[str, Any]) -> bool:
    """Faster than FP32 compiled at batch 16, the whole 95% interval above 1."""
    return bool(row.get("speedup_b16") and row["speedup_b16"][1] > 1.0)


def summary(rows: list[dict[str, Any]]) -> str:
    """The issue's target: an architecture passes in a mode with worst cosine >= 0.99 and a batch-16
    speed-up over FP32 compiled whose interval lies above 1."""
    passed: dict[str, list[str]] = {}
    for r in rows:
        passed.setdefault(r["model"], [])
        if accurate(r) and faster(r):
            passed[r["model"]].append(r["mode"])
    good = [m for m, modes in passed.items() if modes]
    return f"{len(good)} of {len(passed)} architectures quantize with cosine >= 0.99 and are faster at batch 16: " + (
        ", ".join(f"{m} ({'/'.join(passed[m])})" for m in good)
    )


def main() -> None:
    wanted = set(sys.argv[1:])
    archs = [a for a in ARCHS if not wanted or a.name.split(" ")[0] in wanted]
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    # a subset run replaces those models' rows of the last full run, keeping the table's order
    previous = (
        json.loads((results / "coverage.json").read_text()) if wanted and (results / "coverage.json").exists() else []
    )
    order = [a.name for a in ARCHS]
    rows = [r for r in previous if r["model"] not in {a.name for a in archs}]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    for arch in archs:
        with tempfile.TemporaryDirectory(prefix="qcli-coverage-") as tmp:
            work = Path(tmp)
            try:
                model, extra, problem, sensitivity = model_files(arch, work)
            except Exception as exc:  # a config this transformers cannot build: say so, go on
                problem = f"not built: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                sensitivity = None
            if problem:
                rows.append({"model": arch.name, "family": arch.family, "mode": "-", "failure": problem})
                print(json.dumps(rows[-1]), flush=True)
                continue
            for mode in arch.modes:
                row = measure(arch, mode, model, extra, work)
                row["rounding_cosine"] = sensitivity
                rows.append(row)
                print(json.dumps(row), flush=True)
                if mode == "static" and accurate(row) and not faster(row):  # what a user tries next
                    rows.append({**measure(arch, PREFER_SPEED, model, extra, work), "rounding_cosine": sensitivity})
                    print(json.dumps(rows[-1]), flush=True)
        rows.sort(
            key=lambda r: (order.index(r["model"]), MODE_ORDER.index(r["mode"]) if r["mode"] in MODE_ORDER else 9)
        )
        (results / "coverage.json").write_text(json.dumps(rows, indent=1) + "\n")
    table = markdown(rows)
    (results / "coverage.md").write_text(table + "\n" + summary(rows) + "\n")
    print(table)
    print(summary(rows))


if __name__ == "__main__":
    main()
