"""Dynamic, weight-only and static INT8 of a 6-layer transformer encoder against FP32.

Run with `make bench-encoder`. The model is ``qcli.demo.model:TextEncoder`` at MiniLM-L6's size
(6 layers, d_model 384, 12 heads, FFN 1536, vocabulary 8192), with BERT's initialisation
(N(0, 0.02) weights) and a fixed seed: no pretrained weights may be downloaded here, and speed
does not depend on the values. Fidelity (cosine, SQNR against FP32) of a random network is
indicative only: trained encoders grow outlier activations that INT8 handles worse.

Inputs are real text: the docstrings of Python's standard library, split into sentences, words
hashed into the vocabulary, padded or cut to 128 tokens with an attention mask. Calibration uses
64 sentences, evaluation 64 others. For each mode: `qcli convert` (package form, batch sizes 1
and 16), then `qcli bench` (FP32 eager, FP32 compiled package, INT8, interleaved). The reports are
written to benchmarks/results/encoder-<mode>.json and a summary table is printed.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file

from qcli.demo.model import TextEncoder

HERE = Path(__file__).resolve().parent
SEQ = 128
VOCAB = 8192
MODULES = ("argparse", "collections", "csv", "datetime", "email", "http.client", "json", "logging", "os", "pathlib")
MODULES += (
    "re",
    "shutil",
    "sqlite3",
    "subprocess",
    "tarfile",
    "threading",
    "typing",
    "unittest",
    "urllib.parse",
    "zipfile",
)


def sentences() -> list[str]:
    """Sentences of at least 8 words from the docstrings of some standard-library modules."""
    found: list[str] = []
    for name in MODULES:
        module = importlib.import_module(name)
        for obj in [module, *vars(module).values()]:
            doc = getattr(obj, "__doc__", None) if callable(obj) or obj is module else None
            for part in re.split(r"(?<=[.!?])\s+", doc if isinstance(doc, str) else ""):
                words = part.split()
                if len(words) >= 8:
                    found.append(" ".join(words))
    return list(dict.fromkeys(found))


def encode(text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Word ids (CRC32 of the lower-cased word, 1..VOCAB-1; 0 pads) and the attention mask."""
    ids = [1 + zlib.crc32(w.lower().encode()) % (VOCAB - 1) for w in re.findall(r"\w+|[^\w\s]", text)][:SEQ]
    mask = [1] * len(ids) + [0] * (SEQ - len(ids))
    return torch.tensor(ids + [0] * (SEQ - len(ids))), torch.tensor(mask)


def write_samples(folder: Path, texts: list[str]) -> None:
    folder.mkdir()
    for i, text in enumerate(texts):
        ids, mask = encode(text)
        save_file({"input_ids": ids, "attention_mask": mask}, str(folder / f"{i:04d}.safetensors"))


def main() -> int:
    torch.manual_seed(0)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    texts = sentences()
    summary = []
    with tempfile.TemporaryDirectory(prefix="qcli-encoder-") as tmp:
        root = Path(tmp)
        model = root / "encoder.safetensors"
        save_file(TextEncoder(vocab=VOCAB).eval().state_dict(), str(model))
        write_samples(root / "calib", texts[0:128:2])
        write_samples(root / "eval", texts[1:128:2])
        for mode in ("dynamic", "weight-only", "static"):
            artifact = root / f"{mode}.pt2"
            report = results / f"encoder-{mode}.json"
            qcli = [sys.executable, "-m", "qcli"]
            arch = ["--arch", "qcli.demo.model:TextEncoder", "--arch-kwargs", json.dumps({"vocab": VOCAB})]
            convert = [*qcli, "convert", str(model), *arch, "--calib-dir", str(root / "calib"), "--mode", mode]
            code = subprocess.call([*convert, "--package-batch-sizes", "1,16", "-o", str(artifact), "-q"])
            if code:
                return code
            bench = [*qcli, "bench", str(model), str(artifact), *arch, "--eval-dir", str(root / "eval")]
            code = subprocess.call([*bench, "--batch-sizes", "1,16", "--runs", "30", "-o", str(report), "-q"])
            if code not in (0, 3):
                return code
            data = json.loads(report.read_text())
            for row in data["latency"]:
                v = row["variants"]
                summary.append(
                    f"| {mode} | {row['batch_size']} | {v['fp32_compiled']['p50_ms']:.2f} | "
                    f"{v['int8']['p50_ms']:.2f} | {row['speedup_vs_fp32_compiled']:.2f}x | "
                    f"{data['accuracy']['cosine']:.5f} | {data['accuracy']['sqnr_db']:.1f} |"
                )
    print(f"\n6-layer encoder (d_model 384, 12 heads, seq {SEQ}), {torch.get_num_threads()} threads")
    print("| mode | batch | FP32 compiled ms | INT8 ms | speed-up | cosine | SQNR dB |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
