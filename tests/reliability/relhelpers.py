"""Helpers for the reliability and security suite (import as tests.reliability.relhelpers).

Everything here talks to REAL servers over loopback gRPC: in-process servers started with
``start_server(Settings(...), build_service(...))`` and, for drain and crash tests, child
processes started exactly as an operator would (``python -m services.cli serve ...``).
"""

from __future__ import annotations

import io
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from PIL import Image
from prometheus_client import REGISTRY

from services.core.client import wait_for_serving

ROOT = Path(__file__).resolve().parents[2]
SERVICE_NAMES = {
    "visionlanguage": "unfragile.visionlanguage.v1.VisionLanguage",
    "diffusion": "unfragile.diffusion.v1.Diffusion",
    "matchgraph": "unfragile.matchgraph.v1.MatchGraph",
}


# ----------------------------------------------------------------------------- images
def png(size: tuple[int, int] = (64, 64), color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def noisy_png(size: tuple[int, int] = (64, 64)) -> bytes:
    w, h = size
    img = Image.frombytes("RGB", size, bytes((i * 7919) % 251 for i in range(w * h * 3)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def png_with_header_size(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims ``width`` x ``height`` (CRC fixed): a pixel bomb by header."""
    data = bytearray(png((8, 8)))
    # IHDR is the first chunk: 8 signature + 4 length + 4 type, then width, height.
    data[16:24] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF
    data[29:33] = struct.pack(">I", crc)
    return bytes(data)


def zlib_bomb_png(side: int = 4000) -> bytes:
    """A real, valid PNG of side x side black pixels: a few KB that inflate to side^2 bytes."""
    buf = io.BytesIO()
    Image.new("L", (side, side), 0).save(buf, format="PNG", optimize=False, compress_level=9)
    return buf.getvalue()


def truncated_png() -> bytes:
    data = noisy_png()
    return data[: len(data) // 2]


# ----------------------------------------------------------------------------- rpc helpers
def code_of(fn: Callable[[], Any]) -> tuple[grpc.StatusCode, str, Any]:
    """Run a call; (code, details, result-or-error). Streams are drained into a list."""
    try:
        out = fn()
        if hasattr(out, "__iter__") and not isinstance(out, (bytes, str)) and not hasattr(out, "ListFields"):
            out = list(out)
        return grpc.StatusCode.OK, "", out
    except grpc.RpcError as err:
        return err.code(), err.details() or "", err


def retry_after_ms(err: grpc.RpcError) -> int | None:
    trailers = dict(err.trailing_metadata() or ())
    value = trailers.get("retry-after-ms")
    return int(value) if value is not None else None


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    """Current value of an in-process Prometheus sample (0 when it was never set)."""
    value = REGISTRY.get_sample_value(name, labels or {})
    return 0.0 if value is None else float(value)


def wait_until(pred: Callable[[], bool], timeout: float = 20.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def raw_method(ch: grpc.Channel, path: str, kind: str) -> Callable[..., Any]:
    """A multi-callable that sends and returns raw bytes (no (de)serialisation on the client)."""
    factory = {"uu": ch.unary_unary, "us": ch.unary_stream, "su": ch.stream_unary, "ss": ch.stream_stream}[kind]
    return factory(path, request_serializer=None, response_deserializer=None)


def rpc_kinds(service_descriptor: Any) -> dict[str, str]:
    """{method name: 'uu'|'us'|'su'|'ss'} from a protobuf ServiceDescriptor."""
    out = {}
    for m in service_descriptor.methods:
        out[m.name] = ("s" if m.client_streaming else "u") + ("s" if m.server_streaming else "u")
    return out


# ----------------------------------------------------------------------------- processes
_SERVING = re.compile(r"SERVING on [^\s:]+:(\d+)")


class ServerProcess:
    """``python -m services.cli serve <svc> --port 0 ...`` as a child process.

    The port is read from the server's own log line ("<svc> SERVING on host:port"), so
    there is no race on picking a free port; stderr is collected for log assertions.
    """

    def __init__(self, service: str, *sets: str, env: dict[str, str] | None = None) -> None:
        self.service = service
        cmd = [sys.executable, "-m", "services.cli", "serve", service, "--port", "0", "--metrics-port", "-1"]
        for s in sets:
            cmd += ["--set", s]
        # One intra-op thread per child: the suite runs beside other work on small CI machines,
        # where oversubscribed torch thread pools make every step orders of magnitude slower.
        child_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env=child_env, text=True, errors="replace")
        self.lines: list[str] = []
        self.port: int | None = None
        self._port_seen = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            m = _SERVING.search(line)
            if m and self.port is None:
                self.port = int(m.group(1))
                self._port_seen.set()
        self._port_seen.set()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_serving(self, timeout: float = 120.0) -> ServerProcess:
        if not self._port_seen.wait(timeout) or self.port is None:
            self.kill()
            raise RuntimeError(f"{self.service} did not start (exit {self.proc.poll()}):\n{self.log[-4000:]}")
        wait_for_serving(self.target, SERVICE_NAMES[self.service], timeout=timeout)
        return self

    def sigterm(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: no handler, no flush, no cleanup
        self.proc.wait(30)
        self._reader.join(5)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code
