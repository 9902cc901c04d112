"""Keep a set of child processes running: restart the ones that die, give up on the ones that keep dying.

What ``unfragile up`` and ``make run`` stand on, with the semantics of Kubernetes' restart policy and
docker compose's ``restart: on-failure``: a child that exits without being asked to (a crash, kill -9,
OOM, even exit 0) is started again after a delay that doubles from ``backoff_s`` up to
``max_backoff_s`` (reset once it has run ``stable_s``), and every restart is logged with the exit
status. A child that exits more than ``max_restarts`` times within ``window_s`` is reported with its
last log lines and left down; every other child keeps running. Only ``stop`` (Ctrl-C / SIGTERM of
``unfragile up``) stops them all: SIGTERM (each service drains), then SIGKILL after a timeout.

Each child runs in its own process group, so Ctrl-C in a terminal reaches the supervisor only, which
then stops the children in order instead of them all racing to exit. Their output (stdout and stderr)
goes through the supervisor: echoed with the child's name in front, the last lines kept for reports.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

LOG_TAIL = 30  # lines of a child's output kept for the report when it is given up on


@dataclass(frozen=True)
class RestartPolicy:
    """When and how often a child that died is started again."""

    backoff_s: float = 1.0  # delay before the first restart; doubles per restart
    max_backoff_s: float = 30.0
    max_restarts: int = 5  # restarts allowed within window_s; the next exit leaves the child down
    window_s: float = 120.0
    stable_s: float = 60.0  # running this long since its last start resets a child's delay


@dataclass
class Child:
    """One supervised process and its history."""

    name: str
    command: list[str]
    ready: Callable[[], bool]  # a quick, non-blocking check that the child serves
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    state: str = "new"  # new | starting | serving | waiting (to restart) | failed | stopped
    served: bool = False  # it reached serving at least once
    starts: int = 0
    restarts: deque[float] = field(default_factory=deque)  # when each restart was decided (window_s)
    delay: float = 0.0
    next_start: float = 0.0
    started_at: float = 0.0
    last_exit: str = ""
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL))


def describe_exit(code: int) -> str:
    """"exit code 3" or "killed by SIGKILL" (Popen reports a signal as a negative code)."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Supervisor:
    """Starts children, restarts them by ``policy`` (see the module docstring), stops them on request."""

    def __init__(self, policy: RestartPolicy | None = None, echo: Callable[[str], None] = print,
                 check_every_s: float = 0.5) -> None:
        self.policy = policy or RestartPolicy()
        self.echo = echo
        self.check_every_s = check_every_s  # how often a starting child's readiness is checked
        self.children: dict[str, Child] = {}
        self._lock = threading.RLock()
        self._stopping = False
        self._next_check: dict[str, float] = {}

    # ------------------------------------------------------------------ starting
    def add(self, name: str, command: list[str], ready: Callable[[], bool],
            env: dict[str, str] | None = None) -> Child:
        child = Child(name, command, ready, env)
        self.children[name] = child
        return child

    def start(self, name: str) -> None:
        with self._lock:
            self._spawn(self.children[name])

    def _spawn(self, child: Child) -> None:
        child.proc = subprocess.Popen(child.command, env=child.env if child.env is not None else os.environ.copy(),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, process_group=0)
        child.starts += 1
        child.state, child.started_at = "starting", time.monotonic()
        threading.Thread(target=self._pump, args=(child, child.proc), name=f"log-{child.name}", daemon=True).start()

    def _pump(self, child: Child, proc: subprocess.Popen[bytes]) -> None:
        """Echo the child's output with its name in front and keep the last lines."""
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            child.lines.append(line)
            self.echo(f"{child.name:<21}| {line}")

    def wait_ready(self, names: list[str], timeout: float) -> None:
        """Supervise until every child in ``names`` serves; RuntimeError (with its output) if one exits before it
        ever served (a bad setting is reported at once, not retried), TimeoutError if ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            with self._lock:
                failed = [self.children[n] for n in names
                          if self.children[n].state in ("waiting", "failed") and not self.children[n].served]
                pending = [n for n in names if self.children[n].state != "serving"]
            if failed:
                raise RuntimeError(f"{failed[0].name} exited ({failed[0].last_exit}) before it served; its last "
                                   f"output:\n" + "\n".join(failed[0].lines))
            if not pending:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"not serving within {timeout:.0f} s: {', '.join(pending)}")
            time.sleep(0.1)

    # ------------------------------------------------------------------ supervising
    def poll(self) -> None:
        """One supervision step: notice exits, restart children whose delay is over, check readiness."""
        now = time.monotonic()
        with self._lock:
            if self._stopping:
                return
            for child in self.children.values():
                if child.state in ("starting", "serving") and child.proc is not None \
                        and (code := child.proc.poll()) is not None:
                    self._exited(child, code, now)
                elif child.state == "waiting" and now >= child.next_start:
                    self.echo(f"[supervisor] restarting {child.name} (start {child.starts + 1})")
                    self._spawn(child)
                elif child.state == "starting" and now >= self._next_check.get(child.name, 0.0):
                    self._next_check[child.name] = now + self.check_every_s
                    if child.ready():
                        child.state, child.served = "serving", True
                        if child.starts > 1:
                            self.echo(f"[supervisor] {child.name} is serving again "
                                      f"({now - child.started_at:.1f} s after its restart)")
                elif child.state == "serving" and now - child.started_at > self.policy.stable_s:
                    child.delay = 0.0  # it ran long enough: a later crash starts the backoff afresh

    def _exited(self, child: Child, code: int, now: float) -> None:
        p = self.policy
        child.last_exit = describe_exit(code)
        while child.restarts and now - child.restarts[0] > p.window_s:
            child.restarts.popleft()
        if len(child.restarts) >= p.max_restarts:
            child.state = "failed"
            self.echo(f"[supervisor] {child.name} keeps crashing ({child.last_exit}; {len(child.restarts) + 1} "
                      f"exits within {p.window_s:g} s): leaving it down, the other services keep running. Its last "
                      f"output:\n" + "\n".join(f"    {line}" for line in child.lines))
            return
        child.delay = p.backoff_s if child.delay == 0 else min(child.delay * 2, p.max_backoff_s)
        child.restarts.append(now)
        child.state, child.next_start = "waiting", now + child.delay
        self.echo(f"[supervisor] {child.name} exited ({child.last_exit}); restarting in {child.delay:g} s "
                  f"(restart {len(child.restarts)} of {p.max_restarts} allowed within {p.window_s:g} s)")

    def run(self, stop: threading.Event, interval: float = 0.2) -> None:
        """Supervise until ``stop`` is set."""
        while not stop.wait(interval):
            self.poll()

    # ------------------------------------------------------------------ stopping
    def stop(self, timeout: float = 30.0) -> dict[str, int]:
        """SIGTERM every running child (they drain), wait up to ``timeout``, SIGKILL what is left; exit codes."""
        with self._lock:
            self._stopping = True
            running = [c for c in self.children.values() if c.proc is not None and c.proc.poll() is None]
            for child in running:
                assert child.proc is not None
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes = {}
        for child in self.children.values():
            if child.proc is None:
                continue
            try:
                codes[child.name] = child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                codes[child.name] = child.proc.wait()
            child.state = "stopped"
        return codes
