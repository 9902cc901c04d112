"""Processes that open one new SQLite file at once (a writer and its readers starting together) all get the schema."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path


def _open(path: str, go: object) -> None:
    from graph.store import SqliteStore

    go.wait()  # type: ignore[attr-defined]
    store = SqliteStore(path)
    store.model_nodes()
    store.close()


def test_concurrent_first_opens_of_one_file_all_succeed(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    for attempt in range(4):
        path = str(tmp_path / f"g{attempt}.db")
        go = ctx.Event()
        procs = [ctx.Process(target=_open, args=(path, go)) for _ in range(6)]
        for p in procs:
            p.start()
        go.set()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * 6, f"attempt {attempt}: a process failed to open the new file"
