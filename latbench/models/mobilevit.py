"""MobileViT (Mehta & Rastegari, 2022) XXS / XS / S, written from the paper's architecture table.

Export-friendliness drives two choices here:
- unfolding into 2x2 patches and folding back use only reshape/transpose with sizes fixed at
  construction time (from `resolution`), so ONNX sees static shapes and Core ML needs no
  im2col-style ops (no F.unfold / F.fold);
- attention is written as explicit matmul + softmax rather than scaled_dot_product_attention,
  which older ONNX opsets and Core ML deployment targets handle unevenly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from latbench.models import check_resolution, register_model


def _bilinear_matrix(src: int, dst: int) -> torch.Tensor:
    """(dst, src) matrix M with M @ v == 1-D bilinear resize of v (align_corners=False).

    Resizing with constant matrices instead of F.interpolate keeps the exported ONNX graph free
    of runtime Shape ops; the result is the same as F.interpolate(mode="bilinear").
    """
    eye = torch.eye(src).reshape(1, 1, src, src)
    # Height keeps its size (an exact identity for bilinear), width is resized: row i of the
    # result is the resized unit vector e_i, i.e. column i of M.
    return F.interpolate(eye, size=(src, dst), mode="bilinear", align_corners=False)[0, 0].T.contiguous()


class ConvBNAct(nn.Sequential):
    """Conv (no bias: BatchNorm follows) -> BatchNorm -> optional SiLU."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
    ):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.SiLU(inplace=True) if act else nn.Identity(),
        )


class MV2Block(nn.Module):
    """MobileNetV2 inverted residual with SiLU: expand 1x1 -> depthwise 3x3 -> linear 1x1."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(in_ch * expand_ratio))
        self.use_residual = stride == 1 and in_ch == out_ch
        self.conv = nn.Sequential(
            ConvBNAct(in_ch, hidden, kernel_size=1),
            ConvBNAct(hidden, hidden, kernel_size=3, stride=stride, groups=hidden),
            ConvBNAct(hidden, out_ch, kernel_size=1, act=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (bias on both Linears)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer: x + MHSA(LN(x)), then x + FFN(LN(x)) with a SiLU FFN."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.SiLU(), nn.Linear(ffn_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class MobileViTBlock(nn.Module):
    """Local conv -> global transformer over 2x2-patch token groups -> fuse with the input.

    `feature_size` is the (square) spatial size of this block's input. It is fixed here so that
    every reshape below uses Python ints, which keeps exported graphs fully static.
    """

    def __init__(
        self,
        channels: int,
        dim: int,
        depth: int,
        feature_size: int,
        ffn_ratio: float = 2.0,
        num_heads: int = 4,
        patch_size: int = 2,
    ):
        super().__init__()
        self.patch_size = patch_size
        self.feature_size = feature_size
        # Odd feature maps (e.g. 9x9 at 288 input) are resized to a multiple of the patch size
        # and back, as the reference implementation does; at 256 input no resize happens.
        self.padded_size = math.ceil(feature_size / patch_size) * patch_size
        if self.padded_size != feature_size:
            # Non-persistent: derived from the resolution, not part of the weights/state_dict.
            self.register_buffer(
                "resize_up", _bilinear_matrix(feature_size, self.padded_size), persistent=False
            )
            self.register_buffer(
                "resize_down", _bilinear_matrix(self.padded_size, feature_size), persistent=False
            )
        else:
            self.resize_up = self.resize_down = None
        self.conv_local = ConvBNAct(channels, channels, kernel_size=3)
        # Plain projection into the transformer width: no BN/activation (reference design).
        self.conv_in = nn.Conv2d(channels, dim, 1, bias=False)
        self.transformer = nn.Sequential(
            *[TransformerLayer(dim, int(dim * ffn_ratio), num_heads) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim)
        self.conv_out = ConvBNAct(dim, channels, kernel_size=1)
        self.conv_fuse = ConvBNAct(2 * channels, channels, kernel_size=3)

    def _unfold(self, x: torch.Tensor) -> torch.Tensor:
        # (B, D, H, W) -> (B * P, N, D): P = pixels per patch, N = number of patches. Each of the
        # P pixel positions attends across all patches (MobileViT's global representation).
        p, s = self.patch_size, self.padded_size
        nh = s // p
        d = x.shape[1]
        x = x.reshape(-1, d, nh, p, nh, p)  # B, D, nh, ph, nw, pw
        x = x.permute(0, 3, 5, 2, 4, 1)  # B, ph, pw, nh, nw, D
        return x.reshape(-1, nh * nh, d)

    def _fold(self, x: torch.Tensor) -> torch.Tensor:
        # Exact inverse of _unfold.
        p, s = self.patch_size, self.padded_size
        nh = s // p
        d = x.shape[-1]
        x = x.reshape(-1, p, p, nh, nh, d)  # B, ph, pw, nh, nw, D
        x = x.permute(0, 5, 3, 1, 4, 2)  # B, D, nh, ph, nw, pw
        return x.reshape(-1, d, s, s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        y = self.conv_in(self.conv_local(x))
        if self.resize_up is not None:
            y = self.resize_up @ y @ self.resize_up.T  # separable bilinear: rows, then columns
        y = self._fold(self.norm(self.transformer(self._unfold(y))))
        if self.resize_down is not None:
            y = self.resize_down @ y @ self.resize_down.T
        y = self.conv_out(y)
        return self.conv_fuse(torch.cat((shortcut, y), dim=1))


@dataclass(frozen=True)
class MobileViTConfig:
    expand_ratio: int  # MV2 expansion everywhere in the network
    channels: tuple[int, int, int, int, int]  # layer1..layer5 output channels
    dims: tuple[int, int, int]  # transformer width d for layers 3..5
    depths: tuple[int, int, int] = (2, 4, 3)
    ffn_ratio: float = 2.0
    num_heads: int = 4
    stem_channels: int = 16
    dropout: float = 0.1


class MobileViT(nn.Module):
    def __init__(self, cfg: MobileViTConfig, resolution: int = 256, num_classes: int = 1000):
        super().__init__()
        check_resolution("mobilevit_s", resolution)
        c1, c2, c3, c4, c5 = cfg.channels
        t = cfg.expand_ratio
        self.stem = ConvBNAct(3, cfg.stem_channels, kernel_size=3, stride=2)
        self.layer1 = MV2Block(cfg.stem_channels, c1, stride=1, expand_ratio=t)
        self.layer2 = nn.Sequential(
            MV2Block(c1, c2, stride=2, expand_ratio=t),
            MV2Block(c2, c2, stride=1, expand_ratio=t),
            MV2Block(c2, c2, stride=1, expand_ratio=t),
        )
        stages: list[nn.Module] = []
        in_ch = c2
        # layer3..5 run at 1/8, 1/16, 1/32 of the input resolution.
        for i, (out_ch, dim, depth) in enumerate(zip((c3, c4, c5), cfg.dims, cfg.depths, strict=True)):
            stages.append(
                nn.Sequential(
                    MV2Block(in_ch, out_ch, stride=2, expand_ratio=t),
                    MobileViTBlock(
                        out_ch,
                        dim,
                        depth,
                        feature_size=resolution // (8 << i),
                        ffn_ratio=cfg.ffn_ratio,
                        num_heads=cfg.num_heads,
                    ),
                )
            )
            in_ch = out_ch
        self.layer3, self.layer4, self.layer5 = stages
        self.num_features = min(4 * c5, 960)
        self.conv_head = ConvBNAct(c5, self.num_features, kernel_size=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(self.num_features, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        x = self.layer5(self.layer4(self.layer3(x)))
        x = torch.flatten(self.pool(self.conv_head(x)), 1)
        return self.classifier(x)


_XXS = MobileViTConfig(expand_ratio=2, channels=(16, 24, 48, 64, 80), dims=(64, 80, 96))
_XS = MobileViTConfig(expand_ratio=4, channels=(32, 48, 64, 80, 96), dims=(96, 120, 144))
_S = MobileViTConfig(expand_ratio=4, channels=(32, 64, 96, 128, 160), dims=(144, 192, 240))


@register_model
def mobilevit_xxs(resolution: int = 256, num_classes: int = 1000) -> nn.Module:
    """MobileViT-XXS (1,272,024 params at 1000 classes)."""
    return MobileViT(_XXS, resolution=resolution, num_classes=num_classes)


@register_model
def mobilevit_xs(resolution: int = 256, num_classes: int = 1000) -> nn.Module:
    """MobileViT-XS (2,317,848 params at 1000 classes)."""
    return MobileViT(_XS, resolution=resolution, num_classes=num_classes)


@register_model
def mobilevit_s(resolution: int = 256, num_classes: int = 1000) -> nn.Module:
    """MobileViT-S (5,578,632 params at 1000 classes)."""
    return MobileViT(_S, resolution=resolution, num_classes=num_classes)
