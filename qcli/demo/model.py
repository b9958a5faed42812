"""Architectures used by the demo, the tests and the benchmarks.

``DigitNet`` is the demo model: a residual CNN for 28x28 grayscale digits (about 75k parameters).
``ResNet18`` is a ResNet-18-class ImageNet network (11.7M parameters) of our own definition, used
to measure INT8 speed on a model of realistic size; it has no pretrained weights. ``MobileNetV2``
is the same for the MobileNetV2 layout (3.5M parameters), ``EfficientNetLite0`` for
EfficientNet-Lite0's (4.7M: depthwise 3x3 and 5x5, no squeeze-excitation).
``MobileDigitNet`` (MobileNetV2-style: inverted residuals, depthwise convolutions, ReLU6) and
``PReLUDigitNet`` (conv-BN-PReLU) are the architectures that naive INT8 handles badly; they are
trained on the same digits as the demo (``python -m qcli.demo.train --arch mobile|prelu``).
``TextEncoder`` is a sentence-embedding transformer encoder (MiniLM-L6's size by default) taking
token ids and an attention mask, used for dynamic and weight-only INT8.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def conv_bn(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    )


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn plus a shortcut (1x1 conv-bn when the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, cout, stride)
        self.conv2 = conv_bn(cout, cout)
        self.relu = nn.ReLU()
        self.shortcut = conv_bn(cin, cout, stride, kernel=1) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv1(x))
        return self.relu(self.conv2(y) + self.shortcut(x))


class DigitNet(nn.Module):
    """Residual CNN for 1x28x28 digits: stem, three residual stages, global pooling, linear."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(1, width), nn.ReLU())
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.layer3 = BasicBlock(2 * width, 4 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class ResNet18(nn.Module):
    """ResNet-18 layout (He et al. 2016) for 3x224x224 inputs."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages = []
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout)))
            cin = cout
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def conv_bn_act(
    cin: int, cout: int, stride: int = 1, kernel: int = 3, groups: int = 1, act: type | None = nn.ReLU6
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand + ReLU6, 3x3 (or ``kernel``) depthwise + ReLU6, 1x1 linear
    projection; a residual add when the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, kernel: int = 3) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.block = nn.Sequential(
            conv_bn_act(cin, hidden, kernel=1),
            conv_bn_act(hidden, hidden, stride=stride, kernel=kernel, groups=hidden),
            conv_bn_act(hidden, cout, kernel=1, act=None),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_residual else y


class InvertedResidualNet(nn.Module):
    """The MobileNetV2 layout at any size: a 3x3 stem convolution, inverted-residual blocks
    (``blocks``: output channels, stride, expansion and optionally the depthwise kernel of each), a
    1x1 head convolution, average pooling and a linear classifier."""

    def __init__(
        self, cin: int, stem: int, stem_stride: int, blocks: Sequence[tuple[int, ...]], head: int, num_classes: int
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_act(cin, stem, stride=stem_stride)]
        channels = stem
        for cout, stride, expand, *kernel in blocks:
            layers.append(InvertedResidual(channels, cout, stride, expand, *kernel))
            channels = cout
        layers.append(conv_bn_act(channels, head, kernel=1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class MobileDigitNet(InvertedResidualNet):
    """A MobileNetV2-style network for 1x28x28 digits (depthwise-separable blocks, ReLU6)."""

    def __init__(self, num_classes: int = 10) -> None:
        blocks = [(16, 1, 1), (24, 2, 4), (24, 1, 4), (32, 2, 4), (32, 1, 4), (64, 1, 4)]  # cout, stride, expand
        super().__init__(1, 16, 1, blocks, 128, num_classes)


class MobileNetV2(InvertedResidualNet):
    """MobileNetV2 layout (Sandler et al. 2018, width 1.0) for 3x224x224 inputs, 3.5M parameters."""

    # (expansion, channels, repeats, first stride), as in the paper's Table 2
    TABLE = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000) -> None:
        blocks = [(c, s if i == 0 else 1, t) for t, c, n, s in self.TABLE for i in range(n)]
        super().__init__(3, 32, 2, blocks, 1280, num_classes)


class EfficientNetLite0(InvertedResidualNet):
    """EfficientNet-Lite0 layout (the mobile variant of Tan and Le 2019: no squeeze-excitation,
    ReLU6, 3x3 and 5x5 depthwise convolutions) for 3x224x224 inputs, 4.7M parameters."""

    # (expansion, channels, repeats, first stride, kernel)
    TABLE = ((1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3), (6, 112, 3, 1, 5),
             (6, 192, 4, 2, 5), (6, 320, 1, 1, 3))  # fmt: skip

    def __init__(self, num_classes: int = 1000) -> None:
        blocks = [(c, s if i == 0 else 1, t, k) for t, c, n, s, k in self.TABLE for i in range(n)]
        super().__init__(3, 32, 2, blocks, 1280, num_classes)


class PReLUDigitNet(nn.Module):
    """A plain CNN with per-channel PReLU activations for 1x28x28 digits."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.PReLU(cout)
            )

        self.features = nn.Sequential(
            block(1, width, 1), block(width, width, 1), block(width, 2 * width, 2),
            block(2 * width, 2 * width, 1), block(2 * width, 4 * width, 2), block(4 * width, 4 * width, 1),
        )  # fmt: skip
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class ONet48(nn.Module):
    """MTCNN's output network layout (Zhang et al. 2016) for 3x48x48 face crops: four
    convolutions with per-channel PReLU and max pooling, a 256-wide fully connected layer, and
    three heads: face score (2), box offsets (4) and five landmarks (10)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3), nn.PReLU(32), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(32, 64, 3), nn.PReLU(64), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(64, 64, 3), nn.PReLU(64), nn.MaxPool2d(2, 2, ceil_mode=True),
            nn.Conv2d(64, 128, 2), nn.PReLU(128),
        )  # fmt: skip
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(128 * 3 * 3, 256), nn.PReLU(256))
        self.score = nn.Linear(256, 2)
        self.box = nn.Linear(256, 4)
        self.landmarks = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.fc(self.features(x))
        return self.score(h), self.box(h), self.landmarks(h)


class EncoderLayer(nn.Module):
    """Post-norm transformer encoder layer (BERT's layout) with separate q/k/v/out projections."""

    def __init__(self, d_model: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.ff1 = nn.Linear(d_model, ffn)
        self.ff2 = nn.Linear(ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        att = nn.functional.scaled_dot_product_attention(
            heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), mask_bias
        )
        x = self.norm1(x + self.out(att.transpose(1, 2).reshape(b, t, d)))
        return self.norm2(x + self.ff2(nn.functional.gelu(self.ff1(x))))


class TextEncoder(nn.Module):
    """A sentence-embedding transformer encoder: token + position embeddings, ``layers`` encoder
    layers, mean pooling over the tokens the attention mask keeps. Takes ``input_ids`` and
    ``attention_mask`` (``[batch, seq]`` int64), returns ``[batch, d_model]``. The default size is
    MiniLM-L6's (6 layers, d_model 384, 12 heads, FFN 1536)."""

    def __init__(
        self,
        vocab: int = 8192,
        d_model: int = 384,
        heads: int = 12,
        layers: int = 6,
        ffn: int = 1536,
        max_len: int = 512,
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, d_model)
        self.positions = nn.Embedding(max_len, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.layers = nn.ModuleList(EncoderLayer(d_model, heads, ffn) for _ in range(layers))
        for module in self.modules():  # BERT's initialisation: N(0, 0.02) weights, zero biases
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.norm(self.tokens(input_ids) + self.positions(positions))
        keep = attention_mask.to(x.dtype)
        mask_bias = (keep[:, None, None, :] - 1.0) * 1e4  # 0 where kept, -1e4 on padding
        for layer in self.layers:
            x = layer(x, mask_bias)
        weights = keep.unsqueeze(-1)
        return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
