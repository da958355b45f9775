"""A fake of the coremltools surface the iPhone and Mac runners use, for hosts without Apple hardware.

Same names, signatures and return shapes as coremltools 9.0:
* `ComputeUnit`, and from coremltools.models.ml_program.experimental.remote_device `DeviceType`,
  `DeviceState`, `AppSigningCredentials` and the frozen dataclass `Device` with
  `get_devices()`, `get_connected_devices(device_type)` and async
  `prepare_for_model_debugging(credentials=None, working_directory=None, clean=False)`;
* from ...experimental.perf_utils `MLModelBenchmarker(model, device=None)` with async
  `benchmark_load(iterations=1)`, `benchmark_predict(inputs=None, iterations=1, warmup=False)` and
  `benchmark_operation_execution(inputs=None, iterations=1, warmup=False)` returning
  `MLModelBenchmarker.Measurement(statistics, samples)` (milliseconds) and `OperationExecutionInfo`s;
* `MLModel(model, ..., skip_model_load=False, compute_units=ComputeUnit.ALL, ...)` with
  `get_spec()` (the description.input[i].type.multiArrayType shape/dataType chain) and `predict`.

The "device" is simulated: a model is a directory (e.g. tiny.mlpackage) holding fake_model.json
({"inputs": [...], "ops": [...], "latency_ms": ...}); on-device timings are that latency scaled by
the compute units plus seeded noise; the Mac's predict() really spends that time. Failures on
demand through `reset(...)`: device disconnected after N predictions, load failure, devicectl
failure, and a phone in another state or without Developer Mode.
"""

from __future__ import annotations

import enum
import json
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

__version__ = "9.0-fake"


class ComputeUnit(enum.Enum):
    ALL = 1
    CPU_AND_GPU = 2
    CPU_ONLY = 3
    CPU_AND_NE = 4


class DeviceType(enum.Enum):
    MAC = "mac"
    IPHONE = "iphone"
    IPAD = "ipad"
    APPLETV = "apppletv"
    WATCH = "applewatch"
    HOMEPOD = "homepod"
    UNKNOWN = "unknown"


class DeviceState(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    AVAILABLE = "available"
    UNAVAILABLE = "unavailable"
    DISCONNECTED = "disconnected"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class AppSigningCredentials:
    development_team: str | None = ""
    provisioning_profile_uuid: str | None = None
    bundle_identifier: str | None = None


# Compute-unit speed factors of the simulated phone (ANE fastest).
_CU_FACTOR = {ComputeUnit.ALL: 0.6, ComputeUnit.CPU_AND_NE: 0.6, ComputeUnit.CPU_AND_GPU: 0.8, ComputeUnit.CPU_ONLY: 1.0}


@dataclass
class World:
    devices: list[Device] = field(default_factory=list)
    devicectl_error: str | None = None
    load_error: str | None = None
    disconnect_after_predicts: int | None = None
    noise: float = 0.01
    predict_calls: int = 0
    launched: list[str] = field(default_factory=list)
    rng: random.Random = field(default_factory=lambda: random.Random(0))


WORLD = World()


def make_iphone(
    udid: str = "00008101-000A1B2C3D4E001E",
    *,
    name: str = "Test iPhone",
    os_version: str = "17.5.1",
    state: DeviceState = DeviceState.CONNECTED,
    developer_mode_state: str = "enabled",
) -> Device:
    return Device(
        name=name,
        type=DeviceType.IPHONE,
        identifier=f"id-{udid}",
        udid=udid,
        os_version=os_version,
        os_build_number="21F90",
        developer_mode_state=developer_mode_state,
        state=state,
        session=None,
    )


def reset(devices: list[Device] | None = None, **settings: Any) -> World:
    """Fresh simulated world (module-global, like the real tool's view of attached devices)."""
    global WORLD
    WORLD = World(devices=list(devices or []), **settings)
    return WORLD


def write_fake_model(path: Path, *, shape=(1, 3, 32, 32), latency_ms: float = 1.5, data_type: int = 65568,
                     w8a8: bool = False) -> Path:
    """Create a model directory the fake MLModel understands; `w8a8`: with the quantize /
    dequantize pair and int8 weights a W8A8 ML Program holds (latbench.export.coreml_quant)."""
    path.mkdir(parents=True, exist_ok=True)
    quantized = [{"type": "quantize", "output": "q_0", "weight": 0.02},
                 {"type": "constexpr_affine_dequantize", "output": "w_0", "weight": 0.01},
                 {"type": "dequantize", "output": "dq_0", "weight": 0.02}] if w8a8 else []
    manifest = {
        "inputs": [{"name": "x", "shape": list(shape), "dataType": data_type}],
        "ops": [
            *quantized,
            {"type": "conv", "output": "conv_0", "weight": 0.55},
            {"type": "relu", "output": "relu_0", "weight": 0.05},
            {"type": "reduce_mean", "output": "pool_0", "weight": 0.4},
        ],
        "latency_ms": latency_ms,
    }
    (path / "fake_model.json").write_text(json.dumps(manifest))
    return path


class _DeviceCtlError(Exception):
    def __init__(self, message: str, error_code: int | None = None) -> None:
        self.message = message
        self.error_code = error_code
        super().__init__(message)

    def __str__(self) -> str:
        return f"[Error Code {self.error_code}] {self.message}"


@dataclass(frozen=True)
class Device:
    name: str
    type: DeviceType
    identifier: str
    udid: str
    os_version: str
    os_build_number: str
    developer_mode_state: str
    state: DeviceState
    session: Any

    @staticmethod
    def get_devices() -> list[Device]:
        if WORLD.devicectl_error:
            raise ValueError(WORLD.devicectl_error)
        return list(WORLD.devices)

    @staticmethod
    def get_connected_devices(device_type: DeviceType) -> list[Device]:
        return [d for d in Device.get_devices() if d.state == DeviceState.CONNECTED and d.type == device_type]

    async def prepare_for_model_debugging(
        self,
        credentials: AppSigningCredentials | None = None,
        working_directory: Path | None = None,
        clean: bool = False,
    ) -> Device:
        if self.state != DeviceState.CONNECTED:
            raise ValueError(
                "The device cannot be used for model debugging. "
                f"Current state: {self.state}. Required: State must be CONNECTED."
            )
        WORLD.launched.append(self.udid)
        return replace(self, session=SimpleNamespace(bundle_identifier="com.apple.modelrunner", udid=self.udid))


def _current_state(udid: str) -> DeviceState:
    for d in WORLD.devices:
        if d.udid == udid:
            return d.state
    return DeviceState.DISCONNECTED


def _disconnect(udid: str) -> None:
    WORLD.devices = [replace(d, state=DeviceState.DISCONNECTED) if d.udid == udid else d for d in WORLD.devices]


class MLModel:
    def __init__(
        self,
        model: Any,
        is_temp_package: bool = False,
        mil_program: Any = None,
        skip_model_load: bool = False,
        compute_units: ComputeUnit = ComputeUnit.ALL,
        weights_dir: str | None = None,
        function_name: str | None = None,
        optimization_hints: dict | None = None,
    ) -> None:
        if not isinstance(compute_units, ComputeUnit):
            raise TypeError('"compute_units" parameter must be of type: coremltools.ComputeUnit')
        path = Path(str(model))
        manifest = path / "fake_model.json"
        if not manifest.is_file():
            raise Exception(f"Unable to load Core ML model from {path}: not a valid model package")
        self._manifest = json.loads(manifest.read_text())
        self.package_path = str(path)
        self.compute_unit = compute_units
        self.weights_dir = weights_dir or str(path)
        self.function_name = function_name
        self.optimization_hints = optimization_hints
        self.skip_model_load = skip_model_load
        self.last_predict_duration_in_nano_seconds: int | None = None

    def get_spec(self) -> Any:
        inputs = [
            SimpleNamespace(
                name=i["name"],
                type=SimpleNamespace(multiArrayType=SimpleNamespace(shape=list(i["shape"]), dataType=i["dataType"])),
            )
            for i in self._manifest["inputs"]
        ]
        # The ML Program as the real spec nests it: functions -> block specializations -> operations.
        block = SimpleNamespace(operations=[SimpleNamespace(type=op["type"], blocks=[])
                                            for op in self._manifest["ops"]])
        program = SimpleNamespace(functions={"main": SimpleNamespace(block_specializations={"CoreML7": block})})
        return SimpleNamespace(description=SimpleNamespace(input=inputs), mlProgram=program)

    def latency_ms(self) -> float:
        return float(self._manifest["latency_ms"]) * _CU_FACTOR[self.compute_unit]

    def predict(self, data: dict[str, Any], state: Any = None) -> dict[str, np.ndarray]:
        if self.skip_model_load:
            raise Exception("This model was not loaded with the Core ML Framework. Cannot call predict on the model.")
        for i in self._manifest["inputs"]:
            arr = data.get(i["name"])
            if arr is None or tuple(np.shape(arr)) != tuple(i["shape"]):
                raise Exception(f"input {i['name']} missing or of the wrong shape")
        # Spend the simulated latency so that host-side timing sees it.
        t0 = time.perf_counter_ns()
        end = t0 + int(self.latency_ms() * 1e6 * (1 + WORLD.rng.gauss(0, WORLD.noise)))
        while time.perf_counter_ns() < end:
            pass
        self.last_predict_duration_in_nano_seconds = time.perf_counter_ns() - t0
        return {"out": np.zeros((1, 8), dtype=np.float32)}


class MLModelBenchmarker:
    @dataclass(frozen=True)
    class Statistics:
        minimum: float
        maximum: float
        average: float
        std_dev: float
        median: float

        @staticmethod
        def from_values(values: list[float]) -> MLModelBenchmarker.Statistics | None:
            if len(values) == 0:
                return None
            return MLModelBenchmarker.Statistics(
                minimum=float(np.min(values)),
                maximum=float(np.max(values)),
                average=float(np.mean(values)),
                std_dev=float(np.std(values)),
                median=float(np.median(values)),
            )

    @dataclass(frozen=True)
    class Measurement:
        statistics: Any
        samples: list[float]

        @staticmethod
        def from_samples(samples: list[float]) -> MLModelBenchmarker.Measurement:
            return MLModelBenchmarker.Measurement(
                statistics=MLModelBenchmarker.Statistics.from_values(values=samples), samples=samples
            )

    @dataclass
    class OperationExecutionInfo:
        spec: Any
        path: Any
        compute_device_usage: Any
        measurement: MLModelBenchmarker.Measurement

    def __init__(self, model: MLModel, device: Device | None = None) -> None:
        self.model = model
        self.model_spec = model.get_spec()
        self.device = device
        self._loaded = False
        self._first = True

    @property
    def compute_units(self) -> ComputeUnit:
        return self.model.compute_unit

    def _check_device(self) -> None:
        if self.device is not None and _current_state(self.device.udid) != DeviceState.CONNECTED:
            raise _DeviceCtlError(f"Device {self.device.udid} is not connected", error_code=1)

    async def benchmark_load(self, iterations: int = 1) -> MLModelBenchmarker.Measurement:
        if iterations < 1:
            raise ValueError(f"The number of iterations must be at least 1. Received: {iterations}")
        self._check_device()
        if WORLD.load_error:
            raise ValueError(WORLD.load_error)
        base = 20.0 + 5.0 * self.model.latency_ms()
        self._loaded = True
        return self.Measurement.from_samples([base * (1 + WORLD.rng.gauss(0, 0.05)) for _ in range(iterations)])

    async def benchmark_predict(
        self, inputs: dict[str, Any] | None = None, iterations: int = 1, warmup: bool = False
    ) -> MLModelBenchmarker.Measurement:
        if iterations < 1:
            raise ValueError(f"The number of iterations must be at least 1. Received: {iterations}")
        if not self._loaded:
            await self.benchmark_load()
        samples = []
        for i in range(iterations + (1 if warmup else 0)):
            self._check_device()
            WORLD.predict_calls += 1
            if WORLD.disconnect_after_predicts is not None and WORLD.predict_calls > WORLD.disconnect_after_predicts:
                if self.device is not None:
                    _disconnect(self.device.udid)
                raise _DeviceCtlError("The device was disconnected (devicectl: ERROR: The operation couldn't be completed)")
            value = self.model.latency_ms() * (1 + WORLD.rng.gauss(0, WORLD.noise))
            if self._first:
                value *= 3.0  # first prediction after load pays for specialisation
                self._first = False
            if i > 0 or not warmup:
                samples.append(value)
        return self.Measurement.from_samples(samples=samples)

    async def benchmark_operation_execution(
        self, inputs: dict[str, Any] | None = None, iterations: int = 1, warmup: bool = False
    ) -> list[MLModelBenchmarker.OperationExecutionInfo]:
        predict = await self.benchmark_predict(inputs=inputs, iterations=iterations, warmup=warmup)
        result = []
        for op in self.model._manifest["ops"]:
            spec = SimpleNamespace(type=op["type"], outputs=[SimpleNamespace(name=op["output"])])
            samples = [s * op["weight"] for s in predict.samples]
            result.append(
                self.OperationExecutionInfo(
                    spec=spec, path=f"main/{op['output']}", compute_device_usage=None,
                    measurement=self.Measurement.from_samples(samples),
                )
            )
        return sorted(result, key=lambda r: r.measurement.statistics.median, reverse=True)
