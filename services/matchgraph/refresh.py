"""The writer's schedule that keeps Hub readings current (``hub_refresh_interval_s``; off by default).

Every interval it re-reads, through ``graph.importers.hf``, each catalogue model that has a Hugging
Face id, and stores what it read as dated observations (older readings stay as history). A model
the Hub cannot answer for is logged and skipped; the others are still stored.
"""

from __future__ import annotations

import logging
import threading

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


class HubRefresh:
    """Runs ``refresh_once`` every ``interval`` seconds in a daemon thread until stopped."""

    def __init__(self, engine: Engine, interval: float, endpoint: str = "") -> None:
        self.engine, self.interval, self.endpoint = engine, interval, endpoint
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="hub-refresh", daemon=True)

    def _loop(self) -> None:
        while not self.stop_event.wait(self.interval):
            if self.engine.writes_refused:  # a standby: the leader refreshes
                continue
            try:
                done, failed = refresh_once(self.engine, self.endpoint, self.stop_event)
                log.info("hub refresh: %d models updated, %d skipped", done, failed)
            except Exception:
                log.exception("hub refresh failed")

    def stop(self, timeout: float) -> None:
        self.stop_event.set()
        if self.thread.is_alive():
            self.thread.join(timeout=timeout)
