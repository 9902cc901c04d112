"""Fixtures shared across test areas."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """The tiny Kosmos-2 and Stable Diffusion folders, built once per test session."""
    from services.cli import build_tiny

    out = tmp_path_factory.mktemp("models")
    build_tiny(out)
    return out


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Path:
    """A test CA (ca.pem), a server and a client certificate it signed (for localhost and
    127.0.0.1), and a self-signed "rogue" client certificate it did not sign."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot generate test certificates")
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-extfile", "san.ext", "-out", f"{name}.pem", cwd=d)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=intruder",
             "-keyout", "rogue.key", "-out", "rogue.pem", cwd=d)
    return d


# ----------------------------------------------------------------------------- PostgreSQL
PG_TEMPLATE = "matchgraph_template"


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL server for the session (initdb + pg_ctl in a temp dir, 127.0.0.1, free port),
    with a template database that already holds the MatchGraph schema. Skips only when the server
    binaries are not installed."""
    from tests.pgserver import INSTALL_HINT, find_bin_dir, start_server

    if find_bin_dir() is None:
        pytest.skip(f"PostgreSQL server binaries (initdb, pg_ctl) not found: {INSTALL_HINT}")
    server = start_server()
    try:
        from graph.store.postgres import PgStore

        PgStore(server.create_database(PG_TEMPLATE)).close()
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def pg_standby(pg_server):
    """A hot standby of ``pg_server`` (``pg_basebackup -R``), streaming: databases created on the primary
    later appear on it too. Tests that pause its replay resume it before they end."""
    standby = pg_server.standby()
    yield standby
    standby.sql("SELECT pg_wal_replay_resume()")


class GraphDatabases:
    """Fresh databases for one test on one backend: files under tmp_path, or PostgreSQL databases
    cloned from the schema template (CREATE DATABASE ... TEMPLATE: cheap) and dropped afterwards."""

    _counter = 0

    def __init__(self, backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.backend, self.tmp_path, self.request = backend, tmp_path, request
        self.made: list[str] = []

    @property
    def pg(self):
        return self.request.getfixturevalue("pg_server")

    def url(self, name: str = "graph.db") -> str:
        """The db_url of a new, empty database (``name`` tells databases of one test apart)."""
        if self.backend == "sqlite":
            from graph.store import sqlite_url

            return sqlite_url(self.tmp_path / name)
        GraphDatabases._counter += 1
        db = f"t{GraphDatabases._counter}"
        self.made.append(db)
        return self.pg.create_database(db, template=PG_TEMPLATE)

    def close(self) -> None:
        for db in self.made:
            self.pg.drop_database(db)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_backend(request: pytest.FixtureRequest) -> str:
    """The MatchGraph storage backend a test runs on (tests that exercise storage run on both)."""
    return str(request.param)


@pytest.fixture()
def graph_dbs(db_backend: str, tmp_path: Path, request: pytest.FixtureRequest):
    dbs = GraphDatabases(db_backend, tmp_path, request)
    yield dbs
    dbs.close()
