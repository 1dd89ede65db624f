"""Fixtures for integration tests: the real ringbusd, started from a TOML
file in a temp dir on free 127.0.0.1 ports, waited for until it accepts,
stopped with SIGTERM and a bounded wait. A daemon whose log shows an
assertion or a sanitizer report fails the test that started it."""

import os
import pathlib
import signal
import subprocess
import time

import pytest

# The throwaway Postgres cluster (pg_cluster, pg_db, pg_conninfo).
from pg import pg_cluster, pg_conninfo, pg_db  # noqa: F401
from ports import free_port  # noqa: F401

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD = pathlib.Path(os.environ.get("RINGBUS_BUILD", "build/release"))
if not BUILD.is_absolute():
    BUILD = ROOT / BUILD
RINGBUSD = BUILD / "ringbusd"
# ThreadSanitizer's shadow memory multiplies RSS: memory bounds are checked
# on the release and ASan builds (CI), not under TSan.
RSS_BOUNDS_APPLY = "tsan" not in BUILD.name
RINGBUS = BUILD / "ringbus"

# Lines that mean the daemon broke, whatever the test itself saw.
BAD_LOG_MARKERS = (
    "assertion failed",
    "AddressSanitizer",
    "UndefinedBehaviorSanitizer",
    "LeakSanitizer",
    "runtime error:",
    "ThreadSanitizer",
)

STOP_WAIT_S = 15
READY_WAIT_S = 15




class Daemon:
    """One running ringbusd."""

    def __init__(self, tmp_path, shards=2, extra="", listeners=None, env=None, storage="memory",
                 conninfo=None, pg_extra="", wrap=None):
        """wrap: a command the daemon runs under (e.g. `ip netns exec NS`)."""
        self.dir = tmp_path
        self.wrap = list(wrap or [])
        self.port = free_port()
        self.config_path = tmp_path / "ringbusd.toml"
        self.log_path = tmp_path / "ringbusd.log"
        # Only the default listener's port may move (see start()).
        self._port_movable = listeners is None
        if listeners is None:
            listeners = (
                f'[[listener]]\ntransport = "tcp"\naddress = "127.0.0.1"\n'
                f"port = {self.port}\n"
            )
        if storage == "postgres":
            # pg_extra: more [storage.postgres] keys, one per line.
            extra += (f'\n[storage]\nbackend = "postgres"\n[storage.postgres]\n'
                      f'conninfo = "{conninfo}"\n{pg_extra}\n')
        self.config_text = f"shards = {shards}\nlog_level = \"debug\"\n{extra}\n{listeners}"
        self.config_path.write_text(self.config_text)
        self.env = dict(os.environ)
        self.env.setdefault("ASAN_OPTIONS", "abort_on_error=1:detect_leaks=1")
        self.env.setdefault("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")
        if env:
            self.env.update(env)
        self.proc = None
        self.url = f"tcp://127.0.0.1:{self.port}"

    def start(self):
        try:
            return self._start()
        except AssertionError:
            # Another program on this machine may take the port between a
            # stop and a restart, for longer than the daemon's own bind
            # retries. A test that restarts the default listener does not
            # care about the number: it moves to a fresh one once.
            if not (self._port_movable and "bind: Address already in use" in self.log()):
                raise
            self._log.close()
            old = self.port
            self.port = free_port()
            self.url = f"tcp://127.0.0.1:{self.port}"
            self.config_text = self.config_text.replace(f"port = {old}\n", f"port = {self.port}\n")
            self.config_path.write_text(self.config_text)
            return self._start()

    def _start(self):
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [*self.wrap, str(RINGBUSD), "--config", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        deadline = time.monotonic() + READY_WAIT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"ringbusd exited early:\n{self.log()}")
            if "ready:" in self.log():
                return self
            time.sleep(0.02)
        raise AssertionError(f"ringbusd not ready in {READY_WAIT_S}s:\n{self.log()}")

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def bad_log_lines(self):
        return [l for l in self.log().splitlines() if any(m in l for m in BAD_LOG_MARKERS)]

    def stop(self, sig=signal.SIGTERM):
        """Stops the daemon; returns its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"ringbusd did not stop in {STOP_WAIT_S}s:\n{self.log()}")
        self._log.close()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def kill9(self):
        self.proc.kill()
        self.proc.wait()
        self._log.close()
        self.proc = None

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0


@pytest.fixture
def storage():
    """The backend make_daemon uses unless told; a module overrides it (with
    params, to run its tests on each backend)."""
    return "memory"


@pytest.fixture
def make_daemon(tmp_path, request, storage):
    started = []

    def make(**kw):
        kw.setdefault("storage", storage)
        if kw["storage"] == "postgres" and kw.get("conninfo") is None:
            kw["conninfo"] = request.getfixturevalue("pg_conninfo")
        sub = tmp_path / f"d{len(started)}"
        sub.mkdir()
        d = Daemon(sub, **kw)
        started.append(d)
        return d.start()

    yield make
    problems = []
    for d in started:
        rc = d.stop()
        bad = d.bad_log_lines()
        if bad:
            problems.append(f"daemon log has sanitizer/assert lines: {bad}\n{d.log()[-4000:]}")
        if rc not in (None, 0):
            problems.append(f"daemon exited {rc}\n{d.log()[-4000:]}")
    if problems:
        pytest.fail("\n".join(problems))


@pytest.fixture
def daemon(make_daemon):
    return make_daemon()


def run_cli(*args, input=None, timeout=30):
    """Runs the ringbus CLI; returns CompletedProcess with text output."""
    return subprocess.run(
        [str(RINGBUS), *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
