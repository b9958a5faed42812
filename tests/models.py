"""Small architectures for tests, importable as ``--arch models:...`` (tests/ is on sys.path)."""

from __future__ import annotations

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
