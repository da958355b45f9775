"""How repeatable is one CPU-runner measurement, and what does it cost?

Builds a model (EfficientFormerV2-S0 via latbench.models when available, else a small conv net),
exports it to ONNX, measures it twice on the CPU runner with fresh sessions, and prints the
run-to-run spread of the median (goal <= 2 %) and the wall time of each measurement -- for
wall-clock samples (the default clock) and for thread-CPU-time samples, alternated.

    .venv/bin/python benchmarks/bench_measure.py [--model efficientformerv2_s0|conv] [--repeats 2]
                                                 [--clock wall|thread_cpu|both]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from device_runners.cpu import CpuRunner  # noqa: E402


def export_model(name: str, out: Path) -> tuple[Path, str]:
    import torch

    model = None
    if name != "conv":
        try:
            from latbench.models import create_model, default_resolution

            model = create_model(name).eval()
            res = default_resolution(name)
        except Exception as e:  # the registry may not have it yet
            print(f"({name} unavailable: {e}; using the small conv net)")
    if model is None:
        name, res = "conv", 224
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 32, 3, stride=2, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
            torch.nn.Conv2d(32, 64, 3, stride=2, padding=1), torch.nn.BatchNorm2d(64), torch.nn.ReLU(),
            torch.nn.Conv2d(64, 128, 3, stride=2, padding=1), torch.nn.BatchNorm2d(128), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(128, 1000),
        ).eval()
    path = out / f"{name}.onnx"
    x = torch.randn(1, 3, res, res)
    warnings.filterwarnings("ignore")  # the TorchScript exporter's deprecation notices
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"], output_names=["y"])
    return path, name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientformerv2_s0")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=["wall", "thread_cpu", "both"], default="both")
    args = ap.parse_args()
    clocks = ["wall", "thread_cpu"] if args.clock == "both" and args.threads == 1 else [args.clock]
    medians: dict[str, list[float]] = {c: [] for c in clocks}
    with tempfile.TemporaryDirectory() as tmp:
        path, name = export_model(args.model, Path(tmp))
        for i in range(args.repeats):
            for clock in clocks:  # alternate the clocks so both see the same host conditions
                t0 = time.perf_counter()
                with CpuRunner(threads=args.threads, clock=clock) as runner:  # fresh session each time
                    m = runner.measure(runner.prepare(path), warmup=10)
                wall = time.perf_counter() - t0
                medians[clock].append(m.median)
                print(
                    f"run {i + 1} [{clock}]: median {m.median:.3f} ms  p5 {m.p5:.3f}  p95 {m.p95:.3f}  n={m.n}  "
                    f"CI +-{m.ci_rel * 100:.2f}%  stopped by {m.provenance['sampling']['stopped_by']}  "
                    f"session {m.session_ms:.1f} ms  first {m.first_inference_ms:.2f} ms  wall {wall:.1f} s  "
                    f"cpu share {m.provenance['sampling'].get('cpu_share')}"
                )
                for w in m.warnings:
                    print(f"  warning: {w}")
    for clock, values in medians.items():
        spread = (max(values) - min(values)) / min(values) * 100
        verdict = "ok" if spread <= 2.0 else "ABOVE the 2 % goal"
        print(f"{name} [{clock}]: run-to-run spread of the median {spread:.2f}% ({verdict}) over {len(values)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
