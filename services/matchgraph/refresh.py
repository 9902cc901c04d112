"""The writer's schedule that keeps Hub readings current (``hub_refresh_interval_s``; off by default), and
``LeaderJob``, the periodic loop it and the probe schedule run on.

Every interval it re-reads, through ``graph.importers.hf``, each catalogue model that has a Hugging
Face id, and stores what it read as dated observations (older readings stay as history). A model
the Hub cannot answer for is logged and skipped; the others are still stored.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from common.errors import UnfragileError
from graph.engine import Engine
from graph.importers import hf
from graph.records import ModelRecord

log = logging.getLogger(__name__)


def refresh_once(engine: Engine, endpoint: str = "", stop: threading.Event | None = None) -> tuple[int, int]:
    """Re-read every model with a Hub id now; returns (models updated, models that failed)."""
    updated: list[ModelRecord] = []
    failed = 0
    for model_id in list(engine.catalogue.ids):
        if stop is not None and stop.is_set():
            break
        record = engine.catalogue.record_of(model_id)
        if not record.hub_id:
            continue
        try:
            updated.append(hf.merge(record, hf.read(record.hub_id, endpoint)))
        except UnfragileError as exc:
            failed += 1
            log.warning("hub refresh of %s skipped: %s", model_id, exc.message)
    if updated:
        engine.import_models(updated)
    return len(updated), failed


class LeaderJob:
    """Runs ``work(stop_event)`` every ``interval`` seconds in a daemon thread named ``name`` until stopped,
    skipping rounds while the engine refuses writes (a standby: the leader does the work). A round that
    raises is logged and the next one still runs."""

    def __init__(self, engine: Engine, interval: float, name: str, work: Callable[[threading.Event], None]) -> None:
        self.engine, self.interval, self.name, self.work = engine, interval, name, work
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def _loop(self) -> None:
        while not self.stop_event.wait(self.interval):
            if self.engine.writes_refused:
                continue
            try:
                self.work(self.stop_event)
            except Exception:
                log.exception("%s round failed", self.name)

    def stop(self, timeout: float) -> None:
        self.stop_event.set()
        if self.thread.is_alive():
            self.thread.join(timeout=timeout)


def hub_refresh(engine: Engine, interval: float, endpoint: str = "") -> LeaderJob:
    """``refresh_once`` every ``interval`` seconds on the leader."""

    def work(stop: threading.Event) -> None:
        done, failed = refresh_once(engine, endpoint, stop)
        log.info("hub refresh: %d models updated, %d skipped", done, failed)

    return LeaderJob(engine, interval, "hub-refresh", work)
