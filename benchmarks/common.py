"""Benchmark results: one record per measured ratio, written for people and machines.

Every target is a ratio against a baseline measured in the same run on the same
machine, so results compare across machines; absolute numbers go in ``notes``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


def device_description() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda, {torch.cuda.get_device_name(0)}"
    return f"cpu, {os.cpu_count()} cores ({platform.machine()})"


@dataclass
class Result:
    name: str  # e.g. "vl.caption.served_over_inprocess_p50"; prefix core./vl./diffusion./graph.
    value: float
    target: float
    better: str  # "lower" or "higher"
    unit: str  # "ratio", "events/s", "ms", "MB", ...
    baseline: str  # what value was divided by (or "absolute")
    notes: str = ""
    # Why the measured ratio does not count (e.g. two servers did not do the same work); "" = valid.
    void: str = ""
    device: str = field(default_factory=device_description)
    date: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))

    @property
    def met(self) -> bool:
        if self.void:
            return False
        return self.value <= self.target if self.better == "lower" else self.value >= self.target

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["met"] = self.met
        return d


def time_calls(fn: Callable[[], object], n: int, warmup: int = 2) -> list[float]:
    """Wall seconds of ``n`` calls of ``fn`` after ``warmup`` unmeasured ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    k = min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))
    return s[k]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a child server's ``--port``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def terminate(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM (the server drains), then SIGKILL if it has not exited within ``timeout`` seconds."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def served(service: str, model: Path | str, sets: dict[str, Any]) -> Iterator[str]:
    """``unfragile serve SERVICE`` in its own process, as deployed (clients do not share its GIL);
    yields its address once SERVING and stops it (SIGTERM, then a drain) on the way out."""
    from services.core.client import wait_for_serving
    from services.core.names import full_name

    port = free_port()
    cmd = [sys.executable, "-m", "services.cli", "serve", service, "--port", str(port), "--metrics-port", "-1",
           "--model", str(Path(model).resolve())]
    for k, v in (sets | {"log_level": "WARNING"}).items():
        cmd += ["--set", f"{k}={v}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    try:
        wait_for_serving(address, full_name(service), timeout=300)
        yield address
    finally:
        terminate(proc, 60)
