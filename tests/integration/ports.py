"""Free ports for the daemons and Postgres clusters the tests start."""

import random
import socket


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports for daemons come from below the kernel's ephemeral range: a port the
# kernel can hand to any outgoing connection (ours, Postgres', another test
# run's) may be taken between a daemon's stop and its restart on the same
# port, and bind then fails with EADDRINUSE.
_PORT_LOW = 10000
_PORT_HIGH = max(_PORT_LOW + 1000, min(_ephemeral_low(), 32768))
_ports_given = set()
_port_rng = random.SystemRandom()


def _bindable(port):
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port():
    """A TCP and UDP port on 127.0.0.1 that nothing holds now, never the same
    twice in one test run."""
    for _ in range(10000):
        port = _port_rng.randrange(_PORT_LOW, _PORT_HIGH)
        if port not in _ports_given and _bindable(port):
            _ports_given.add(port)
            return port
    raise RuntimeError("no free port below the ephemeral range")
