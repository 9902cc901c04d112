"""Run the whole stack on one machine: each service its own process, supervised (``unfragile up``).

Processes, not threads: a crash or a SIGTERM drain in one service must not take the
others down, and each gets its own Python (torch, diffusers) memory and GIL. A
``Supervisor`` (services/supervisor.py) restarts a child that dies, with exponential
backoff and a restart budget, and leaves one that keeps crashing down while the rest
serve; only ``stop`` (Ctrl-C / SIGTERM of ``unfragile up``) stops them all.

What runs is ``MEMBERS``: one entry per kind of process (the command line ``unfragile
serve <service>`` gets in this stack, and how to tell it serves: gRPC health, or an HTTP
readiness path for the gateway and the OpenAI-compatible API); adding a service to the
stack is one entry there. With ``graph_readers`` > 0 the MatchGraph runs scaled out:
``matchgraph`` is a writer, ``matchgraph-writer-2..N`` more writer-capable processes
(``graph_writers``, PostgreSQL: one leads, the others stand by), ``matchgraph-reader-1..N``
readers of the same database (``graph_db_url``); the gateway reads from the readers
(round robin over the healthy ones) and sends the recorded searches to the leader.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from services.core.names import GRPC_SERVICES, full_name
from services.core.settings import ListenerSettings
from services.supervisor import Child, RestartPolicy, Supervisor

# The HTTP gateway in front of MatchGraph (search pages, JSON); not a gRPC service.
GATEWAY = "gateway"
# The OpenAI-compatible HTTP API in front of VisionLanguage and Diffusion; not a gRPC service either.
OPENAI = "openai"
SERVICES = GRPC_SERVICES
READER = "matchgraph-reader-"  # + 1..N: the MatchGraph readers of a scaled-out stack
WRITER = "matchgraph-writer-"  # + 2..N: more writer-capable MatchGraphs (standbys of the leader)
READER_PORT_STEP = 10  # default ports of reader i: the MatchGraph's + 10 * i (50063, 9113, ...)
WRITER_PORT_STEP = 100  # default ports of writer i: the MatchGraph's + 100 * (i - 1) (50153, 9203, ...)


@dataclass(frozen=True)
class Member:
    """One kind of process in the stack: ``unfragile serve <service>`` with ``args(stack, name)``."""

    service: str
    args: Callable[[Stack, str], list[str]] = lambda _stack, _name: []
    http_ready: str = ""  # an HTTP server: the path answering 200 once it serves ("" = gRPC health SERVING)


def _model_args(stack: Stack, name: str) -> list[str]:
    out = ["--set", f"models_dir={stack.models_dir}"]
    if name == "visionlanguage":  # the quality judge of the probes: the tiny CLIP built beside Kosmos-2
        out += ["--set", "judge_model=tiny"]
    return out + (["--set", f"adapters_dir={stack.data_dir / 'adapters'}"] if name == "diffusion" else [])


MEMBERS: dict[str, Member] = {
    "visionlanguage": Member("visionlanguage", _model_args),
    "diffusion": Member("diffusion", _model_args),
    "matchgraph": Member("matchgraph", lambda stack, name: stack.graph_args(name)),
    GATEWAY: Member(GATEWAY, lambda stack, _name: stack.gateway_args(), http_ready="/readyz"),
    OPENAI: Member(OPENAI, lambda stack, _name: stack.openai_args(), http_ready="/readyz"),
}


def member(name: str) -> Member:
    """The member a process name belongs to (``matchgraph-reader-2`` -> the MatchGraph's)."""
    return MEMBERS["matchgraph"] if name.startswith((READER, WRITER)) else MEMBERS[name]


def settings_class(name: str) -> type[ListenerSettings]:
    """The typed Settings of service ``name`` (each service declares its defaults there)."""
    module = importlib.import_module(f"services.{name}.settings")
    return cast("type[ListenerSettings]", module.Settings)


def default_ports(name: str) -> tuple[int, int]:
    """(port, metrics port) defaults of ``name``, read from its Settings (readers, writers: offset from the
    MatchGraph's)."""
    for prefix, step, first in ((READER, READER_PORT_STEP, 0), (WRITER, WRITER_PORT_STEP, 1)):
        if name.startswith(prefix):
            port, mport = default_ports("matchgraph")
            offset = step * (int(name.removeprefix(prefix)) - first)
            return port + offset, mport + offset
    fields = settings_class(member(name).service).model_fields
    return int(fields["port"].default), int(fields["metrics_port"].default)


@dataclass
class StackProcess:
    """A process of the stack as started; ``proc`` is its current OS process (a new one after a restart)."""

    name: str
    target: str
    metrics_url: str
    child: Child

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.child.proc


@dataclass
class Stack:
    host: str = "127.0.0.1"
    models_dir: Path = Path(".models")
    data_dir: Path = Path("var")
    ports: dict[str, tuple[int, int]] = field(default_factory=lambda: {name: default_ports(name) for name in MEMBERS})
    procs: list[StackProcess] = field(default_factory=list)
    graph_db_url: str = ""  # "" = an SQLite file in data_dir
    graph_readers: int = 0  # > 0: the MatchGraph is a writer plus this many readers
    graph_writers: int = 1  # writer-capable MatchGraphs of a scaled-out stack (PostgreSQL elects the leader)
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    echo: Callable[[str], None] = print
    supervisor: Supervisor = field(init=False)

    def __post_init__(self) -> None:
        self.supervisor = Supervisor(self.restart, self.echo)

    @property
    def readers(self) -> list[str]:
        return [f"{READER}{i}" for i in range(1, self.graph_readers + 1)]

    @property
    def writers(self) -> list[str]:
        """The writer-capable MatchGraphs (``matchgraph`` first)."""
        return ["matchgraph", *(f"{WRITER}{i}" for i in range(2, self.graph_writers + 1))]

    @property
    def scaled_out(self) -> bool:
        return self.graph_readers > 0 or self.graph_writers > 1

    def _expand(self, names: list[str]) -> list[str]:
        """``names`` with the other writers and the readers after the MatchGraph when the stack is scaled out."""
        out = []
        for name in names:
            out += self.writers + self.readers if name == "matchgraph" and self.scaled_out else [name]
        for name in out:
            self.ports.setdefault(name, default_ports(name))
        return out

    # ------------------------------------------------------------------ command lines
    def graph_args(self, name: str) -> list[str]:
        db_url = self.graph_db_url or f"sqlite:///{self.data_dir / 'matchgraph.db'}"
        cmd = ["--set", f"db_url={db_url}"]
        # the model services this stack has ports for: Search embeds with VisionLanguage, probes use both
        used = ("visionlanguage",) if name.startswith(READER) else ("visionlanguage", "diffusion")
        cmd += [arg for svc in used if svc in self.ports for arg in ("--set", f"{svc}_target={self.target(svc)}")]
        if name.startswith(READER):
            return [*cmd, "--set", "role=reader"] + \
                (["--set", f"writer_address={self.target('matchgraph')}"] if self.graph_writers == 1 else [])
        if not self.scaled_out:
            return cmd
        return [*cmd, "--set", "role=writer", "--set", f"advertise_address={self.target(name)}"]

    def gateway_args(self) -> list[str]:
        cmd = ["--set", f"matchgraph_target={self.graph_read_target()}"]
        if self.scaled_out:
            cmd += ["--set", f"matchgraph_writer_target={','.join(self.target(w) for w in self.writers)}"]
        return cmd

    def openai_args(self) -> list[str]:
        """The model services the OpenAI-compatible API fronts (those this stack has ports for)."""
        return [arg for svc in ("visionlanguage", "diffusion")
                for arg in ("--set", f"{svc}_target={self.target(svc) if svc in self.ports else ''}")]

    def graph_read_target(self) -> str:
        """Where the gateway sends reads: the MatchGraph, or every reader (round robin over the healthy ones)."""
        if not self.graph_readers:
            return self.target("matchgraph")
        return ",".join(self.target(r) for r in self.readers)

    @staticmethod
    def free_ports(names: list[str] | None = None) -> dict[str, tuple[int, int]]:
        """Free (grpc, metrics) ports per service, for tests and side-by-side stacks."""
        import socket

        socks, ports = [], {}
        for name in names or list(MEMBERS):
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
        return self.url(OPENAI)

    def url(self, name: str) -> str:
        """The HTTP base URL of an HTTP member."""
        return f"http://{self.host}:{self.ports[name][0]}"

    def _command(self, name: str) -> list[str]:
        import sys

        port, mport = self.ports[name]
        m = member(name)
        return [sys.executable, "-m", "services.cli", "serve", m.service, "--host", self.host, "--port", str(port),
                "--metrics-port", str(mport), *m.args(self, name)]

    def _ready(self, name: str) -> Callable[[], bool]:
        """A quick check that ``name`` serves: gRPC health SERVING, or its HTTP readiness path answering 200."""
        m = member(name)
        if m.http_ready:
            url = self.url(name) + m.http_ready

            def http_ready() -> bool:
                import urllib.error
                import urllib.request

                try:
                    with urllib.request.urlopen(url, timeout=2) as r:
                        return bool(r.status == 200)
                except (OSError, urllib.error.URLError):
                    return False
            return http_ready
        from services.core.client import health_status

        target, service = self.target(name), full_name(m.service)
        return lambda: health_status(target, service, timeout=1.0) == "SERVING"

    # ------------------------------------------------------------------ lifecycle
    def start(self, names: list[str] | None = None, timeout: float = 300.0) -> None:
        """Start each service as a supervised child process and wait until all serve (RuntimeError with its
        output if one exits before it ever served)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        expanded = self._expand(names or list(MEMBERS))
        for name in expanded:
            child = self.supervisor.add(name, self._command(name), self._ready(name), env)
            self.procs.append(StackProcess(name, self.target(name), self.metrics_url(name), child))
            self.supervisor.start(name)
        self.supervisor.wait_ready(expanded, timeout)

    def supervise(self, stop: threading.Event) -> None:
        """Restart children that die (see services/supervisor.py) until ``stop`` is set."""
        self.supervisor.run(stop)

    def stop(self, timeout: float = 30.0) -> dict[str, int]:
        """SIGTERM every child (they drain), wait, return their exit codes."""
        codes = self.supervisor.stop(timeout)
        self.procs.clear()
        return codes
