"""EfficientFormerV2 (Li et al., ICCV 2023) built from an `Arch`, with the official state-dict layout.

Module and attribute names follow the official checkpoints (the `model` state dicts of
eformer_{s0,s1,s2,l}_450.pth released with github.com/snap-research/EfficientFormer) so that
`eformer_*_450.pth` files load with strict=True. Every searchable dimension is a constructor
argument: per-stage depth and width, per-block FFN expansion, trailing attention blocks per stage,
and the input resolution (attention bias tables depend on it).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import torch
import torch.nn as nn

from latbench.core.errors import UsageError
from latbench.core.text import first_line
from latbench.models import register_model
from latbench.space.arch import (
    ATTN_HEADS,
    ATTN_KEY_DIM,
    ATTN_RATIO,
    DOWN_HEADS,
    DOWN_KEY_DIM,
    DOWN_RATIO,
    LAYER_SCALE_INIT,
    Arch,
    check_resolution,
    named_arch,
    stage_resolution,
)


def conv_bn(c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (with bias) followed by BatchNorm: keys `.0` conv, `.1` BN as in the checkpoints."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups),
        nn.BatchNorm2d(c_out),
    )


def offset_index_grid(res_q: int, res_k: int) -> torch.Tensor:
    """Index buffer (N_q, N_k) mapping each query/key pair to its bias-table entry.

    A query at (yq, xq) on a res_q grid sits at (yq*s, xq*s) on the res_k grid (s = res_k / res_q);
    the pair's offset (|dy|, |dx|) is stored at dy * res_k + dx.
    """
    step = res_k // res_q
    q_pts = torch.tensor(list(itertools.product(range(res_q), range(res_q)))) * step
    k_pts = torch.tensor(list(itertools.product(range(res_k), range(res_k))))
    diff = (q_pts[:, None, :] - k_pts[None, :, :]).abs()
    return diff[..., 0] * res_k + diff[..., 1]


class Mlp(nn.Module):
    """Unified FFN body: 1x1 expand, depthwise 3x3, 1x1 project, each with BN."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.norm1 = nn.BatchNorm2d(hidden)
        self.mid = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.mid_norm = nn.BatchNorm2d(hidden)
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.norm2 = nn.BatchNorm2d(dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.fc1(x)))
        x = self.act(self.mid_norm(self.mid(x)))
        return self.norm2(self.fc2(x))


class FFN(nn.Module):
    """x + layer_scale * mlp(x)."""

    def __init__(self, dim: int, expansion: int):
        super().__init__()
        self.mlp = Mlp(dim, int(dim * expansion))
        self.layer_scale_2 = nn.Parameter(LAYER_SCALE_INIT * torch.ones(dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layer_scale_2 * self.mlp(x)


class Attention4D(nn.Module):
    """MHSA on 4-D feature maps with talking heads, local value conv and a learned position bias.

    `strided=True` (stage 3) runs attention at half resolution: depthwise stride-2 conv first,
    bilinear x2 upsampling before the projection.
    """

    def __init__(self, dim: int, resolution: int, strided: bool):
        super().__init__()
        self.heads = ATTN_HEADS
        self.key_dim = ATTN_KEY_DIM
        self.scale = ATTN_KEY_DIM**-0.5
        self.d = ATTN_RATIO * ATTN_KEY_DIM
        self.dh = self.d * ATTN_HEADS
        qk = ATTN_KEY_DIM * ATTN_HEADS
        if strided:
            self.stride_conv = conv_bn(dim, dim, 3, stride=2, groups=dim)
            self.upsample = nn.Upsample(scale_factor=2, mode="bilinear")
            self.resolution = math.ceil(resolution / 2)
        else:
            self.stride_conv = None
            self.upsample = None
            self.resolution = resolution
        self.N = self.resolution**2
        self.q = conv_bn(dim, qk)
        self.k = conv_bn(dim, qk)
        self.v = conv_bn(dim, self.dh)
        self.v_local = conv_bn(self.dh, self.dh, 3, groups=self.dh)
        self.talking_head1 = nn.Conv2d(ATTN_HEADS, ATTN_HEADS, 1)
        self.talking_head2 = nn.Conv2d(ATTN_HEADS, ATTN_HEADS, 1)
        self.proj = nn.Sequential(nn.GELU(), nn.Conv2d(self.dh, dim, 1), nn.BatchNorm2d(dim))
        self.attention_biases = nn.Parameter(torch.zeros(ATTN_HEADS, self.N))
        self.register_buffer("attention_bias_idxs", offset_index_grid(self.resolution, self.resolution))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if self.stride_conv is not None:
            x = self.stride_conv(x)
        q = self.q(x).reshape(b, self.heads, self.key_dim, self.N).transpose(2, 3)
        k = self.k(x).reshape(b, self.heads, self.key_dim, self.N)
        v = self.v(x)
        v_local = self.v_local(v)
        v = v.reshape(b, self.heads, self.d, self.N).transpose(2, 3)
        attn = (q @ k) * self.scale + self.attention_biases[:, self.attention_bias_idxs]
        attn = self.talking_head2(self.talking_head1(attn).softmax(dim=-1))
        out = (attn @ v).transpose(2, 3).reshape(b, self.dh, self.resolution, self.resolution) + v_local
        if self.upsample is not None:
            out = self.upsample(out)
        return self.proj(out)


class AttnFFN(nn.Module):
    """Attention block: x + ls1 * attention(x), then x + ls2 * mlp(x)."""

    def __init__(self, dim: int, expansion: int, resolution: int, strided: bool):
        super().__init__()
        self.token_mixer = Attention4D(dim, resolution, strided)
        self.mlp = Mlp(dim, int(dim * expansion))
        self.layer_scale_1 = nn.Parameter(LAYER_SCALE_INIT * torch.ones(dim, 1, 1))
        self.layer_scale_2 = nn.Parameter(LAYER_SCALE_INIT * torch.ones(dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale_1 * self.token_mixer(x)
        return x + self.layer_scale_2 * self.mlp(x)


class LGQuery(nn.Module):
    """Local-global query for attention downsampling: pooled + depthwise-strided, then 1x1 + BN."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.pool = nn.AvgPool2d(1, 2, 0)
        self.local = nn.Sequential(nn.Conv2d(c_in, c_in, 3, stride=2, padding=1, groups=c_in))
        self.proj = conv_bn(c_in, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.local(x) + self.pool(x))


class Attention4DDownsample(nn.Module):
    """Attention from a res x res map to a res/2 x res/2 map (stage 3 -> 4), no talking heads."""

    def __init__(self, c_in: int, c_out: int, resolution: int):
        super().__init__()
        self.heads = DOWN_HEADS
        self.key_dim = DOWN_KEY_DIM
        self.scale = DOWN_KEY_DIM**-0.5
        self.d = DOWN_RATIO * DOWN_KEY_DIM
        self.dh = self.d * DOWN_HEADS
        qk = DOWN_KEY_DIM * DOWN_HEADS
        self.resolution = resolution
        self.resolution2 = math.ceil(resolution / 2)
        self.N = resolution**2
        self.N2 = self.resolution2**2
        self.q = LGQuery(c_in, qk)
        self.k = conv_bn(c_in, qk)
        self.v = conv_bn(c_in, self.dh)
        self.v_local = conv_bn(self.dh, self.dh, 3, stride=2, groups=self.dh)
        self.proj = nn.Sequential(nn.GELU(), nn.Conv2d(self.dh, c_out, 1), nn.BatchNorm2d(c_out))
        self.attention_biases = nn.Parameter(torch.zeros(DOWN_HEADS, self.N))
        self.register_buffer("attention_bias_idxs", offset_index_grid(self.resolution2, self.resolution))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        q = self.q(x).reshape(b, self.heads, self.key_dim, self.N2).transpose(2, 3)
        k = self.k(x).reshape(b, self.heads, self.key_dim, self.N)
        v = self.v(x)
        v_local = self.v_local(v)
        v = v.reshape(b, self.heads, self.d, self.N).transpose(2, 3)
        attn = ((q @ k) * self.scale + self.attention_biases[:, self.attention_bias_idxs]).softmax(dim=-1)
        out = (attn @ v).transpose(2, 3).reshape(b, self.dh, self.resolution2, self.resolution2) + v_local
        return self.proj(out)


class ConvEmbedding(nn.Module):
    """Stride-2 conv3x3 + BN between stages 1->2 and 2->3."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.proj = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class AttnEmbedding(nn.Module):
    """Stage 3->4 downsampling: attention downsampling plus a stride-2 conv3x3 + BN shortcut."""

    def __init__(self, c_in: int, c_out: int, resolution: int):
        super().__init__()
        self.attn = Attention4DDownsample(c_in, c_out, resolution)
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x) + self.bn(self.conv(x))


class Stem(nn.Sequential):
    """Two stride-2 conv3x3 + BN + GELU: keys patch_embed.{0,1,3,4}."""

    def __init__(self, c_out: int):
        super().__init__(
            nn.Conv2d(3, c_out // 2, 3, stride=2, padding=1),
            nn.BatchNorm2d(c_out // 2),
            nn.GELU(),
            nn.Conv2d(c_out // 2, c_out, 3, stride=2, padding=1),
            nn.BatchNorm2d(c_out),
            nn.GELU(),
        )


class ClassifierHead(nn.Module):
    """Final BN, global average pool, classifier and distillation classifier.

    Used standalone as a block; inside the model the same parameters live at the top level
    (`norm`, `head`, `dist_head`) as in the official checkpoints.
    """

    def __init__(self, dim: int, num_classes: int = 1000):
        super().__init__()
        self.norm = nn.BatchNorm2d(dim)
        self.head = nn.Linear(dim, num_classes)
        self.dist_head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return classify(x, self.norm, self.head, self.dist_head, self.training)


def classify(x: torch.Tensor, norm: nn.Module, head: nn.Module, dist_head: nn.Module, training: bool):
    x = norm(x).flatten(2).mean(-1)
    out = head(x), dist_head(x)
    # Eval output is the mean of the two heads; training returns the pair for distillation.
    return out if training else (out[0] + out[1]) / 2


class AttnMixer(nn.Module):
    """First half of an attention block, measured on its own: x + layer_scale_1 * token_mixer(x)."""

    def __init__(self, dim: int, resolution: int, strided: bool):
        super().__init__()
        self.token_mixer = Attention4D(dim, resolution, strided)
        self.layer_scale_1 = nn.Parameter(LAYER_SCALE_INIT * torch.ones(dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layer_scale_1 * self.token_mixer(x)


class Passthrough(nn.Module):
    """x * 1: one trivial op (it times the per-inference overhead). Identity would be folded away by
    exporters/runtimes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0


class EfficientFormerV2(nn.Module):
    """Any subnet of the EfficientFormerV2 search space, described by an `Arch`."""

    def __init__(self, arch: Arch, num_classes: int = 1000):
        super().__init__()
        check_resolution(arch.resolution)
        self.arch = arch
        widths = arch.widths
        self.patch_embed = Stem(widths[0])
        network: list[nn.Module] = []
        for i, stage in enumerate(arch.stages):
            stage_no = i + 1
            res = stage_resolution(arch.resolution, stage_no)
            n_blocks = len(stage.expansions)
            blocks = []
            for j, e in enumerate(stage.expansions):
                if j >= n_blocks - stage.attention:
                    blocks.append(AttnFFN(stage.width, e, res, strided=stage_no == 3))
                else:
                    blocks.append(FFN(stage.width, e))
            network.append(nn.Sequential(*blocks))
            if stage_no < 3:
                network.append(ConvEmbedding(stage.width, widths[i + 1]))
            elif stage_no == 3:
                network.append(AttnEmbedding(stage.width, widths[i + 1], res))
        self.network = nn.ModuleList(network)
        self.norm = nn.BatchNorm2d(widths[-1])
        self.head = nn.Linear(widths[-1], num_classes)
        self.dist_head = nn.Linear(widths[-1], num_classes)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-stage feature maps (strides 4, 8, 16, 32) for backbone use."""
        x = self.patch_embed(x)
        feats = []
        for idx, module in enumerate(self.network):
            x = module(x)
            if idx % 2 == 0:  # even indices are the stages, odd ones the embeddings
                feats.append(x)
        return feats

    def forward(self, x: torch.Tensor):
        x = self.forward_features(x)[-1]
        return classify(x, self.norm, self.head, self.dist_head, self.training)


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load an official `eformer_*_450.pth` (state dict under "model") with strict key matching."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        first = first_line(exc)
        if "weights only load failed" in first.lower():  # torch's advice to unpickle with code execution
            first = "it holds pickled objects besides tensors, and latbench loads checkpoints weights-only"
        raise UsageError(f"checkpoint {path} is not a loadable weights-only torch file: {first}") from None
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise UsageError(f"checkpoint {path} holds no state dict (expected a dict with a 'model' entry)")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:3]}{' ...' if len(missing) > 3 else ''} ({len(missing)} in all)")
        if unexpected:
            parts.append(
                f"unexpected keys {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''} ({len(unexpected)} in all)"
            )
        raise UsageError(f"checkpoint {path} does not match the model: {'; '.join(parts)}")
    bad = [k for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        k = bad[0]
        raise UsageError(
            f"checkpoint {path} does not match the model: {k} has shape {tuple(state[k].shape)}, "
            f"expected {tuple(expected[k].shape)} (is it built for another variant or resolution?)"
        )
    model.load_state_dict(state, strict=True)


def efficientformerv2(arch: Arch, num_classes: int = 1000) -> EfficientFormerV2:
    return EfficientFormerV2(arch, num_classes)


def _named(name: str, resolution: int, num_classes: int) -> EfficientFormerV2:
    return EfficientFormerV2(named_arch(name, resolution), num_classes)


@register_model
def efficientformerv2_s0(resolution: int = 224, num_classes: int = 1000) -> EfficientFormerV2:
    return _named("efficientformerv2_s0", resolution, num_classes)


@register_model
def efficientformerv2_s1(resolution: int = 224, num_classes: int = 1000) -> EfficientFormerV2:
    return _named("efficientformerv2_s1", resolution, num_classes)


@register_model
def efficientformerv2_s2(resolution: int = 224, num_classes: int = 1000) -> EfficientFormerV2:
    return _named("efficientformerv2_s2", resolution, num_classes)


@register_model
def efficientformerv2_l(resolution: int = 224, num_classes: int = 1000) -> EfficientFormerV2:
    return _named("efficientformerv2_l", resolution, num_classes)

