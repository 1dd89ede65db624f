"""A network partition of the replica plane (issue 12, "Partitions"): two
nodes on one Postgres, each in its own network namespace. The test reaches
each node's client and admin listeners over a veth pair from the root
namespace; the replica link between the nodes runs over a third veth pair
joining the two namespaces directly, so cutting that pair (`ip link set
down`) partitions the replica plane alone: clients and Postgres (its unix
socket is a file, reachable from any namespace) stay connected. Packets
node 2 sends into the cut pair are dropped without an error (no carrier),
so node 2 finds the link dead by silence.

Publishing and subscribing go on, on both nodes, before, during and after
the cut. The contract: every subscriber on either node sees every
acknowledged message of its topics exactly once, in one order per topic,
with no gap. During the cut, a node's subscribers see the other node's
commits only because the sequencer reads the holes from Postgres; the test
checks that they do before the link is restored, and that the repair
counters moved."""

import http.client
import json
import os
import random
import socket
import subprocess
import time

import pytest

from streamcheck import Driver, Publisher, Subscriber

SECRET = "partition-secret-0123456789abcdef012345678"
WAIT_S = 30
CLIENT_PORT = 7400
HTTP_PORT = 7480
REPLICA_PORT = 7410


def ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


class Netns:
    """Namespaces a and b, a veth pair from the root namespace to each
    (clients), and one pair between them (the replica plane), on a random
    10.x.y.0/28 that no route of the root namespace uses."""

    def __init__(self):
        tag = f"rb{os.getpid() % 100000}{random.randrange(100)}"
        self.ns = [f"{tag}a", f"{tag}b"]
        self.root_dev = [f"{tag}a0", f"{tag}b0"]
        self.ns_dev = [f"{tag}a1", f"{tag}b1"]
        self.replica_dev = [f"{tag}ra", f"{tag}rb"]
        routes = ip("-4", "route", "show", "table", "all").stdout
        for _ in range(100):
            net = f"10.{random.randrange(100, 250)}.{random.randrange(256)}"
            if f"{net}." not in routes:
                break
        self.root_addr = [f"{net}.1", f"{net}.5"]
        self.client_addr = [f"{net}.2", f"{net}.6"]
        self.replica_addr = [f"{net}.9", f"{net}.10"]
        self.made = []

    def create(self):
        for ns in self.ns:
            ip("netns", "add", ns)
            self.made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        for i, ns in enumerate(self.ns):
            ip("link", "add", self.root_dev[i], "type", "veth", "peer", "name", self.ns_dev[i],
               "netns", ns)
            ip("addr", "add", f"{self.root_addr[i]}/30", "dev", self.root_dev[i])
            ip("link", "set", self.root_dev[i], "up")
            ip("-n", ns, "addr", "add", f"{self.client_addr[i]}/30", "dev", self.ns_dev[i])
            ip("-n", ns, "link", "set", self.ns_dev[i], "up")
        ip("-n", self.ns[0], "link", "add", self.replica_dev[0], "type", "veth", "peer", "name",
           self.replica_dev[1], "netns", self.ns[1])
        for i, ns in enumerate(self.ns):
            ip("-n", ns, "addr", "add", f"{self.replica_addr[i]}/30", "dev", self.replica_dev[i])
            ip("-n", ns, "link", "set", self.replica_dev[i], "up")
        return self

    def cut(self):
        ip("-n", self.ns[0], "link", "set", self.replica_dev[0], "down")

    def heal(self):
        ip("-n", self.ns[0], "link", "set", self.replica_dev[0], "up")

    def destroy(self):
        # Deleting a namespace destroys its veth ends, and with them their
        # peers in the root namespace.
        for ns in self.made:
            ip("netns", "del", ns, check=False)


@pytest.fixture
def netns():
    probe = f"rbprobe{os.getpid()}"
    try:
        ip("netns", "add", probe)
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        pytest.skip(f"ip netns is not permitted here: {getattr(e, 'stderr', e)}")
    ip("netns", "del", probe, check=False)
    n = Netns()
    try:
        n.create()
    except subprocess.CalledProcessError as e:
        n.destroy()
        raise AssertionError(f"{' '.join(e.cmd)}: {e.stderr}") from None
    yield n
    n.destroy()


class Tcp:
    """A nonblocking TCP stream to host:port, in streamcheck's transport
    shape (its own Client dials 127.0.0.1 only)."""

    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=WAIT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)

    def send(self, data):
        return self.sock.send(data)

    def recv(self, n):
        return self.sock.recv(n)

    def flush(self):
        pass


def start_node(make_daemon, net, conninfo, tmp_path, i):
    secret = tmp_path / f"secret{i}"
    secret.write_text(SECRET + "\n")
    os.chmod(secret, 0o600)
    j = 1 - i
    extra = (f'[cluster]\nnode_id = {i + 1}\ncluster_id = "part"\nsecret_file = "{secret}"\n'
             f'address = "{net.replica_addr[i]}"\nport = {REPLICA_PORT}\n'
             f'[[cluster.peer]]\nid = {j + 1}\naddress = "{net.replica_addr[j]}"\n'
             f'port = {REPLICA_PORT}\n')
    host = net.client_addr[i]
    listeners = (f'[[listener]]\ntransport = "tcp"\naddress = "{host}"\nport = {CLIENT_PORT}\n'
                 f'[[listener]]\ntransport = "http"\naddress = "{host}"\nport = {HTTP_PORT}\n')
    d = make_daemon(shards=2, storage="postgres", conninfo=conninfo, extra=extra,
                    listeners=listeners, wrap=["ip", "netns", "exec", net.ns[i]])
    d.host = host
    d.port = CLIENT_PORT
    return d


def state(d):
    c = http.client.HTTPConnection(d.host, HTTP_PORT, timeout=WAIT_S)
    try:
        c.request("GET", "/v1/cluster")
        return json.loads(c.getresponse().read())
    finally:
        c.close()


def link(d):
    return state(d)["peers"][0]


def test_partitioned_replica_plane_loses_nothing_and_heals(netns, make_daemon, pg_db, tmp_path):
    seed = int(os.environ.get("RINGBUS_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    nodes = [start_node(make_daemon, netns, pg_db.conninfo, tmp_path, i) for i in (0, 1)]
    drv = Driver()
    try:
        deadline = time.monotonic() + WAIT_S
        while not all(link(d)["link"] == "up" for d in nodes):
            assert time.monotonic() < deadline, f"no link: {[state(d) for d in nodes]}"
            time.sleep(0.05)
        topics = [f"np{i}" for i in range(3)]

        def client(cls, d, name):
            return cls(drv, d.port, name, transport=lambda port: Tcp(d.host, port))

        pubs = [client(Publisher, nodes[i], f"p{i}") for i in (0, 1)]
        subs = [client(Subscriber, nodes[i % 2], f"s{i}") for i in range(4)]
        drv.run_until(lambda: all(p.started for p in pubs) and all(s.epoch for s in subs), WAIT_S,
                      "STARTED")
        for s in subs:
            s.mutate(adds=[(t, 0) for t in topics])
        drv.run_until(lambda: all(1 in s.completed for s in subs), WAIT_S, "catch-up")

        def load(steps):
            for step in range(steps):
                for p in pubs:
                    for _ in range(rng.randint(0, 5)):
                        p.publish(rng.choice(topics), f"{p.name}:{step}:{rng.random()}")
                for _ in range(rng.randint(1, 3)):
                    drv.step(0.01)

        def heads():
            drv.run_until(lambda: all(not p.inflight for p in pubs), WAIT_S, "acks")
            return {t: max((q for p in pubs for q in p.acks.get(t, [])), default=0)
                    for t in topics}

        def reach(want, what):
            for s in subs:
                drv.run_until(lambda: all(s.expect.get(t) == want[t] + 1 for t in topics), WAIT_S,
                              f"{s.name} to reach {want} {what}: {s.expect} {s.problems}")
                assert s.problems == [] and s.errors == [], (s.name, s.problems, s.errors)

        load(10)
        batches_before = link(nodes[1])["batches_in"]
        assert batches_before >= 1, state(nodes[1])  # the link carried the load
        netns.cut()
        # Both nodes go on publishing while they find the link dead.
        deadline = time.monotonic() + WAIT_S
        while link(nodes[0])["link"] == "up" or link(nodes[1])["link"] == "up":
            assert time.monotonic() < deadline, f"the cut link stayed up: {state(nodes[0])}"
            load(1)
        load(15)
        # Still cut: what the other node committed reaches every subscriber
        # through the sequencers' hole reads from Postgres, live.
        during = heads()
        reach(during, "while the link is cut")
        assert link(nodes[0])["link"] != "up" and link(nodes[1])["link"] != "up"
        holes = [state(d)["holes_fetched"] for d in nodes]
        assert all(h >= 1 for h in holes), [state(d) for d in nodes]
        batches_cut = link(nodes[1])["batches_in"]
        netns.heal()
        deadline = time.monotonic() + WAIT_S
        while not all(link(d)["link"] == "up" for d in nodes):
            assert time.monotonic() < deadline, f"the link did not come back: {state(nodes[0])}"
            load(1)
        load(10)
        for t in topics:
            pubs[0].publish(t, "marker")
        final = heads()
        reach(final, "after the heal")
        # Every subscriber saw each topic dense from seq 1 to its head (so
        # each acknowledged message once, in order), the same payloads.
        views = [sorted((t, q, bytes(p)) for (t, q, p, _) in s.messages) for s in subs]
        assert all(v == views[0] for v in views)
        assert len(views[0]) == sum(final.values())
        acked = sorted((t, q) for p in pubs for t, qs in p.acks.items() for q in qs)
        assert acked == sorted((t, q) for t, q, _ in views[0])
        assert all(link(d)["link_drops"] >= 1 for d in nodes)
        # After the heal the link carries batches again.
        assert link(nodes[1])["batches_in"] > batches_cut, [state(d) for d in nodes]
    except AssertionError as e:
        raise AssertionError(f"seed {seed}: {e}") from e
    finally:
        for c in list(drv.sel.get_map().values()):
            c.data.close()
