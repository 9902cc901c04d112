"""A model server in its own process (``unfragile serve``) and its peak memory, read from outside it.

Peak memory per server:

- CUDA: the process's own figure from ``nvidia-smi --query-compute-apps=pid,used_memory``
  (sampled every 0.25 s from before loading until stop); where nvidia-smi does not list the
  process (a container's PID namespace hides host PIDs), the device-wide used memory above
  what it was before the server started (``torch.cuda.mem_get_info``; one server runs at a time).
- CPU: the kernel's high-water mark of the process's resident set (``VmHWM``).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _nvidia_smi_used_mb(pid: int) -> float | None:
    """MiB nvidia-smi reports for ``pid``, or None when it does not list it (or is missing)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid) and parts[1].isdigit():
            return float(parts[1])
    return None


def _device_used_mb(index: int) -> float:
    import torch

    free, total = torch.cuda.mem_get_info(index)
    return (total - free) / 2**20


def _vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class PeakMemory:
    """Samples one process's memory from outside it; ``peak()`` says how much and how it was measured."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.index = int(device.partition(":")[2] or 0) if self.cuda else 0
        self.baseline = _device_used_mb(self.index) if self.cuda else 0.0
        self.per_pid = 0.0
        self.device_delta = 0.0
        self.pid = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, pid: int) -> None:
        self.pid = pid
        if self.cuda:
            self._thread = threading.Thread(target=self._sample, name="peak-memory", daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        while True:
            mine = _nvidia_smi_used_mb(self.pid)
            if mine is not None:
                self.per_pid = max(self.per_pid, mine)
            self.device_delta = max(self.device_delta, _device_used_mb(self.index) - self.baseline)
            if self._stop.wait(0.25):
                return

    def peak(self) -> tuple[float, str]:
        """(MiB, method); call while the process is still alive."""
        if not self.cuda:
            return _vm_hwm_mb(self.pid) or 0.0, "peak RSS (VmHWM) of the server process"
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self.per_pid > 0:
            return self.per_pid, "nvidia-smi used_memory of the server process (max of 0.25 s samples)"
        return self.device_delta, ("device used memory above the level before the server started "
                                   "(torch.cuda.mem_get_info, max of 0.25 s samples; nvidia-smi did not list the pid)")


class Server:
    """``unfragile serve SERVICE --model DIR`` in its own process, on a free port, until ``stop``.

    Started as ``python -m services.cli serve`` (what the ``unfragile`` command runs) with this
    interpreter, so it serves this checkout's code whatever the installed entry point points at.
    """

    def __init__(self, service: str, model: Path, device: str, dtype: str, sets: dict[str, Any], log: Path,
                 start_timeout_s: float = 600.0) -> None:
        self.service, self.model, self.device, self.dtype = service, model, device, dtype
        self.sets, self.log, self.timeout = sets, log, start_timeout_s
        self.address = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.memory = PeakMemory(device)
        self.peak_mb, self.peak_method = 0.0, ""

    def command(self, port: int) -> list[str]:
        cmd = [sys.executable, "-m", "services.cli", "serve", self.service, "--port", str(port),
               "--metrics-port", "-1", "--model", str(Path(self.model).resolve()), "--device", self.device,
               "--dtype", self.dtype]
        for key, value in self.sets.items():
            cmd += ["--set", f"{key}={value}"]
        return cmd

    def __enter__(self) -> Server:
        port = free_port()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(self.command(port), stdout=log, stderr=subprocess.STDOUT)
        self.memory.watch(self.proc.pid)
        self.address = f"127.0.0.1:{port}"
        problem = self._wait_serving()
        if problem:
            self.stop()
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.service} server did not start: {problem}\n--- {self.log} (tail) ---\n{tail}")
        return self

    def _wait_serving(self) -> str:
        """'' once the health service says SERVING; else why not (the process exited, or the time ran out)."""
        from services.core.client import health_status
        from services.core.names import full_name

        assert self.proc is not None
        deadline = time.monotonic() + self.timeout
        status = "UNREACHABLE"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"the process exited with code {self.proc.returncode}"
            status = health_status(self.address, full_name(self.service))
            if status == "SERVING":
                return ""
            time.sleep(0.2)
        return f"not SERVING within {self.timeout:.0f} s (last status {status})"

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        """Record the peak memory, then SIGTERM (drain) and wait; kill if it does not exit."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.peak_mb, self.peak_method = self.memory.peak()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
