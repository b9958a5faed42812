"""Small architectures for tests, importable as ``--arch models:...`` (tests/ is on sys.path)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class ResidualMLP(nn.Module):
    """x + fc2(relu(fc1(x))): the residual add reads the graph input, the pattern a compiled INT8
    model was seen to fuse in place into the caller's tensor. Seeded weights: it tests plumbing."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x + self.fc2(torch.relu(self.fc1(x))))


def residual_mlp() -> ResidualMLP:
    torch.manual_seed(0)
    return ResidualMLP()


class ResidualTokens(nn.Module):
    """``x + fc2(relu(fc1(x)))`` on ``[batch, tokens, features]``, the sum returned: Inductor's
    fused linear+add wrote the sum into the caller's ``x`` (torch 2.13, see
    ``qcli.private.guard_inplace_fusions``)."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(x)))


def residual_tokens() -> ResidualTokens:
    torch.manual_seed(0)
    return ResidualTokens()


def residual_mlp_files(root: Path, outlier_scale: float) -> Path:
    """``root/mlp.pt`` (ResidualMLP's state dict) and ``calib/``, ``eval/`` folders of 256 seeded
    vectors each whose feature 0 is ``outlier_scale`` times the others: the input that costs a
    shared INT8 scale its precision. Returns the state dict's path."""
    import numpy as np

    torch.save(residual_mlp().state_dict(), root / "mlp.pt")
    rng = np.random.default_rng(0)
    for name in ("calib", "eval"):
        x = rng.standard_normal((256, 64)).astype(np.float32)
        x[:, 0] *= outlier_scale
        (root / name).mkdir()
        np.save(root / name / "x.npy", x)
    return root / "mlp.pt"


def broken_arch() -> nn.Module:
    """An ``--arch`` whose constructor fails, as a user's code with a bug would."""
    raise ValueError("width must be positive")


class TinyEncoder(nn.Module):
    """A small transformer encoder over token ids with a padding mask, mean-pooled into an embedding:
    the shape of a sentence-embedding model, for testing the multi-input and dynamic paths."""

    def __init__(self, vocab: int = 1000, dim: int = 64, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(input_ids), src_key_padding_mask=attention_mask == 0)
        mask = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.norm((h * mask).sum(1) / mask.sum(1).clamp(min=1))


def tiny_encoder() -> TinyEncoder:
    torch.manual_seed(0)
    return TinyEncoder().eval()


class ActivationZoo(nn.Module):
    """Conv-BN-SiLU, Conv-BN-Hardswish, depthwise Conv-BN-ReLU6, then LayerNorm and GELU in a
    Linear head: every activation family a modern CNN or transformer uses, on 1x28x28 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.SiLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.Hardswish(),
            nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU6(),
            nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Linear(64, 128), nn.LayerNorm(128), nn.GELU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def activation_zoo() -> ActivationZoo:
    torch.manual_seed(0)
    model = ActivationZoo()
    for m in model.modules():  # non-trivial batch-norm statistics, as a trained network has
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


class GatedConvNet(nn.Module):
    """A CNN on 1x28x28 digits whose forward branches on the input's values: scripted, it holds
    data-dependent control flow, which no static graph (and so no INT8 artifact) can express."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        if bool(y.mean() > 0.5):
            y = y * 0.5
        return self.fc(y.mean(dim=(2, 3)))


class ScaledConvNet(GatedConvNet):
    """Takes a float argument next to the image: a non-tensor input TorchScript keeps as such."""

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:  # type: ignore[override]
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3))) * scale


def scripted(cls: type[nn.Module], path: str) -> None:
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(cls().eval()), path)


class DigitDetector(nn.Module):
    """A face-detector-shaped head on 1x32x32 canvases: ``(boxes[4], landmarks[10], logits[2])``,
    the three outputs of a small face detector. Trained by ``train_detector`` on MNIST digits
    pasted into a canvas, class 1 ("face") for digits with a closed loop, with each
    sample's box and five landmarks (quadrant and overall centroids of the ink)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        )  # fmt: skip
        self.where = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten())  # where the ink is
        self.what = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten())  # which strokes are there
        self.boxes = nn.Linear(128, 4)
        self.landmarks = nn.Linear(128, 10)
        self.classes = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.features(x)
        where, what = self.where(h), self.what(h)
        return self.boxes(where), self.landmarks(where), self.classes(what)


LOOPED = (0, 4, 6, 8, 9)  # digits with a closed loop: the detector's "face" class


def detector_samples(
    digits: torch.Tensor, classes: torch.Tensor, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(canvases [N,1,32,32], labels [N], targets [N,14] = box then landmarks, in [0, 1]) from
    28x28 digits in [0, 1] and their classes: each digit shrunk to 20x20 and pasted at a random
    place; label 1 ("face") for a digit with a closed loop (0, 4, 6, 8, 9)."""
    gen = torch.Generator().manual_seed(seed)
    n = digits.shape[0]
    canvases = torch.zeros(n, 1, 32, 32)
    labels = torch.tensor([int(int(c) in LOOPED) for c in classes], dtype=torch.int64)
    targets = torch.zeros(n, 14)
    small = nn.functional.interpolate(digits[:, None], size=(20, 20), mode="bilinear", align_corners=False)[:, 0]
    for i in range(n):
        y, x = (int(v) for v in torch.randint(0, 13, (2,), generator=gen))
        canvases[i, 0, y : y + 20, x : x + 20] = small[i]
        ys, xs = torch.nonzero(canvases[i, 0] > 0.3, as_tuple=True)
        if ys.numel() == 0:
            continue
        y0, y1, x0, x1 = ys.min().item(), ys.max().item(), xs.min().item(), xs.max().item()
        targets[i, :4] = torch.tensor([x0, y0, x1 - x0 + 1, y1 - y0 + 1]) / 32
        cy, cx = ys.float().mean(), xs.float().mean()
        points = [(cx, cy)]
        for qy in (ys < cy, ys >= cy):
            for qx in (xs < cx, xs >= cx):
                sel = qy & qx
                points.append((xs[sel].float().mean(), ys[sel].float().mean()) if sel.any() else (cx, cy))
        targets[i, 4:] = torch.tensor([v / 32 for p in points for v in p])
    return canvases, labels, targets


def train_detector(digits: torch.Tensor, classes: torch.Tensor, epochs: int = 30) -> DigitDetector:
    """Seeded training on ``detector_samples`` (box and landmark L1 plus class cross-entropy)."""
    torch.manual_seed(0)
    x, y, t = detector_samples(digits, classes, seed=1)
    model = DigitDetector()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0])
        for start in range(0, x.shape[0], 64):
            idx = perm[start : start + 64]
            boxes, marks, logits = model(x[idx])
            loss = (
                nn.functional.l1_loss(boxes, t[idx, :4]) * 4
                + nn.functional.l1_loss(marks, t[idx, 4:]) * 4
                + nn.functional.cross_entropy(logits, y[idx])
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def digit_detector() -> DigitDetector:
    """The architecture, for ``--arch models:digit_detector`` (weights come from the file)."""
    return DigitDetector().eval()


class TinySegmenter(nn.Module):
    """Per-pixel class scores ``[B, 3, H, W]`` and a ``{"mask": ..., "depth": ...}`` dict beside
    them: a segmentation model's output shapes, nested."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.seg = nn.Conv2d(8, 3, 1)
        self.depth = nn.Conv2d(8, 1, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x)
        return {"mask": self.seg(h), "aux": {"depth": self.depth(h)}}  # type: ignore[dict-item]


def tiny_segmenter() -> TinySegmenter:
    torch.manual_seed(0)
    return TinySegmenter().eval()


class PatchMixer(nn.Module):
    """MobileViT-shaped: a conv stem's feature map unfolded into 2x2 patches of tokens, a residual
    MLP on the tokens, folded back, and a linear head on the pooled map. The residual add's
    addend is a view of the channels-last conv output: the shape that sent a fused INT8 matmul to
    oneDNN's reference kernel."""

    def __init__(self, channels: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.SiLU(),
            nn.Conv2d(32, channels, 1), nn.BatchNorm2d(channels), nn.SiLU(),
        )  # fmt: skip
        self.norm = nn.LayerNorm(channels)
        self.fc1 = nn.Linear(channels, 2 * channels)
        self.fc2 = nn.Linear(2 * channels, channels)
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        b, c, hh, ww = h.shape
        nh, nw = hh // 2, ww // 2
        t = h.reshape(b * c * nh, 2, nw, 2).transpose(1, 2).reshape(b, c, nh * nw, 4).transpose(1, 3)
        t = t.reshape(b * 4, nh * nw, c)
        t = t + self.fc2(nn.functional.silu(self.fc1(self.norm(t))))
        h = t.reshape(b, 4, nh * nw, c).transpose(1, 3).reshape(b * c * nh, nw, 2, 2).transpose(1, 2)
        return self.head(h.reshape(b, c, hh, ww).mean((2, 3)))


def patch_mixer() -> PatchMixer:
    torch.manual_seed(0)
    return PatchMixer().eval()


class TokenEncoder(TinyEncoder):
    """TinyEncoder returning ``{"last_hidden_state": [B, T, D], "pooler_output": [B, D]}``, the
    outputs of a ``transformers`` encoder."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        h = self.encoder(self.embed(input_ids), src_key_padding_mask=attention_mask == 0)
        mask = attention_mask.unsqueeze(-1).to(h.dtype)
        return {"last_hidden_state": h, "pooler_output": self.norm((h * mask).sum(1) / mask.sum(1).clamp(min=1))}


def token_encoder() -> TokenEncoder:
    torch.manual_seed(0)
    return TokenEncoder().eval()


class PositionFromIds(nn.Module):
    """RoBERTa's position ids: computed from the token ids with integer arithmetic
    (``cumsum(ids != pad) * (ids != pad) + pad``), then embedded beside the tokens. The X86
    quantizer annotates such integer ``mul``/``add`` nodes like float ones."""

    def __init__(self, vocab: int = 100, dim: int = 32, pad: int = 1) -> None:
        super().__init__()
        self.pad = pad
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(64, dim)
        self.fc = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 4)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = input_ids.ne(self.pad).int()
        positions = (torch.cumsum(mask, dim=1).type_as(mask) * mask).long() + self.pad
        h = self.tokens(input_ids) + self.positions(positions)
        return self.head(torch.relu(self.fc(h))).mean(1)


def position_from_ids() -> PositionFromIds:
    torch.manual_seed(0)
    return PositionFromIds().eval()


class Conv1D(nn.Module):
    """``transformers``' Conv1D (GPT-2's attention and MLP projections): a linear layer whose
    weight is stored transposed, ``[in, out]``, and applied with ``addmm``."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.05)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size_out = x.size()[:-1] + (self.nf,)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


class GPT2Block(nn.Module):
    """GPT-2's MLP and output projection in Conv1D clothes, plus a head that multiplies by a
    parameter matrix (``x @ W``): linear layers qcli must recognise without ``nn.Linear``."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.c_fc = Conv1D(4 * dim, dim)
        self.c_proj = Conv1D(dim, 4 * dim)
        self.head_weight = nn.Parameter(torch.randn(dim, 8) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.c_proj(torch.nn.functional.gelu(self.c_fc(x)))
        return h @ self.head_weight


def gpt2_block() -> GPT2Block:
    torch.manual_seed(0)
    return GPT2Block().eval()


class _EncoderWithPooler(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.pooler = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.fc(x))
        return h, torch.tanh(self.pooler(h[:, 0]))


class UnusedPooler(nn.Module):
    """A BERT/RoBERTa wrapper's shape: the inner model returns its hidden states and a pooled
    output (Linear then Tanh), and the wrapper keeps only ``last_hidden_state``. Export leaves the
    dropped branch in the graph, and it broke the X86 quantizer (IndexError)."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.model = _EncoderWithPooler(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]


def unused_pooler() -> UnusedPooler:
    torch.manual_seed(0)
    return UnusedPooler().eval()
