"""Block configurations: the unit of export, measurement and lookup tables.

Every block a subnet of the space can contain is a frozen `BlockConfig` with a stable string key
(OFA style, e.g. ``ffn-r224-s2-c48-e3``), its input shape, an analytic parameter count and a
builder of the standalone nn.Module. An Arch decomposes into an ordered list of `BlockSlot`s
(config + where its weights live in the full model), so a per-key table sums to a model estimate.

Attention blocks are split into the token mixer (``mhsa-*``: x + ls1 * attention(x)) and the FFN
half, which is exactly an ``ffn-*`` block of the same stage. That shares FFN rows between plain and
attention blocks and keeps the number of configurations to measure small.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from latbench.space import Arch, SearchSpace
from latbench.space import arch as ef  # architecture constants (paper, Sec. 3)


def conv_params(c_in: int, c_out: int, k: int = 1, groups: int = 1) -> int:
    return c_in // groups * c_out * k * k + c_out


def bn_params(c: int) -> int:
    return 2 * c  # weight and bias; running statistics are buffers


@dataclass(frozen=True, order=True)
class BlockConfig:
    """Base class. `resolution` is the model input resolution the block belongs to."""

    kind: ClassVar[str] = "block"
    resolution: int

    @property
    def key(self) -> str:
        raise NotImplementedError

    @property
    def input_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def build(self) -> Any:
        raise NotImplementedError

    def params(self) -> int:
        raise NotImplementedError

    def fields(self) -> dict:
        return {"kind": self.kind, **asdict(self)}

    def macs(self) -> int:
        """Multiply-accumulates of conv, linear and matmul ops at batch 1 (analytic where the
        block kind defines `_macs`, else counted by running the module once)."""
        analytic = self._macs()
        return block_macs(self) if analytic is None else analytic

    def _macs(self) -> int | None:
        return None

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True, order=True)
class StemConfig(BlockConfig):
    kind: ClassVar[str] = "stem"
    width: int

    @property
    def key(self) -> str:
        return f"stem-r{self.resolution}-c{self.width}"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, 3, self.resolution, self.resolution)

    def build(self) -> Any:
        from latbench.models import efficientformerv2 as m

        return m.Stem(self.width)

    def _macs(self) -> int:
        h, r = self.width // 2, self.resolution
        return (r // 2) ** 2 * h * 3 * 9 + (r // 4) ** 2 * self.width * h * 9

    def params(self) -> int:
        h = self.width // 2
        return conv_params(3, h, 3) + bn_params(h) + conv_params(h, self.width, 3) + bn_params(self.width)


@dataclass(frozen=True, order=True)
class FFNConfig(BlockConfig):
    kind: ClassVar[str] = "ffn"
    stage: int
    width: int
    expansion: int

    @property
    def key(self) -> str:
        return f"ffn-r{self.resolution}-s{self.stage}-c{self.width}-e{self.expansion}"

    @property
    def input_shape(self) -> tuple[int, ...]:
        r = ef.stage_resolution(self.resolution, self.stage)
        return (1, self.width, r, r)

    def build(self) -> Any:
        from latbench.models import efficientformerv2 as m

        return m.FFN(self.width, self.expansion)

    def _macs(self) -> int:
        c, h = self.width, int(self.width * self.expansion)
        return self.input_shape[-1] ** 2 * (2 * c * h + 9 * h)

    def params(self) -> int:
        c, h = self.width, int(self.width * self.expansion)
        return (
            conv_params(c, h) + bn_params(h) + conv_params(h, h, 3, h) + bn_params(h)
            + conv_params(h, c) + bn_params(c) + c
        )


@dataclass(frozen=True, order=True)
class AttnConfig(BlockConfig):
    """Attention token mixer with its residual; strided (stage 3) or not (stage 4)."""

    kind: ClassVar[str] = "mhsa"
    stage: int
    width: int

    @property
    def key(self) -> str:
        return f"mhsa-r{self.resolution}-s{self.stage}-c{self.width}"

    @property
    def strided(self) -> bool:
        return self.stage == 3

    @property
    def input_shape(self) -> tuple[int, ...]:
        r = ef.stage_resolution(self.resolution, self.stage)
        return (1, self.width, r, r)

    def build(self) -> Any:
        from latbench.models import efficientformerv2 as m

        return m.AttnMixer(self.width, ef.stage_resolution(self.resolution, self.stage), self.strided)

    def _macs(self) -> int:
        c, heads, kd = self.width, ef.ATTN_HEADS, ef.ATTN_KEY_DIM
        d = ef.ATTN_RATIO * kd
        r = ef.stage_resolution(self.resolution, self.stage)
        ra = -(-r // 2) if self.strided else r
        n = ra * ra
        macs = n * c * (2 * heads * kd + heads * d) + n * heads * d * 9  # q, k, v, v_local
        macs += 2 * n * n * heads * heads  # talking heads (1x1 convs over the head axis)
        macs += heads * n * n * (kd + d)  # q @ k and attn @ v
        macs += r * r * heads * d * c  # proj, at the block's own resolution
        if self.strided:
            macs += n * c * 9
        return macs

    def params(self) -> int:
        c, heads = self.width, ef.ATTN_HEADS
        qk, dh = ef.ATTN_KEY_DIM * heads, ef.ATTN_RATIO * ef.ATTN_KEY_DIM * heads
        r = ef.stage_resolution(self.resolution, self.stage)
        r_attn = -(-r // 2) if self.strided else r
        n = 2 * (conv_params(c, qk) + bn_params(qk))
        n += conv_params(c, dh) + bn_params(dh) + conv_params(dh, dh, 3, dh) + bn_params(dh)
        n += 2 * conv_params(heads, heads)
        n += conv_params(dh, c) + bn_params(c)
        n += heads * r_attn * r_attn + c
        if self.strided:
            n += conv_params(c, c, 3, c) + bn_params(c)
        return n


@dataclass(frozen=True, order=True)
class EmbedConfig(BlockConfig):
    """Stride-2 conv embedding leaving `stage` (1 or 2)."""

    kind: ClassVar[str] = "embed"
    stage: int
    width_in: int
    width_out: int

    @property
    def key(self) -> str:
        return f"embed-r{self.resolution}-s{self.stage}-c{self.width_in}-o{self.width_out}"

    @property
    def input_shape(self) -> tuple[int, ...]:
        r = ef.stage_resolution(self.resolution, self.stage)
        return (1, self.width_in, r, r)

    def build(self) -> Any:
        from latbench.models import efficientformerv2 as m

        return m.ConvEmbedding(self.width_in, self.width_out)

    def _macs(self) -> int:
        r2 = -(-self.input_shape[-1] // 2)
        return r2 * r2 * self.width_out * self.width_in * 9

    def params(self) -> int:
        return conv_params(self.width_in, self.width_out, 3) + bn_params(self.width_out)


@dataclass(frozen=True, order=True)
class AttnDownConfig(BlockConfig):
    """Attention downsampling from stage 3 to stage 4."""

    kind: ClassVar[str] = "attndown"
    width_in: int
    width_out: int

    @property
    def key(self) -> str:
        return f"attndown-r{self.resolution}-s3-c{self.width_in}-o{self.width_out}"

    @property
    def input_shape(self) -> tuple[int, ...]:
        r = ef.stage_resolution(self.resolution, 3)
        return (1, self.width_in, r, r)

    def build(self) -> Any:
        from latbench.models import efficientformerv2 as m

        return m.AttnEmbedding(self.width_in, self.width_out, ef.stage_resolution(self.resolution, 3))

    def _macs(self) -> int:
        ci, co, heads, kd = self.width_in, self.width_out, ef.DOWN_HEADS, ef.DOWN_KEY_DIM
        d = ef.DOWN_RATIO * kd
        r = ef.stage_resolution(self.resolution, 3)
        r2 = -(-r // 2)
        n, n2 = r * r, r2 * r2
        macs = n2 * ci * 9 + n2 * ci * heads * kd  # local query, query projection
        macs += n * ci * heads * (kd + d) + n2 * heads * d * 9  # k, v, v_local (stride 2)
        macs += heads * n2 * n * (kd + d)  # q @ k and attn @ v
        macs += n2 * heads * d * co + n2 * co * ci * 9  # proj and the conv shortcut
        return macs

    def params(self) -> int:
        ci, co, heads = self.width_in, self.width_out, ef.DOWN_HEADS
        qk, dh = ef.DOWN_KEY_DIM * heads, ef.DOWN_RATIO * ef.DOWN_KEY_DIM * heads
        r = ef.stage_resolution(self.resolution, 3)
        n = conv_params(ci, ci, 3, ci) + conv_params(ci, qk) + bn_params(qk)
        n += conv_params(ci, qk) + bn_params(qk)
        n += conv_params(ci, dh) + bn_params(dh) + conv_params(dh, dh, 3, dh) + bn_params(dh)
        n += conv_params(dh, co) + bn_params(co) + heads * r * r
        return n + conv_params(ci, co, 3) + bn_params(co)


@dataclass(frozen=True, order=True)
class HeadConfig(BlockConfig):
    kind: ClassVar[str] = "head"
    width: int
    num_classes: int = 1000

    @property
    def key(self) -> str:
        return f"head-r{self.resolution}-c{self.width}" + ("" if self.num_classes == 1000 else f"-k{self.num_classes}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        r = ef.stage_resolution(self.resolution, 4)
        return (1, self.width, r, r)

    def build(self) -> Any:
        from latbench.models import efficientformerv2 as m

        return m.ClassifierHead(self.width, self.num_classes)

    def _macs(self) -> int:
        return 2 * self.width * self.num_classes

    def params(self) -> int:
        return bn_params(self.width) + 2 * (self.width * self.num_classes + self.num_classes)


@dataclass(frozen=True, order=True)
class ModelConfig(BlockConfig):
    """A whole registered model measured as one block (reference models that are not decomposed)."""

    kind: ClassVar[str] = "model"
    name: str

    @property
    def key(self) -> str:
        return f"model-{self.name}-r{self.resolution}"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, 3, self.resolution, self.resolution)

    def build(self) -> Any:
        from latbench.models import create_model

        return create_model(self.name, resolution=self.resolution)

    def params(self) -> int:
        return sum(p.numel() for p in self.build().parameters())


@dataclass(frozen=True, order=True)
class EmptyConfig(BlockConfig):
    """A do-nothing model with a given input shape: times the fixed per-inference overhead
    (call, input binding, output copy) that every isolated block measurement includes once."""

    kind: ClassVar[str] = "empty"
    channels: int
    map_height: int  # pixels of the input map (not a block width in channels)
    map_width: int

    @property
    def key(self) -> str:
        return f"empty-r{self.resolution}-c{self.channels}-h{self.map_height}-w{self.map_width}"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, self.channels, self.map_height, self.map_width)

    def build(self) -> Any:
        from latbench.models.efficientformerv2 import Passthrough

        return Passthrough()

    def _macs(self) -> int:
        return 0

    def params(self) -> int:
        return 0

    @classmethod
    def for_shape(cls, resolution: int, shape: tuple[int, ...]) -> EmptyConfig:
        _, c, h, w = shape
        return cls(resolution, c, h, w)


BLOCK_KINDS: dict[str, type[BlockConfig]] = {
    c.kind: c
    for c in (StemConfig, FFNConfig, AttnConfig, EmbedConfig, AttnDownConfig, HeadConfig, ModelConfig, EmptyConfig)
}


def overhead_blocks(blocks: list[BlockConfig]) -> list[EmptyConfig]:
    """One empty model per distinct input shape among `blocks` (what their timings share)."""
    return sorted({EmptyConfig.for_shape(b.resolution, b.input_shape) for b in blocks}, key=lambda c: c.key)


def config_from_fields(fields: dict) -> BlockConfig:
    """Inverse of BlockConfig.fields() (used when reading tables and manifests back)."""
    f = dict(fields)
    cls = BLOCK_KINDS[f.pop("kind")]
    if cls is EmptyConfig and "height" in f:  # journals from before the map_* names
        f["map_height"], f["map_width"] = f.pop("height"), f.pop("width")
    return cls(**f)


@functools.lru_cache(maxsize=4096)
def block_macs(config: BlockConfig) -> int:
    """Multiply-accumulates of conv, linear and matmul ops at batch 1 (FLOP counter / 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    module = config.build().eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(torch.zeros(config.input_shape))
    return counter.get_total_flops() // 2


@dataclass(frozen=True)
class BlockSlot:
    """One block of a model in order: its config and the state-dict prefix of its weights."""

    config: BlockConfig
    prefix: str


def arch_slots(arch: Arch, num_classes: int = 1000) -> list[BlockSlot]:
    """The ordered decomposition of an Arch; chaining the blocks reproduces the model."""
    r = arch.resolution
    slots = [BlockSlot(StemConfig(r, arch.widths[0]), "patch_embed.")]
    for i, st in enumerate(arch.stages):
        stage = i + 1
        net = 2 * i
        for j, e in enumerate(st.expansions):
            prefix = f"network.{net}.{j}."
            if j >= st.depth - st.attention:
                slots.append(BlockSlot(AttnConfig(r, stage, st.width), prefix))
            slots.append(BlockSlot(FFNConfig(r, stage, st.width, e), prefix))
        if stage < 3:
            slots.append(BlockSlot(EmbedConfig(r, stage, st.width, arch.widths[i + 1]), f"network.{net + 1}."))
        elif stage == 3:
            slots.append(BlockSlot(AttnDownConfig(r, st.width, arch.widths[i + 1]), f"network.{net + 1}."))
    slots.append(BlockSlot(HeadConfig(r, arch.widths[-1], num_classes), ""))
    return slots


def decompose(arch: Arch) -> list[BlockConfig]:
    return [s.config for s in arch_slots(arch)]


def arch_params(arch: Arch) -> int:
    """Analytic parameter count, without building the model."""
    return sum(c.params() for c in decompose(arch))


def space_blocks(space: SearchSpace, resolution: int | None = None) -> list[BlockConfig]:
    """Every unique block configuration the space can produce, sorted by kind order then fields."""
    resolutions = [resolution] if resolution is not None else list(space.resolutions)
    out: set[BlockConfig] = set()
    for r in resolutions:
        space.check_resolution(r)
        s = space.stages
        for w in s[0].widths:
            out.add(StemConfig(r, w))
        for i, sp in enumerate(s):
            stage = i + 1
            for w in sp.widths:
                for e in sp.expansions:
                    out.add(FFNConfig(r, stage, w, e))
                if sp.attention:
                    out.add(AttnConfig(r, stage, w))
                for w_next in s[i + 1].widths if stage < 4 else ():
                    if stage < 3:
                        out.add(EmbedConfig(r, stage, w, w_next))
                    else:
                        out.add(AttnDownConfig(r, w, w_next))
        for w in s[3].widths:
            out.add(HeadConfig(r, w))
    order = list(BLOCK_KINDS)
    return sorted(out, key=lambda c: (c.resolution, order.index(c.kind), c.key))
