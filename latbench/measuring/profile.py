"""Profile one model on one device: whole-model latency, broken down per op type and per block.

Per-op times come from the runtime's profiler (a separate profiling session, so its overhead does
not touch the timed samples). Per-block times are recovered from node names: the TorchScript ONNX
exporter names every node after its module path (``/network.4/network.4.5/token_mixer/q/...``),
which maps back onto the Arch's block decomposition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latbench.blocks.candidates import Candidate, resolve_candidate
from latbench.blocks.configs import arch_slots
from latbench.core.errors import UsageError
from latbench.core.formats import format_of
from latbench.core.progress import ProgressFn
from latbench.measuring.measurement import Measurement, merge_measurements
from latbench.measuring.session import ArtifactItem, MeasuringSession, Target

# Exporters spell the module path of a node in several ways: "/network.4/network.4.5/...",
# "/network.4/5/..." or "/4/5/..." (the ModuleList's own name dropped).
_NET = re.compile(r"^(?:network\.)?(\d+)$")
_BLOCK = re.compile(r"^(?:network\.\d+\.)?(\d+)$")


@dataclass
class ProfileResult:
    target: str
    device_id: str
    artifact: str
    measurement: Measurement
    per_op_type: list[dict[str, Any]] = field(default_factory=list)
    per_block: list[dict[str, Any]] = field(default_factory=list)
    #: How the rounds agreed: the consensus latency ("value_ms"), agreement, spread.
    consensus: dict[str, Any] = field(default_factory=dict)

    @property
    def latency_ms(self) -> float:
        return float(self.consensus.get("value_ms", self.measurement.median))

    def to_dict(self) -> dict[str, Any]:
        m = self.measurement
        return {"target": self.target, "device": self.device_id, "artifact": self.artifact,
                "latency_ms": self.latency_ms, "consensus": self.consensus, **m.stats(),
                "session_ms": m.session_ms, "first_inference_ms": m.first_inference_ms, "warnings": m.warnings,
                "per_op_type": self.per_op_type, "per_block": self.per_block, "provenance": m.provenance,
                "samples_ms": m.samples_ms}


def resolve_target(spec: str, resolution: int | None) -> tuple[Candidate | None, Path | None]:
    """A model name / arch file (exported on demand) or an existing .onnx / .mlpackage / .tflite artifact."""
    path = Path(spec)
    suffix = path.suffix.lower()
    if format_of(path) is not None:
        if not path.exists():
            raise UsageError(f"artifact {spec} does not exist")
        if suffix in (".onnx", ".tflite") and not path.is_file():
            raise UsageError(f"{spec} is not a file")
        if suffix in (".onnx", ".tflite"):
            from latbench.export.inspect import onnx_inputs, tflite_inputs

            # not a readable model: the user's to fix, before any device is opened
            (onnx_inputs if suffix == ".onnx" else tflite_inputs)(path)
        if suffix == ".mlpackage" and not (path.is_dir() and (path / "Manifest.json").is_file()):
            raise UsageError(f"{spec} is not a Core ML package (no Manifest.json inside)")
        return None, path.resolve()
    return resolve_candidate(spec, resolution), None


def block_of_node(node: str, slots_by_prefix: dict[str, list[int]]) -> int | None:
    """Index of the block slot a node belongs to, from its module path; None if it has none."""
    parts = [p for p in node.split("/") if p]
    if len(parts) < 2:
        return None
    if parts[0].startswith("patch_embed"):
        return slots_by_prefix["patch_embed."][0]
    if parts[0] in ("norm", "head", "dist_head"):
        return slots_by_prefix.get("", [None])[0]  # final norm, pooling, heads
    net = _NET.match(parts[0])
    if net is None:
        return None
    blk = _BLOCK.match(parts[1])
    if blk is not None:
        idx = slots_by_prefix.get(f"network.{net.group(1)}.{blk.group(1)}.")
        if idx is None:
            return None
        # An attention block is two slots (mixer, FFN) sharing one prefix: the mixer owns token_mixer.
        if len(idx) == 2:
            return idx[0] if "token_mixer" in node else idx[1]
        return idx[0]
    idx = slots_by_prefix.get(f"network.{net.group(1)}.")  # an embedding between stages
    return idx[0] if idx else None


def breakdowns(m: Measurement, candidate: Candidate | None) -> tuple[list[dict], list[dict]]:
    total = sum(op.median_ms for op in m.per_op)
    by_type = [{"op_type": k, "ms": v, "share": v / total if total else None}
               for k, v in m.per_op_type().items()]
    per_block: list[dict] = []
    if candidate is not None and candidate.arch is not None and m.per_op:
        slots = arch_slots(candidate.arch)
        by_prefix: dict[str, list[int]] = {}
        for i, s in enumerate(slots):
            by_prefix.setdefault(s.prefix, []).append(i)
        ms = [0.0] * len(slots)
        other = 0.0
        current: int | None = None
        for op in m.per_op:
            i = block_of_node(op.node_name, by_prefix)
            # Nodes the runtime created by fusion (e.g. "Gelu_token_14") carry no module path; with
            # sequential execution they run inside the block of the node before them.
            i = current if i is None else i
            current = i
            if i is None:
                other += op.median_ms
            else:
                ms[i] += op.median_ms
        per_block = [{"index": i, "block": f"{s.prefix or 'head.'}{s.config.kind}", "key": s.config.key,
                      "ms": ms[i], "share": ms[i] / total if total else None} for i, s in enumerate(slots)]
        if other:
            per_block.append({"index": len(slots), "block": "unattributed", "key": None, "ms": other,
                              "share": other / total if total else None})
    return by_type, per_block


def profile(spec: str | Candidate, runner, *, runs: int | None = None, warmup: int = 10, resolution: int | None = None,
            rounds: int = 3, jobs: int = 1,
            progress: ProgressFn | None = None, precision: str | None = None) -> ProfileResult:
    """Measure one model (or artifact) on an open runner: a measuring session of `rounds`
    rounds (more until they agree), per-op times from the first round's profiling run."""
    from latbench.measuring.models import model_plan

    if isinstance(spec, Candidate):
        candidate, artifact = spec, None
    else:
        candidate, artifact = resolve_target(spec, resolution)
    if artifact is not None:
        fmt = format_of(artifact)
        if fmt != runner.artifact_format:
            raise UsageError(f"device {runner.device_id} runs {runner.artifact_format} artifacts, "
                             f"{artifact.name} is {fmt}")
        item = ArtifactItem.of(artifact)
        target = Target(item.key, item, "model")
    else:
        target = Target(candidate.key, candidate, "model")
    plan = model_plan(rounds, runs, warmup, time_cap_s=4.0, seed=0, profile=True)
    session = MeasuringSession(runner, plan, purpose="profile", export_jobs=jobs, progress=progress,
                               precision=precision)
    res = session.run([target])
    ms = res.measurements(target.key)
    m = merge_measurements(ms, label=candidate.name if candidate else artifact.name)
    m.per_op = next((x.per_op for x in ms if x.per_op), [])
    verdict = res.verdicts[target.key]
    by_type, per_block = breakdowns(m, candidate)
    path = artifact if artifact is not None else session.artifacts[target.key].path
    return ProfileResult(candidate.name if candidate else artifact.name, runner.device_id, str(path), m,
                         by_type, per_block, verdict.to_dict())
