"""The match graph's source of truth behind one interface, on SQLite or PostgreSQL.

``open_store(db_url)`` picks the backend from the URL:

- ``sqlite:///var/matchgraph.db`` (relative path), ``sqlite:////srv/matchgraph.db``
  (absolute), ``sqlite://`` (in memory), or a bare file path: ``SqliteStore``, the
  embedded zero-setup default;
- ``postgresql://user@host:port/db`` (or ``postgres://``, any libpq URI parameters):
  ``PgStore``, for one writer and many readers on a shared server.
"""

from __future__ import annotations

from graph.store.base import (
    CHANGE_CHANNEL,
    KEPT_STATE,
    STATE_CHANNEL,
    DataVersions,
    FeedbackRow,
    Heads,
    Leader,
    LeaderLock,
    PoolStats,
    StateRow,
    Store,
    StoreConfig,
)
from graph.store.probe_rows import (
    TASK_IMAGE_TO_TEXT,
    TASK_TEXT_TO_IMAGE,
    ProbeOutcomeRow,
    ProbeResultRow,
    ProbeRunRow,
    ProbeScoreRow,
)
from graph.store.rows import STOP_WORDS, normalise_query, record_from_json, record_to_json, search_words
from graph.store.sqlite import SqliteStore

__all__ = ["CHANGE_CHANNEL", "KEPT_STATE", "STATE_CHANNEL", "STOP_WORDS", "TASK_IMAGE_TO_TEXT", "TASK_TEXT_TO_IMAGE",
           "DataVersions", "FeedbackRow", "Heads", "Leader", "LeaderLock", "PoolStats", "ProbeOutcomeRow",
           "ProbeResultRow", "ProbeRunRow", "ProbeScoreRow", "SqliteStore", "StateRow", "Store", "StoreConfig",
           "normalise_query", "open_store", "parse_db_url", "record_from_json", "record_to_json", "search_words",
           "sqlite_url"]


def sqlite_url(path: object) -> str:
    """The db_url of an SQLite file (``sqlite:///`` + the path, so absolute paths get four slashes)."""
    return f"sqlite:///{path}"


def parse_db_url(url: str) -> tuple[str, str]:
    """("sqlite", path) or ("postgresql", url); ValueError naming the accepted forms otherwise."""
    url = url.strip()
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql", url
    if url.startswith("sqlite:"):
        rest = url[len("sqlite:"):]
        if rest in ("", "//", "///:memory:"):
            return "sqlite", ":memory:"
        if rest.startswith("///") and len(rest) > 3:
            return "sqlite", rest[3:]
        raise ValueError(f"bad SQLite db_url {url!r}: use sqlite:///relative/path.db or sqlite:////absolute/path.db")
    if "://" in url or not url:
        raise ValueError(f"unsupported db_url {url!r}: use sqlite:///path.db (the default backend) or "
                         f"postgresql://user@host:port/dbname")
    return "sqlite", url  # a bare file path, as the older db_path setting took


def open_store(db_url: str, config: StoreConfig | None = None) -> Store:
    """Open (creating the schema if needed) the store ``db_url`` names."""
    kind, target = parse_db_url(db_url)
    if kind == "postgresql":
        from graph.store.postgres import PgStore  # psycopg is imported only when PostgreSQL is used

        return PgStore(target, config)
    return SqliteStore(target, config)
