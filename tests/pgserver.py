"""A throwaway PostgreSQL server for tests and benchmarks (Debian's ``postgresql`` package).

``PgServer.start()`` runs ``initdb`` into a temporary directory and ``pg_ctl start`` on
127.0.0.1 and a free port, as an unprivileged user when run as root (initdb refuses
root). ``create_database`` makes cheap per-test databases from a template. A hot standby
of it comes from ``pg_basebackup -R -X stream``. Nothing here ships with the product.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

INSTALL_HINT = "install Debian's postgresql package (apt-get install -y postgresql)"
USER = "unfragile"


def find_bin_dir() -> Path | None:
    """The directory holding initdb/pg_ctl/postgres: PATH first, then /usr/lib/postgresql/<ver>/bin."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        real = Path(os.path.realpath(initdb)).parent
        if (real / "postgres").exists() or shutil.which("postgres"):
            return real
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True):
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
            return Path(d)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One PostgreSQL cluster in a temporary directory; ``url(db)`` connects to database ``db``."""

    def __init__(self, bin_dir: Path, root: Path | None = None, durable: bool = False) -> None:
        self.bin_dir = bin_dir
        self.root = Path(root or tempfile.mkdtemp(prefix="unfragile-pg-"))
        self.data = self.root / "data"
        self.durable = durable  # fsync on (benchmarks); tests run with fsync off
        self.port = 0
        self.standbys: list[PgServer] = []
        self._as_root = os.geteuid() == 0

    # ------------------------------------------------------------------ processes
    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self._as_root:
            cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *cmd]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout, env=env)

    def _own(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if self._as_root:
            shutil.chown(path, "nobody", "nogroup")
            shutil.chown(self.root, "nobody", "nogroup")

    def init(self) -> PgServer:
        self._own(self.data)
        self.data.chmod(0o700)
        self._run("initdb", "-D", str(self.data), "--auth=trust", "-U", USER, "--no-sync", "-E", "UTF8",
                  "--locale=C.UTF-8")
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("wal_level = replica\nmax_wal_senders = 4\nhot_standby = on\nmax_connections = 200\n")
            if not self.durable:
                f.write("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
        return self

    def start(self, attempts: int = 3) -> PgServer:
        for attempt in range(attempts):
            self.port = free_port()
            try:
                self._run("pg_ctl", "-w", "-t", "30", "-D", str(self.data), "-l", str(self.root / "log"),
                          "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}", "start")
                return self
            except subprocess.CalledProcessError:
                if attempt == attempts - 1:
                    raise RuntimeError(f"PostgreSQL did not start: {self.log_tail()}") from None
        return self

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart_on_same_port(self) -> None:
        self._run("pg_ctl", "-w", "-t", "30", "-D", str(self.data), "-l", str(self.root / "log"),
                  "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}", "start")

    def destroy(self) -> None:
        for s in self.standbys:
            s.destroy()
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, n: int = 20) -> str:
        log = self.root / "log"
        return "\n".join(log.read_text().splitlines()[-n:]) if log.exists() else "(no log)"

    # ------------------------------------------------------------------ databases
    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{db}"

    def sql(self, statement: str, db: str = "postgres") -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url(db), autocommit=True) as conn:
            cur = conn.execute(statement)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def create_database(self, name: str, template: str = "template0") -> str:
        self.sql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # ------------------------------------------------------------------ replication
    def standby(self) -> PgServer:
        """A hot standby streaming from this server (``pg_basebackup -R -X stream``), started."""
        sb = PgServer(self.bin_dir, Path(tempfile.mkdtemp(prefix="unfragile-pg-standby-")), self.durable)
        sb._own(sb.data)
        sb._run("pg_basebackup", "-D", str(sb.data), "-R", "-X", "stream", "-h", "127.0.0.1", "-p", str(self.port),
                "-U", USER, "--no-sync", "--checkpoint=fast")
        sb.data.chmod(0o700)
        sb.start()
        self.standbys.append(sb)
        return sb

    def wait_replayed(self, standby: PgServer, timeout: float = 10.0) -> None:
        """Block until ``standby`` has replayed everything this primary has written so far."""
        target = self.sql("SELECT pg_current_wal_insert_lsn()::text")[0][0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if standby.sql(f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn")[0][0]:
                return
            time.sleep(0.01)
        raise TimeoutError(f"standby did not replay up to {target} within {timeout}s")


def start_server(durable: bool = False) -> PgServer:
    """Find the binaries, initdb and start; RuntimeError with an install hint when they are missing."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise RuntimeError(f"PostgreSQL server binaries (initdb, pg_ctl) not found: {INSTALL_HINT}")
    server = PgServer(bin_dir, durable=durable)
    try:
        return server.init().start()
    except BaseException:
        shutil.rmtree(server.root, ignore_errors=True)
        raise
