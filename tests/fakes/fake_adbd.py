"""A fake adbd: the device side of the adb transport protocol, for the real adb server to reach.

The real adb server (adbutils' bundled binary, on a private port) connects to it through
`adb connect 127.0.0.1:PORT`. It speaks the wire protocol the server expects -- 24-byte
little-endian headers (command, arg0, arg1, length, byte-sum checksum, magic = ~command) and
CNXN / OPEN / OKAY / WRTE / CLSE with one outstanding WRTE per stream -- and answers the host's
CNXN directly (no AUTH, like an adbd with ro.adb.secure=0).

Services:
* `shell:CMD` (v1: merged output, then close) and `shell,v2[,...]:CMD` (stdout/stderr/exit packets)
* `sync:` with STAT, LIST, SEND (DATA.../DONE), RECV, QUIT -- so push/pull really move bytes

Commands run in a sandboxed emulation (`FakeDevice.run_shell`): a tiny interpreter for what the
runner sends -- getprop, cat (of sysfs files served from a table, or sandbox files), ls, mkdir,
rm, echo, dumpsys thermalservice, `taskset MASK CMD...`, `;` sequences with `$?` -- and the
benchmark binaries: a sandbox file starting with fake_perf_test.MAGIC really runs the pushed
.onnx with onnxruntime, one starting with fake_benchmark_model.MAGIC the pushed .tflite with
ai-edge-litert. /data/local/tmp is a temp directory on this host.

It can misbehave on demand (see `Misbehaviour`): unplug after N shell commands, hang, and the
benchmark failures of `fake_perf_test.PerfTestBehaviour` and
`fake_benchmark_model.BenchmarkModelBehaviour`.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shlex
import shutil
import socket
import stat
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import fake_benchmark_model
import fake_perf_test

A_SYNC = 0x434E5953
A_CNXN = 0x4E584E43
A_OPEN = 0x4E45504F
A_OKAY = 0x59414B4F
A_CLSE = 0x45534C43
A_WRTE = 0x45545257
A_AUTH = 0x48545541
A_VERSION = 0x01000001
MAX_PAYLOAD = 256 * 1024
HEADER = struct.Struct("<6I")
TMP = "/data/local/tmp"


def pack_message(command: int, arg0: int, arg1: int, data: bytes = b"") -> bytes:
    return HEADER.pack(command, arg0, arg1, len(data), sum(data) & 0xFFFFFFFF, command ^ 0xFFFFFFFF) + data


@dataclass
class Misbehaviour:
    unplug_after_commands: int | None = None  # the (N+1)-th shell command drops the connection
    hang: bool = False  # shell services accept but never answer
    perf: fake_perf_test.PerfTestBehaviour = field(default_factory=fake_perf_test.PerfTestBehaviour)
    bench: fake_benchmark_model.BenchmarkModelBehaviour = field(
        default_factory=fake_benchmark_model.BenchmarkModelBehaviour)
    thermal_status: int | None = 0  # None: dumpsys thermalservice prints no status line
    refuse_next: int = 0  # the next N service OPENs are refused (a transient failure)
    shell_v2: bool = True  # advertise shell_v2 in the CNXN banner


def default_props(model: str, serial: str) -> dict[str, str]:
    return {
        "ro.product.model": model,
        "ro.product.manufacturer": "Google",
        "ro.product.name": "fakephone",
        "ro.product.device": "fakephone",
        "ro.soc.manufacturer": "Google",
        "ro.soc.model": "Tensor G2",
        "ro.board.platform": "gs201",
        "ro.build.version.release": "14",
        "ro.build.version.sdk": "34",
        "ro.build.fingerprint": "google/fakephone/fakephone:14/UQ1A.240105.004/11206848:user/release-keys",
        "ro.product.cpu.abi": "arm64-v8a",
        "ro.serialno": serial,
    }


class FakeDevice:
    """State of the emulated phone: properties, sysfs table, sandbox directory, command log."""

    def __init__(
        self,
        root: Path,
        *,
        model: str = "Pixel 7",
        serial: str = "FAKE0001",
        ncpus: int = 8,
        big_cores: tuple[int, ...] = (6, 7),
        misbehaviour: Misbehaviour | None = None,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.props = default_props(model, serial)
        self.ncpus = ncpus
        self.misbehaviour = misbehaviour or Misbehaviour()
        self.sysfs: dict[str, str] = {"/sys/devices/system/cpu/possible": f"0-{ncpus - 1}\n"}
        for c in range(ncpus):
            base = f"/sys/devices/system/cpu/cpu{c}/cpufreq"
            self.sysfs[f"{base}/cpuinfo_max_freq"] = ("2850000" if c in big_cores else "1800000") + "\n"
            self.sysfs[f"{base}/scaling_governor"] = ("performance" if c in big_cores else "schedutil") + "\n"
        self.sysfs["/sys/class/thermal/thermal_zone0/temp"] = "41000\n"
        self.commands: list[list[str]] = []  # argv of every simple command run, in order
        self.taskset_masks: list[str] = []
        self.pushes: list[str] = []  # device paths written through sync SEND
        self.shell_count = 0
        self.lock = threading.Lock()

    # -- paths --------------------------------------------------------------------------------
    def host_path(self, path: str) -> Path | None:
        """Sandbox file for a device path under /data/local/tmp, else None."""
        norm = os.path.normpath(path)
        if norm == TMP:
            return self.root
        if norm.startswith(TMP + "/"):
            return self.root / norm[len(TMP) + 1 :]
        return None

    def _is_sys_dir(self, path: str) -> bool:
        prefix = path.rstrip("/") + "/"
        return any(p.startswith(prefix) for p in self.sysfs)

    def stat(self, path: str) -> tuple[int, int, int]:
        """(mode, size, mtime) as sync STAT v1 reports; zeros for a missing path."""
        norm = os.path.normpath(path)
        if norm in ("/", "/data", "/data/local", "/sys", "/proc") or self._is_sys_dir(norm):
            return stat.S_IFDIR | 0o755, 4096, int(time.time())
        if norm in self.sysfs:
            return stat.S_IFREG | 0o444, 4096, int(time.time())
        hp = self.host_path(norm)
        if hp is not None and hp.exists():
            st = hp.stat()
            return st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime)
        return 0, 0, 0

    def listdir(self, path: str) -> list[tuple[str, tuple[int, int, int]]] | None:
        norm = os.path.normpath(path)
        hp = self.host_path(norm)
        if hp is not None:
            if not hp.is_dir():
                return None
            names = sorted(p.name for p in hp.iterdir())
        elif self._is_sys_dir(norm):
            prefix = norm.rstrip("/") + "/"
            names = sorted({p[len(prefix) :].split("/")[0] for p in self.sysfs if p.startswith(prefix)})
        else:
            return None
        return [(n, self.stat(f"{norm}/{n}")) for n in [".", "..", *names]]

    def read(self, path: str) -> bytes | None:
        norm = os.path.normpath(path)
        if norm in self.sysfs:
            return self.sysfs[norm].encode()
        hp = self.host_path(norm)
        if hp is not None and hp.is_file():
            return hp.read_bytes()
        return None

    def write(self, path: str, data: bytes, mode: int) -> str | None:
        """Write a pushed file; returns an error message or None."""
        hp = self.host_path(path)
        if hp is None:
            return f"couldn't create file: Read-only file system ({path})"
        hp.parent.mkdir(parents=True, exist_ok=True)
        hp.write_bytes(data)
        self.pushes.append(path)
        hp.chmod(mode & 0o777)
        return None

    # -- shell --------------------------------------------------------------------------------
    def run_shell(self, cmdline: str, stop: threading.Event) -> tuple[int, bytes, bytes]:
        """Run a command line; returns (exit status, stdout, stderr)."""
        lexer = shlex.shlex(cmdline, posix=True, punctuation_chars=";&|<>")
        lexer.whitespace_split = True
        try:
            tokens = list(lexer)
        except ValueError as e:
            return 2, b"", f"/system/bin/sh: syntax error: {e}\n".encode()
        segments: list[list[str]] = [[]]
        for tok in tokens:
            if tok == ";":
                segments.append([])
            elif tok and set(tok) <= set("&|<>"):
                return 2, b"", f"fake sh: unsupported syntax {tok!r}\n".encode()
            else:
                segments[-1].append(tok)
        rc, out, err = 0, [], []
        for argv in segments:
            if not argv:
                continue
            argv = [a.replace("$?", str(rc)) for a in argv]
            rc, o, e = self.run_argv(argv, stop)
            out.append(o)
            err.append(e)
        return rc, "".join(out).encode(), "".join(err).encode()

    def run_argv(self, argv: list[str], stop: threading.Event) -> tuple[int, str, str]:
        with self.lock:
            self.commands.append(list(argv))
        cmd, args = argv[0], argv[1:]
        if cmd == "getprop":
            if args:
                return 0, self.props.get(args[0], "") + "\n", ""
            return 0, "".join(f"[{k}]: [{v}]\n" for k, v in sorted(self.props.items())), ""
        if cmd == "cat":
            out, err, rc = [], [], 0
            for p in args:
                data = self.read(p)
                if data is None:
                    err.append(f"cat: {p}: No such file or directory\n")
                    rc = 1
                else:
                    out.append(data.decode(errors="replace"))
            return rc, "".join(out), "".join(err)
        if cmd == "echo":
            return 0, " ".join(args) + "\n", ""
        if cmd == "ls":
            paths = [a for a in args if not a.startswith("-")] or [TMP]
            entries = self.listdir(paths[0])
            if entries is None:
                return 1, "", f"ls: {paths[0]}: No such file or directory\n"
            return 0, "".join(n + "\n" for n, _ in entries if n not in (".", "..")), ""
        if cmd == "mkdir":
            for p in (a for a in args if not a.startswith("-")):
                hp = self.host_path(p)
                if hp is None:
                    return 1, "", f"mkdir: '{p}': Read-only file system\n"
                hp.mkdir(parents="-p" in args, exist_ok="-p" in args)
            return 0, "", ""
        if cmd == "rm":
            rc = 0
            for p in (a for a in args if not a.startswith("-")):
                hp = self.host_path(p)
                if hp is None or hp == self.root:
                    return 1, "", f"rm: {p}: Permission denied\n"
                if hp.is_dir() and "-r" in args:
                    shutil.rmtree(hp)
                elif hp.exists():
                    hp.unlink()
                elif "-f" not in args:
                    rc = 1
            return rc, "", ""
        if cmd == "dumpsys":
            if args[:1] == ["thermalservice"]:
                status = self.misbehaviour.thermal_status
                line = f"Thermal Status: {status}\n" if status is not None else ""
                return 0, f"IsStatusOverride: false\nThermalEventListeners:\n{line}Cached temperatures:\n", ""
            return 0, f"Can't find service: {args[0] if args else ''}\n", ""
        if cmd == "taskset":
            if len(args) < 2:
                return 1, "", "usage: taskset [-ap] [mask] [PID | cmd [args...]]\n"
            try:
                mask = int(args[0], 16)
            except ValueError:
                return 1, "", f"taskset: bad mask '{args[0]}'\n"
            if mask & ((1 << self.ncpus) - 1) == 0:
                return 1, "", "taskset: sched_setaffinity: Invalid argument\n"
            self.taskset_masks.append(args[0])
            return self.run_argv(args[1:], stop)
        return self._exec(argv, stop)

    def _exec(self, argv: list[str], stop: threading.Event) -> tuple[int, str, str]:
        hp = self.host_path(argv[0]) if argv[0].startswith("/") else None
        if hp is None or not hp.is_file():
            return 127, "", f"/system/bin/sh: {argv[0]}: inaccessible or not found\n"
        if not os.access(hp, os.X_OK):
            return 126, "", f"/system/bin/sh: {argv[0]}: can't execute: Permission denied\n"
        with open(hp, "rb") as f:
            head = f.read(max(len(fake_perf_test.MAGIC), len(fake_benchmark_model.MAGIC)))
        if head.startswith(fake_perf_test.MAGIC):
            return fake_perf_test.run(argv, resolve=self.host_path, behaviour=self.misbehaviour.perf, stop=stop)
        if head.startswith(fake_benchmark_model.MAGIC):
            return fake_benchmark_model.run(argv, resolve=self.host_path, behaviour=self.misbehaviour.bench, stop=stop)
        return 126, "", f"/system/bin/sh: {argv[0]}: not executable: 64-bit ELF file\n"

    def install_perf_test(self, path: str = TMP + "/onnxruntime_perf_test") -> None:
        self._install(path, fake_perf_test.MAGIC + b"# emulated by tests/fakes/fake_perf_test.py\n")

    def install_benchmark_model(self, path: str = TMP + "/benchmark_model") -> None:
        self._install(path, fake_benchmark_model.MAGIC + b"# emulated by tests/fakes/fake_benchmark_model.py\n")

    def _install(self, path: str, content: bytes) -> None:
        hp = self.host_path(path)
        assert hp is not None
        hp.write_bytes(content)
        hp.chmod(0o755)


class _Stream:
    def __init__(self, conn: _Connection, local_id: int, remote_id: int) -> None:
        self.conn = conn
        self.local_id = local_id
        self.remote_id = remote_id
        self.inbox: queue.Queue[bytes | None] = queue.Queue()
        self.acked = threading.Event()
        self.closed = threading.Event()
        self._buf = b""

    def write(self, data: bytes) -> bool:
        for i in range(0, len(data), self.conn.max_payload):
            if self.closed.is_set():
                return False
            self.acked.clear()
            self.conn.send(A_WRTE, self.local_id, self.remote_id, data[i : i + self.conn.max_payload])
            # One outstanding WRTE per stream: wait for the host's OKAY.
            while not self.acked.wait(0.05):
                if self.closed.is_set() or self.conn.dead.is_set():
                    return False
        return True

    def read_exact(self, n: int) -> bytes | None:
        while len(self._buf) < n:
            chunk = self.inbox.get()
            if chunk is None:
                return None
            self._buf += chunk
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            self.conn.send(A_CLSE, self.local_id, self.remote_id)
        self.conn.streams.pop(self.local_id, None)


class _Connection:
    def __init__(self, adbd: FakeAdbd, sock: socket.socket) -> None:
        self.adbd = adbd
        self.sock = sock
        self.send_lock = threading.Lock()
        self.streams: dict[int, _Stream] = {}
        self.next_id = 1
        self.max_payload = MAX_PAYLOAD
        self.dead = threading.Event()

    def send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        try:
            with self.send_lock:
                self.sock.sendall(pack_message(command, arg0, arg1, data))
        except OSError:
            self.kill()

    def kill(self) -> None:
        self.dead.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        for s in list(self.streams.values()):
            s.closed.set()
            s.inbox.put(None)

    def _recv_exact(self, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    def serve(self) -> None:
        try:
            while not self.dead.is_set():
                header = self._recv_exact(HEADER.size)
                if header is None:
                    break
                command, arg0, arg1, length, check, magic = HEADER.unpack(header)
                data = self._recv_exact(length) if length else b""
                if data is None or magic != command ^ 0xFFFFFFFF:
                    break
                self._handle(command, arg0, arg1, data)
        finally:
            self.kill()

    def _handle(self, command: int, arg0: int, arg1: int, data: bytes) -> None:
        dev = self.adbd.device
        if command == A_CNXN:
            self.max_payload = min(MAX_PAYLOAD, arg1 or MAX_PAYLOAD)
            features = "shell_v2,cmd" if dev.misbehaviour.shell_v2 else "cmd"
            props = "".join(f"{k}={dev.props[k]};" for k in ("ro.product.name", "ro.product.model", "ro.product.device"))
            banner = f"device::{props}features={features}".encode()
            self.send(A_CNXN, A_VERSION, MAX_PAYLOAD, banner)
        elif command == A_OPEN:
            service = data.rstrip(b"\0").decode(errors="replace")
            with dev.lock:
                refuse = dev.misbehaviour.refuse_next > 0
                dev.misbehaviour.refuse_next -= refuse
            if refuse:
                self.send(A_CLSE, 0, arg0)
                return
            local_id = self.next_id
            self.next_id += 1
            if service.startswith("shell") and ":" in service:
                with dev.lock:
                    dev.shell_count += 1
                    count = dev.shell_count
                limit = dev.misbehaviour.unplug_after_commands
                if limit is not None and count > limit:
                    self.adbd.unplug()
                    return
                opts, cmd = service.split(":", 1)
                stream = self._open_stream(local_id, arg0)
                target = self._shell_service
                args = (stream, cmd, "v2" in opts.split(","))
            elif service == "sync:":
                stream = self._open_stream(local_id, arg0)
                target, args = self._sync_service, (stream,)
            else:
                self.send(A_CLSE, 0, arg0)
                return
            threading.Thread(target=self._run_service, args=(target, args), daemon=True).start()
        elif command == A_OKAY:
            stream = self.streams.get(arg1)
            if stream is not None:
                stream.acked.set()
        elif command == A_WRTE:
            stream = self.streams.get(arg1)
            if stream is not None:
                stream.inbox.put(data)
                self.send(A_OKAY, stream.local_id, stream.remote_id)
        elif command == A_CLSE:
            stream = self.streams.pop(arg1, None)
            if stream is not None:
                stream.closed.set()
                stream.inbox.put(None)

    def _open_stream(self, local_id: int, remote_id: int) -> _Stream:
        stream = _Stream(self, local_id, remote_id)
        self.streams[local_id] = stream
        self.send(A_OKAY, local_id, remote_id)
        return stream

    def _run_service(self, target, args) -> None:
        stream = args[0]
        try:
            target(*args)
        finally:
            stream.close()

    def _shell_service(self, stream: _Stream, cmd: str, v2: bool) -> None:
        if self.adbd.device.misbehaviour.hang:
            self.adbd.stopped.wait()
            return
        rc, out, err = self.adbd.device.run_shell(cmd, self.adbd.stopped)
        if v2:
            packets = b""
            if out:
                packets += bytes([1]) + struct.pack("<I", len(out)) + out
            if err:
                packets += bytes([2]) + struct.pack("<I", len(err)) + err
            packets += bytes([3]) + struct.pack("<I", 1) + bytes([rc & 0xFF])
            stream.write(packets)
        else:
            stream.write(out + err)

    def _sync_service(self, stream: _Stream) -> None:
        dev = self.adbd.device
        while True:
            req = stream.read_exact(8)
            if req is None:
                return
            ident, length = req[:4], struct.unpack("<I", req[4:])[0]
            if ident == b"QUIT":
                return
            path_b = stream.read_exact(length)
            if path_b is None:
                return
            path = path_b.decode(errors="replace")
            if ident == b"STAT":
                stream.write(b"STAT" + struct.pack("<III", *dev.stat(path)))
            elif ident == b"LIST":
                out = b""
                for name, (mode, size, mtime) in dev.listdir(path) or []:
                    nb = name.encode()
                    out += b"DENT" + struct.pack("<IIII", mode, size, mtime, len(nb)) + nb
                stream.write(out + b"DONE" + struct.pack("<IIII", 0, 0, 0, 0))
            elif ident == b"SEND":
                target, _, mode_s = path.rpartition(",")
                chunks = []
                while True:
                    head = stream.read_exact(8)
                    if head is None:
                        return  # host vanished mid-push: nothing is written
                    kind, n = head[:4], struct.unpack("<I", head[4:])[0]
                    if kind == b"DATA":
                        chunk = stream.read_exact(n)
                        if chunk is None:
                            return
                        chunks.append(chunk)
                    elif kind == b"DONE":
                        break
                    else:
                        self._sync_fail(stream, f"bad SEND subcommand {kind!r}")
                        return
                error = dev.write(target, b"".join(chunks), int(mode_s or "420"))
                if error:
                    self._sync_fail(stream, error)
                else:
                    stream.write(b"OKAY" + struct.pack("<I", 0))
            elif ident == b"RECV":
                data = dev.read(path)
                if data is None:
                    self._sync_fail(stream, f"remote object '{path}' does not exist")
                    continue
                out = b""
                for i in range(0, len(data), 64 * 1024):
                    chunk = data[i : i + 64 * 1024]
                    out += b"DATA" + struct.pack("<I", len(chunk)) + chunk
                stream.write(out + b"DONE" + struct.pack("<I", 0))
            else:
                self._sync_fail(stream, f"unknown sync request {ident!r}")
                return

    @staticmethod
    def _sync_fail(stream: _Stream, message: str) -> None:
        msg = message.encode()
        stream.write(b"FAIL" + struct.pack("<I", len(msg)) + msg)


class FakeAdbd:
    """Listens on 127.0.0.1:<free port>; `serial` is what `adb connect` registers."""

    def __init__(self, device: FakeDevice, host: str = "127.0.0.1") -> None:
        self.device = device
        self.host = host
        self.stopped = threading.Event()
        self._listener: socket.socket | None = None
        self._connections: list[_Connection] = []
        self.port = 0

    @property
    def serial(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> FakeAdbd:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        sock.listen(4)
        self.port = sock.getsockname()[1]
        self._listener = sock
        threading.Thread(target=self._accept_loop, daemon=True).start()
        return self

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self.stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.stopped.is_set():  # unplugged while accept() was waiting
                client.close()
                return
            # Small request/response messages: without NODELAY, Nagle + delayed ACK add ~40 ms each.
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self, client)
            self._connections.append(conn)
            threading.Thread(target=conn.serve, daemon=True).start()

    def unplug(self) -> None:
        """The cable is pulled: stop listening and drop every connection."""
        self.stopped.set()
        if self._listener is not None:
            # shutdown() wakes a thread blocked in accept(); close() alone would not on Linux.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                self._listener.close()
        for conn in self._connections:
            conn.kill()

    stop = unplug


# -- the real adb server, on a private port ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AdbServer:
    """The real adb server (adbutils' bundled binary) on a free private port, never 5037.

    Runs in the foreground (`nodaemon server`) as our own child so it can always be stopped;
    `stop()` sends `adb -P PORT kill-server` and then ends the child by its pid if needed.
    """

    def __init__(self, workdir: Path) -> None:
        import adbutils

        self.adb = adbutils.adb_path()
        self.port = free_port()
        home = Path(workdir)
        (home / ".android").mkdir(parents=True, exist_ok=True)
        # A private HOME keeps the server's adbkey and logs away from the user's ~/.android.
        self.env = {
            **os.environ,
            "HOME": str(home),
            "ANDROID_USER_HOME": str(home / ".android"),
            "ANDROID_ADB_SERVER_PORT": str(self.port),
            "ADB_MDNS": "0",
            "ADB_LIBUSB": "0",
            "TMPDIR": str(home),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = home / "adb-server.log"

    def start(self, timeout: float = 15.0) -> AdbServer:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [self.adb, "-P", str(self.port), "nodaemon", "server"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"adb server did not start on port {self.port}: {self.log.read_text()[-500:]}")

    def client(self, timeout: float = 10.0):
        import adbutils

        return adbutils.AdbClient(host="127.0.0.1", port=self.port, socket_timeout=timeout)

    def connect(self, serial: str, timeout: float = 10.0) -> None:
        """`adb connect` and wait until the device reaches state 'device'."""
        client = self.client()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            client.connect(serial, timeout=timeout)
            for _ in range(40):
                states = {d.serial: d.state for d in client.list()}
                if states.get(serial) == "device":
                    return
                time.sleep(0.05)
        raise RuntimeError(f"{serial} never came online: {states}")

    def disconnect(self, serial: str) -> None:
        with contextlib.suppress(Exception):
            self.client().disconnect(serial)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            subprocess.run(
                [self.adb, "-P", str(self.port), "kill-server"], env=self.env, timeout=10, capture_output=True
            )
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def __enter__(self) -> AdbServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
