"""The fake adbd is faithful enough for the real adb command-line client, not just for adbutils."""

from __future__ import annotations

import struct
import subprocess

from fake_adbd import A_CNXN, A_WRTE, HEADER, pack_message


def test_message_framing():
    msg = pack_message(A_WRTE, 7, 9, b"\x01\x02\xff")
    command, arg0, arg1, length, check, magic = HEADER.unpack(msg[:24])
    assert (command, arg0, arg1, length) == (A_WRTE, 7, 9, 3)
    assert check == 0x102 and magic == A_WRTE ^ 0xFFFFFFFF
    assert msg[24:] == b"\x01\x02\xff"
    assert struct.pack("<I", A_CNXN) == b"CNXN"


def test_real_adb_cli_shell_push_pull(adb_server, make_phone, models, tmp_path):
    adbd = make_phone()

    def adb(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [adb_server.adb, "-P", str(adb_server.port), "-s", adbd.serial, *args],
            env=adb_server.env, capture_output=True, text=True, timeout=30,
        )

    assert adb("get-state").stdout.strip() == "device"
    assert adb("shell", "getprop", "ro.product.model").stdout == "Pixel 7\n"
    r = adb("shell", "cat", "/nonexistent")
    assert r.returncode == 1 and "No such file" in r.stderr  # shell v2: stderr and exit status apart
    assert adb("push", str(models["small"]), "/data/local/tmp/m.onnx").returncode == 0
    assert (adbd.device.root / "m.onnx").read_bytes() == models["small"].read_bytes()
    assert adb("pull", "/data/local/tmp/m.onnx", str(tmp_path / "back.onnx")).returncode == 0
    assert (tmp_path / "back.onnx").read_bytes() == models["small"].read_bytes()
    out = adb("shell", "/data/local/tmp/onnxruntime_perf_test -m times -r 5 -I -s /data/local/tmp/m.onnx").stdout
    assert "P50 Latency:" in out and "Total inference requests: 5" in out
