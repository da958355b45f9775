"""MobileNetV2 (Sandler et al., 2018): the standard ImageNet network, written from the paper.

Only plain convolutions, BatchNorm, ReLU6, global average pooling and a Linear layer, so the
model exports to ONNX and converts to Core ML without special handling.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from latbench.models import register_model

# (expansion t, output channels c, repeats n, first stride s), as in Table 2 of the paper.
INVERTED_RESIDUAL_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to the nearest multiple of `divisor`, never dropping more than 10%.

    Hardware (and the reference ImageNet checkpoints) expect channel counts that are multiples of 8.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBNReLU6(nn.Sequential):
    """Conv (no bias: BatchNorm follows) -> BatchNorm -> ReLU6."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> linear project (1x1); residual when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = int(round(in_ch * expand_ratio))
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:  # t=1 blocks skip the expansion conv (paper, first bottleneck)
            layers.append(ConvBNReLU6(in_ch, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, kernel_size=3, stride=stride, groups=hidden),
            # Linear bottleneck: no activation after the projection.
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        settings: tuple[tuple[int, int, int, int], ...] = INVERTED_RESIDUAL_SETTINGS,
        stem_channels: int = 32,
        last_channels: int = 1280,
        dropout: float = 0.2,
        round_nearest: int = 8,
    ):
        super().__init__()
        in_ch = make_divisible(stem_channels * width_mult, round_nearest)
        # The last conv is only widened, never narrowed, below width 1.0 (as in the paper).
        self.num_features = make_divisible(last_channels * max(1.0, width_mult), round_nearest)

        layers: list[nn.Module] = [ConvBNReLU6(3, in_ch, kernel_size=3, stride=2)]
        for t, c, n, s in settings:
            out_ch = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                layers.append(InvertedResidual(in_ch, out_ch, stride=s if i == 0 else 1, expand_ratio=t))
                in_ch = out_ch
        layers.append(ConvBNReLU6(in_ch, self.num_features, kernel_size=1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.num_features, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(self.pool(x), 1)
        return self.classifier(x)


@register_model
def mobilenetv2_100(resolution: int = 224, num_classes: int = 1000) -> nn.Module:
    """MobileNetV2 width 1.0 (3,504,872 params at 1000 classes).

    `resolution` is accepted for a uniform builder signature; the network is fully convolutional
    up to the global pool, so it does not change the architecture.
    """
    del resolution
    return MobileNetV2(num_classes=num_classes, width_mult=1.0)
