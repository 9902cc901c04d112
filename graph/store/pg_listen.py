"""The change listener of ``PgStore``: a background ``LISTEN`` on the store's two channels.

One dedicated connection (outside the pool) listens on ``matchgraph`` (a writer sends
``NOTIFY matchgraph, '<seq>'`` once per committed ingest batch) and ``matchgraph_state``
(``save_state`` sends the new snapshot version). Where LISTEN cannot work (a hot standby,
the server down) it says so and the waits poll instead; after an outage it reconnects by
itself.
"""

from __future__ import annotations

import logging
import threading

import psycopg

from graph.store.base import CHANGE_CHANNEL, STATE_CHANNEL, Heads

log = logging.getLogger(__name__)


class ChangeListener:
    """A background LISTEN; ``latest`` is the newest event seq and snapshot version announced."""

    def __init__(self, conninfo: str, connect_timeout_s: int) -> None:
        self.conninfo = conninfo
        self.connect_timeout_s = connect_timeout_s
        self.cond = threading.Condition()
        self.latest = Heads(0, 0)
        self.state = "idle"  # idle | listening | down | unsupported
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def listening(self) -> bool:
        return self.state == "listening"

    def start(self) -> None:
        """Start listening (once) and wait until the first LISTEN attempt has succeeded or failed."""
        with self.cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="matchgraph-listen", daemon=True)
                self._thread.start()
        self._ready.wait(self.connect_timeout_s + 1)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def wait(self, seen: Heads, timeout: float, poll_s: float) -> None:
        """Sleep until a notice newer than ``seen`` arrives, or ``timeout`` (``poll_s`` when not listening)."""
        with self.cond:
            if self.latest.seq <= seen.seq and self.latest.state <= seen.state:
                self.cond.wait(timeout if self.listening else min(timeout, poll_s))

    def _set_state(self, state: str) -> None:
        with self.cond:
            self.state = state
            self.cond.notify_all()

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=self.connect_timeout_s) as conn:
                    conn.execute(f"LISTEN {CHANGE_CHANNEL}")
                    conn.execute(f"LISTEN {STATE_CHANNEL}")
                    self._set_state("listening")
                    self._ready.set()
                    backoff = 0.1
                    while not self._stop.is_set():
                        for n in conn.notifies(timeout=0.5):
                            self._announce(n.channel, n.payload)
            except psycopg.OperationalError as exc:
                log.warning("change listener disconnected (%s); polling until it reconnects", exc)
                self._set_state("down")
                self._ready.set()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            except psycopg.Error as exc:  # e.g. LISTEN on a hot standby: polling only, for good
                log.info("LISTEN not available (%s); waiting for changes by polling", exc)
                self._set_state("unsupported")
                self._ready.set()
                return
        self._set_state("idle")

    def _announce(self, channel: str, payload: str) -> None:
        try:
            value = int(payload)
        except ValueError:
            return
        with self.cond:
            if channel == STATE_CHANNEL:
                self.latest = self.latest._replace(state=max(self.latest.state, value))
            else:
                self.latest = self.latest._replace(seq=max(self.latest.seq, value))
            self.cond.notify_all()
