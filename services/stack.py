"""Run the whole stack on one machine: each service its own process (``unfragile up``).

Processes, not threads: a crash or a SIGTERM drain in one service must not take the
others down, and each gets its own Python (torch, diffusers) memory and GIL.

With ``graph_readers`` > 0 the MatchGraph runs scaled out: ``matchgraph`` is the writer and
``matchgraph-reader-1..N`` are readers of the same database (``graph_db_url``, normally
PostgreSQL); the gateway sends reads to the readers (round robin) and the recorded searches
to the writer.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from services.core.client import wait_for_serving
from services.core.names import GRPC_SERVICES, full_name
from services.core.settings import ListenerSettings

# The HTTP gateway in front of MatchGraph (search pages, JSON); not a gRPC service.
GATEWAY = "gateway"
# The OpenAI-compatible HTTP API in front of VisionLanguage and Diffusion; not a gRPC service either.
OPENAI = "openai"
SERVICES = GRPC_SERVICES
READER = "matchgraph-reader-"  # + 1..N: the MatchGraph readers of a scaled-out stack
READER_PORT_STEP = 10  # default ports of reader i: the MatchGraph's + 10 * i (50063, 9113, ...)


def settings_class(name: str) -> type[ListenerSettings]:
    """The typed Settings of service ``name`` (each service declares its defaults there)."""
    module = importlib.import_module(f"services.{name}.settings")
    return cast("type[ListenerSettings]", module.Settings)


def default_ports(name: str) -> tuple[int, int]:
    """(port, metrics port) defaults of ``name``, read from its Settings (readers: offset from the MatchGraph's)."""
    if name.startswith(READER):
        port, mport = default_ports("matchgraph")
        step = READER_PORT_STEP * int(name.removeprefix(READER))
        return port + step, mport + step
    fields = settings_class(name).model_fields
    return int(fields["port"].default), int(fields["metrics_port"].default)


@dataclass
class StackProcess:
    name: str
    target: str
    metrics_url: str
    proc: subprocess.Popen[bytes]


@dataclass
class Stack:
    host: str = "127.0.0.1"
    models_dir: Path = Path(".models")
    data_dir: Path = Path("var")
    ports: dict[str, tuple[int, int]] = field(
        default_factory=lambda: {name: default_ports(name) for name in (*SERVICES, GATEWAY, OPENAI)})
    procs: list[StackProcess] = field(default_factory=list)
    graph_db_url: str = ""  # "" = an SQLite file in data_dir
    graph_readers: int = 0  # > 0: the MatchGraph is one writer plus this many readers

    @property
    def readers(self) -> list[str]:
        return [f"{READER}{i}" for i in range(1, self.graph_readers + 1)]

    def _expand(self, names: list[str]) -> list[str]:
        """``names`` with the readers after the MatchGraph (its writer) when the stack is scaled out."""
        out = []
        for name in names:
            out.append(name)
            if name == "matchgraph":
                out += self.readers
        for name in out:
            self.ports.setdefault(name, default_ports(name))
        return out

    def _graph_command(self, name: str) -> list[str]:
        db_url = self.graph_db_url or f"sqlite:///{self.data_dir / 'matchgraph.db'}"
        cmd = ["--set", f"db_url={db_url}"]
        # the model services this stack has ports for: Search embeds with VisionLanguage, probes use both
        used = ("visionlanguage",) if name.startswith(READER) else ("visionlanguage", "diffusion")
        cmd += [arg for svc in used if svc in self.ports for arg in ("--set", f"{svc}_target={self.target(svc)}")]
        if name.startswith(READER):
            return [*cmd, "--set", "role=reader", "--set", f"writer_address={self.target('matchgraph')}"]
        return [*cmd, "--set", "role=writer"] if self.graph_readers else cmd

    def graph_read_target(self) -> str:
        """Where the gateway sends reads: the MatchGraph, or every reader (round robin)."""
        if not self.graph_readers:
            return self.target("matchgraph")
        return "ipv4:" + ",".join(self.target(r) for r in self.readers)

    @staticmethod
    def free_ports(names: list[str] | None = None) -> dict[str, tuple[int, int]]:
        """Free (grpc, metrics) ports per service, for tests and side-by-side stacks."""
        import socket

        socks, ports = [], {}
        for name in names or [*SERVICES, GATEWAY, OPENAI]:
            pair = []
            for _ in range(2):
                s = socket.socket()
                s.bind(("127.0.0.1", 0))
                socks.append(s)
                pair.append(s.getsockname()[1])
            ports[name] = (pair[0], pair[1])
        for s in socks:
            s.close()
        return ports

    def target(self, name: str) -> str:
        return f"{self.host}:{self.ports[name][0]}"

    def metrics_url(self, name: str) -> str:
        """Where Prometheus scrapes ``name`` (the gateway without a metrics port: its own HTTP port)."""
        port, mport = self.ports[name]
        return f"http://{self.host}:{mport if mport > 0 else port}/metrics"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.host}:{self.ports[GATEWAY][0]}"

    @property
    def openai_url(self) -> str:
        """Base URL of the OpenAI-compatible API (clients add /v1)."""
        return f"http://{self.host}:{self.ports[OPENAI][0]}"

    def _command(self, name: str) -> list[str]:
        port, mport = self.ports[name]
        service = "matchgraph" if name.startswith(READER) else name
        cmd = [sys.executable, "-m", "services.cli", "serve", service, "--host", self.host,
               "--port", str(port), "--metrics-port", str(mport)]
        if name in ("visionlanguage", "diffusion"):
            cmd += ["--set", f"models_dir={self.models_dir}"]
        if name == "visionlanguage":  # the quality judge of the probes: the tiny CLIP built beside Kosmos-2
            cmd += ["--set", "judge_model=tiny"]
        if name == "diffusion":
            cmd += ["--set", f"adapters_dir={self.data_dir / 'adapters'}"]
        if service == "matchgraph":
            cmd += self._graph_command(name)
        if name == GATEWAY:
            cmd += ["--set", f"matchgraph_target={self.graph_read_target()}"]
            if self.graph_readers:
                cmd += ["--set", f"matchgraph_writer_target={self.target('matchgraph')}"]
        if name == OPENAI:
            cmd += [arg for svc in ("visionlanguage", "diffusion")
                    for arg in ("--set", f"{svc}_target={self.target(svc) if svc in self.ports else ''}")]
        return cmd

    def start(self, names: list[str] | None = None, timeout: float = 300.0) -> None:
        """Start each service as a child process and wait until all report SERVING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for name in self._expand(names or [*SERVICES, GATEWAY, OPENAI]):
            proc = subprocess.Popen(self._command(name), env=os.environ.copy())
            self.procs.append(StackProcess(name, self.target(name), self.metrics_url(name), proc))
        deadline = time.monotonic() + timeout
        for p in self.procs:
            if p.name == GATEWAY:
                from services.gateway.server import wait_until_ready

                wait_until_ready(self.gateway_url, timeout=max(1.0, deadline - time.monotonic()))
                continue
            if p.name == OPENAI:
                from services.openai.server import wait_until_ready as openai_ready

                openai_ready(self.openai_url, timeout=max(1.0, deadline - time.monotonic()))
                continue
            while True:  # wait for SERVING, but notice at once if the process died
                if p.proc.poll() is not None:
                    raise RuntimeError(f"{p.name} exited with code {p.proc.returncode} before serving; "
                                       f"its log is above")
                try:
                    service = "matchgraph" if p.name.startswith(READER) else p.name
                    wait_for_serving(p.target, full_name(service), timeout=1.0)
                    break
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise

    def stop(self, timeout: float = 30.0) -> dict[str, int]:
        """SIGTERM every child (they drain), wait, return their exit codes."""
        for p in self.procs:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        codes = {}
        for p in self.procs:
            try:
                codes[p.name] = p.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                codes[p.name] = p.proc.wait()
        self.procs.clear()
        return codes
