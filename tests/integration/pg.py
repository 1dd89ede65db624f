"""A throwaway Postgres 15 cluster for the integration tests: initdb as the
`postgres` user (initdb refuses root) into a temp dir owned by postgres,
unix socket in that dir and a loopback TCP port, ssl=on with a self-signed
certificate made by openssl, started with `pg_ctl -w start` and stopped by
the postmaster's PID. One cluster per test session; a fresh database per
test (the `pg_db` fixture). No Python driver is needed: SQL goes through
psql.

Fixtures: `pg_cluster` (session), `pg_db` (a new database), `pg_conninfo`
(its libpq connection string, what make_daemon(storage="postgres") uses)."""

import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from ports import free_port

PG_BIN = "/usr/lib/postgresql/15/bin"
START_WAIT_S = 30
STOP_WAIT_S = 30


def _as_postgres(*cmd, **kw):
    return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True,
                          capture_output=True, text=True, **kw)


class PgCluster:
    """One Postgres cluster in its own temp dir."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="rbpg-")
        os.chmod(self.dir, 0o755)
        self.data = os.path.join(self.dir, "data")
        self.sock = os.path.join(self.dir, "sock")
        self.logfile = os.path.join(self.dir, "postgres.log")
        self.port = free_port()
        self.pid = None
        self._names = itertools.count(1)
        os.mkdir(self.sock)
        shutil.chown(self.dir, "postgres", "postgres")
        shutil.chown(self.sock, "postgres", "postgres")

    def init(self):
        _as_postgres(f"{PG_BIN}/initdb", "-D", self.data, "-A", "trust", "-U", "postgres",
                     "-E", "UTF8", "--no-sync", "--no-instructions")
        # A self-signed certificate, so that sslmode=require can be tested.
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=127.0.0.1", "-keyout", f"{self.data}/server.key",
                        "-out", f"{self.data}/server.crt"], check=True, capture_output=True)
        for f in ("server.key", "server.crt"):
            shutil.chown(f"{self.data}/{f}", "postgres", "postgres")
            os.chmod(f"{self.data}/{f}", 0o600)
        with open(f"{self.data}/postgresql.conf", "a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.sock}'\n"
                "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
                # Tests kill the daemon, never the machine: durability in
                # the OS page cache is enough, and it keeps the suite fast.
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\nshared_buffers = 128MB\n"
                "log_min_messages = warning\nlog_line_prefix = '%m [%p] %d '\n")
        with open(f"{self.data}/pg_hba.conf", "w") as hba:
            hba.write("local all all trust\n"
                      "host all rbpw 127.0.0.1/32 scram-sha-256\n"
                      "host all all 127.0.0.1/32 trust\n")
        return self

    def start(self):
        _as_postgres(f"{PG_BIN}/pg_ctl", "-D", self.data, "-l", self.logfile, "-w",
                     "-t", str(START_WAIT_S), "start")
        with open(f"{self.data}/postmaster.pid") as f:
            self.pid = int(f.readline())
        return self

    def stop(self, mode="fast"):
        """Stops the postmaster by its PID: SIGINT is a fast shutdown (it
        ends the sessions), SIGQUIT an immediate one (a crash restart)."""
        if self.pid is None:
            return
        sig = signal.SIGQUIT if mode == "immediate" else signal.SIGINT
        os.kill(self.pid, sig)
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        else:
            raise AssertionError(f"postgres {self.pid} did not stop")
        self.pid = None
        # A crashed postmaster leaves its pid file behind.
        if os.path.exists(f"{self.data}/postmaster.pid"):
            os.unlink(f"{self.data}/postmaster.pid")

    def destroy(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def conninfo(self, db, tcp=False, **extra):
        host = "127.0.0.1" if tcp else self.sock
        parts = [f"host={host}", f"port={self.port}", f"dbname={db}"]
        if "user" not in extra:
            parts.append("user=postgres")
        parts += [f"{k}={v}" for k, v in extra.items()]
        return " ".join(parts)

    def psql(self, db, sql, timeout=30):
        """Runs sql; returns the rows as lists of strings ('|' separated)."""
        out = subprocess.run(
            [f"{PG_BIN}/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", self.sock,
             "-p", str(self.port), "-U", "postgres", "-d", db, "-c", sql],
            check=True, capture_output=True, text=True, timeout=timeout)
        return [line.split("|") for line in out.stdout.splitlines() if line]

    def session(self, db):
        """An interactive psql (stdin pipe) for holding locks in a test."""
        return subprocess.Popen(
            [f"{PG_BIN}/psql", "-X", "-q", "-A", "-t", "-h", self.sock, "-p", str(self.port),
             "-U", "postgres", "-d", db],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def createdb(self):
        name = f"rb{os.getpid()}_{next(self._names)}"
        self.psql("postgres", f"CREATE DATABASE {name}")
        return name


class PgDb:
    """A fresh database of the session's cluster."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.name = cluster.createdb()
        self.conninfo = cluster.conninfo(self.name)

    def psql(self, sql, timeout=30):
        return self.cluster.psql(self.name, sql, timeout)


@pytest.fixture(scope="session")
def pg_cluster():
    cluster = PgCluster().init().start()
    yield cluster
    cluster.destroy()


@pytest.fixture
def pg_db(pg_cluster):
    if pg_cluster.pid is None:
        pg_cluster.start()  # a test that stopped it failed before restarting it
    return PgDb(pg_cluster)


@pytest.fixture
def pg_conninfo(pg_db):
    return pg_db.conninfo
