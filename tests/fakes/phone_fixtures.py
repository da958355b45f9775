"""Fixtures for fake phones behind the real adb server, shared by the runner and the farm tests
(import them into a test module or conftest: `from phone_fixtures import adb_server, make_phone`)."""

from __future__ import annotations

import pytest
from fake_adbd import AdbServer, FakeAdbd, FakeDevice, Misbehaviour


@pytest.fixture(scope="module")
def adb_server(tmp_path_factory):
    """The real adb server on a private free port; killed (adb -P PORT kill-server) afterwards."""
    server = AdbServer(tmp_path_factory.mktemp("adb")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_phone(adb_server, tmp_path):
    """Factory: a fake phone behind a fake adbd, connected to the adb server as 127.0.0.1:PORT."""
    started: list[FakeAdbd] = []

    def make(misbehaviour: Misbehaviour | None = None, *, install_perf_test: bool = True,
             install_benchmark_model: bool = False, **device_kw) -> FakeAdbd:
        device = FakeDevice(tmp_path / f"device{len(started)}", misbehaviour=misbehaviour, **device_kw)
        if install_perf_test:
            device.install_perf_test()
        if install_benchmark_model:
            device.install_benchmark_model()
        adbd = FakeAdbd(device).start()
        started.append(adbd)
        adb_server.connect(adbd.serial)
        return adbd

    yield make
    for adbd in started:
        adbd.stop()
        adb_server.disconnect(adbd.serial)
