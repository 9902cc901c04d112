"""Start and stop the servers under comparison, each in its own process group.

unfragile runs as deployed (``unfragile serve ...`` from the project's environment);
the peers run from their own environments (benchmarks/peers/venvs.py). Every server
logs to ``.peers/logs/<name>.log``; a server that dies while starting fails the
benchmark with the tail of its log.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.common import free_port
from benchmarks.peers import venvs

LOGS = venvs.PEERS_DIR / "logs"
START_TIMEOUT_S = 300.0


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    stop_signal: int = signal.SIGTERM
    scratch: Path | None = None  # removed after the server stops

    def alive_or_raise(self) -> None:
        if self.proc.poll() is not None:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode} while starting; {self.log}:\n{tail}")

    def pause(self) -> None:
        """Freeze the whole process group (SIGSTOP): it uses no CPU until ``resume``."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self, timeout: float = 40.0) -> None:
        if self.proc.poll() is None:
            self.resume()
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever it started (LitServe workers, tritonserver, backend stubs) goes too
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


@contextlib.contextmanager
def alone(groups: dict[str, list[Server]], name: str) -> Iterator[None]:
    """Freeze every other side's servers while side ``name`` is measured.

    An idle server is not always idle: LitServe's API and worker processes poll their
    queues (about a quarter of a core between them on 2 cores), which would land on
    whichever server is being measured. Frozen servers take no CPU at all.
    """
    others = [srv for side, servers in groups.items() if side != name for srv in servers]
    for srv in others:
        srv.pause()
    try:
        yield
    finally:
        for srv in others:
            srv.resume()


def _spawn(name: str, cmd: list[str], env: dict[str, str] | None = None, stop_signal: int = signal.SIGTERM) -> Server:
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=venvs.ROOT, env=env,
                                start_new_session=True)
    return Server(name, proc, log, stop_signal)


def start_unfragile(name: str, service: str, model: Path, settings: dict[str, object]) -> tuple[Server, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "services.cli", "serve", service, "--port", str(port), "--metrics-port", "-1",
           "--model", str(model.resolve())]
    for k, v in settings.items():
        cmd += ["--set", f"{k}={v}"]
    return _spawn(name, cmd), f"127.0.0.1:{port}"


def start_unfragile_openai(name: str, vl_address: str) -> tuple[Server, str]:
    """unfragile's OpenAI-compatible frontend (``unfragile serve openai``) in front of ``vl_address`` only;
    returns the server and its base URL (``.../v1`` is the API, ``/readyz`` its readiness)."""
    port = free_port()
    cmd = [sys.executable, "-m", "services.cli", "serve", "openai", "--port", str(port), "--metrics-port", "-1",
           "--set", f"visionlanguage_target={vl_address}", "--set", "diffusion_target=", "--set", "log_level=WARNING"]
    return _spawn(name, cmd), f"http://127.0.0.1:{port}"


def start_litserve(name: str, kind: str, model: Path, threads: int, max_batch_size: int, timeout_ms: float,
                   check_model: Path | None = None) -> tuple[Server, int]:
    port = free_port()
    cmd = [str(venvs.python("litserve")), "-m", "benchmarks.peers.litserve_server", kind, "--model",
           str(model.resolve()), "--port", str(port), "--threads", str(threads), "--max-batch-size",
           str(max_batch_size), "--batch-timeout-ms", str(timeout_ms)]
    if check_model is not None:
        cmd += ["--check-model", str(check_model.resolve())]
    return _spawn(name, cmd, venvs.runtime_env("litserve")), port


def start_pytriton(name: str, kind: str, model: Path, threads: int, max_batch_size: int, delay_us: int,
                   check_model: Path | None = None) -> tuple[Server, int]:
    http, grpc, metrics = free_port(), free_port(), free_port()
    cmd = [str(venvs.python("pytriton")), "-m", "benchmarks.peers.pytriton_server", kind, "--model",
           str(model.resolve()), "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
           "--threads", str(threads), "--max-batch-size", str(max_batch_size), "--queue-delay-us", str(delay_us)]
    if check_model is not None:
        cmd += ["--check-model", str(check_model.resolve())]
    workspace = venvs.PEERS_DIR / "triton-workspaces" / name  # Triton's model store and copied binaries
    shutil.rmtree(workspace, ignore_errors=True)
    cmd += ["--workspace", str(workspace)]
    # PyTriton stops Triton and its backend stubs cleanly on SIGINT.
    server = _spawn(name, cmd, venvs.runtime_env("pytriton"), signal.SIGINT)
    server.scratch = workspace
    return server, http


def wait_http(server: Server, url: str, deadline: float) -> None:
    while True:
        server.alive_or_raise()
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{server.name} was not ready at {url} within {START_TIMEOUT_S:.0f} s (log {server.log})")
        time.sleep(0.5)


def wait_grpc(server: Server, address: str, service: str, deadline: float) -> None:
    from services.core.client import wait_for_serving

    while True:
        server.alive_or_raise()
        try:
            wait_for_serving(address, service, timeout=2)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{server.name} was not SERVING at {address} (log {server.log})") from None
