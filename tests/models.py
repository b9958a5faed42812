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
