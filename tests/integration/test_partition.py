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
counters moved.

After the heal, node 2 is killed with SIGKILL twice, each time in the
middle of a burst on both nodes while node 1 goes on publishing: node 1's
subscribers still see every message node 2 acknowledged before it died.
Node 2's subscribers reconnect by hand after each restart and resume from
the last seq they saw. The first restart has the replica link up. The
second has it cut again, so that what node 1 commits from then on reaches
node 2's resumed subscribers only by hole reads of the fresh process (with
the link up, whether a hole opens depends on when the redial lands), and
node 2's new commits reach node 1's subscribers only by node 1's. After the
last heal, the checker runs over every subscriber's whole view, across its
connections: each topic dense from seq 1, the same payloads everywhere,
every acknowledged message in it, and nothing unacknowledged but what node
2 had in flight when it was killed."""

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


def wait_links(nodes, want_up, what, load):
    """Loads until every node's link is up (want_up) or none is."""
    deadline = time.monotonic() + WAIT_S
    while not all((link(d)["link"] == "up") == want_up for d in nodes):
        assert time.monotonic() < deadline, f"{what}: {[state(d) for d in nodes]}"
        load(1)


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
        # Every publisher that ever ran (acks), and what each sent (payloads).
        all_pubs = list(pubs)
        # Per subscriber slot: its connections in order (a slot of node 2
        # gets a new one after the restart).
        lives = [[s] for s in subs]

        def load(steps, on=None):
            for step in range(steps):
                for p in on or pubs:
                    for _ in range(rng.randint(0, 5)):
                        p.publish(rng.choice(topics), f"{p.name}:{step}:{rng.random()}")
                for _ in range(rng.randint(1, 3)):
                    drv.step(0.01)

        def heads(what=""):
            drv.run_until(lambda: all(not p.inflight for p in pubs), WAIT_S,
                          f"acks {what}: in flight {[(p.name, len(p.inflight)) for p in pubs]}")
            return {t: max((q for p in all_pubs for q in p.acks.get(t, [])), default=0)
                    for t in topics}

        def reach(want, what, among=None):
            for s in among or subs:
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
        during = heads("while the link is cut")
        reach(during, "while the link is cut")
        assert link(nodes[0])["link"] != "up" and link(nodes[1])["link"] != "up"
        holes = [state(d)["holes_fetched"] for d in nodes]
        assert all(h >= 1 for h in holes), [state(d) for d in nodes]
        batches_cut = link(nodes[1])["batches_in"]
        netns.heal()
        wait_links(nodes, True, "the link did not come back", load)
        load(10)
        healed = heads("after the heal")
        reach(healed, "after the heal")
        assert all(link(d)["link_drops"] >= 1 for d in nodes)
        # After the heal the link carries batches again.
        assert link(nodes[1])["batches_in"] > batches_cut, [state(d) for d in nodes]

        # Twice: kill -9 of node 2 in the middle of a burst on both nodes
        # (some of its publishes in flight: committed or not, never
        # acknowledged) while node 1 goes on publishing; node 2 restarts
        # with the replica link up the first time, cut the second time.
        dead = []
        for gen, cut in ((1, False), (2, True)):
            load(5)
            victim = pubs[1]
            for _ in range(20):
                victim.publish(rng.choice(topics), f"{victim.name}:kill:{rng.random()}")
            nodes[1].kill9()
            dead.append(victim)
            assert nodes[1].bad_log_lines() == [], nodes[1].log()[-4000:]
            survivors = [lives[slot][-1] for slot in (0, 2)]
            gone = [lives[slot][-1] for slot in (1, 3)]
            drv.run_until(lambda: victim.closed and all(s.closed for s in gone), WAIT_S,
                          f"node 2's clients to see kill {gen}")
            pubs = [pubs[0]]
            load(10)
            # Node 1's subscribers: everything node 2 acknowledged before
            # it died, and node 1's own commits since.
            reach(heads(f"after kill {gen}"), f"after kill {gen} of node 2", survivors)
            holes_killed = state(nodes[0])["holes_fetched"]
            if cut:
                netns.cut()
            load(3)
            nodes[1].start()
            assert state(nodes[1])["holes_fetched"] == 0  # a fresh process
            load(3)
            restarted = [client(Subscriber, nodes[1], f"s{slot}r{gen}") for slot in (1, 3)]
            p1 = client(Publisher, nodes[1], f"p1r{gen}")
            drv.run_until(lambda: p1.started and all(s.epoch for s in restarted), WAIT_S,
                          f"STARTED after restart {gen}")
            for slot, s in zip((1, 3), restarted):
                # The epoch is the store's: the old cursors are still valid.
                assert s.epoch == lives[slot][0].epoch, (s.epoch, lives[slot][0].epoch)
                s.mutate(adds=[(t, max(x.last.get(t, 0) for x in lives[slot])) for t in topics])
                lives[slot].append(s)
            drv.run_until(lambda: all(1 in s.completed for s in restarted), WAIT_S,
                          f"catch-up from the cursors after restart {gen}")
            subs = survivors + restarted
            pubs = [pubs[0], p1]
            all_pubs.append(p1)
            for t in topics:
                p1.publish(t, f"{p1.name}:first:{t}")
            load(10)
            if cut:
                # Still cut: what each node commits since the restart
                # reaches the other node's subscribers only through its
                # hole reads.
                what = f"after restart {gen}, the link cut"
                reach(heads(what), what)
                assert link(nodes[1])["link"] != "up", state(nodes[1])
                after_restart = [state(d)["holes_fetched"] for d in nodes]
                assert after_restart[1] >= 1, state(nodes[1])
                assert after_restart[0] > holes_killed, (holes_killed, state(nodes[0]))
                netns.heal()
            wait_links(nodes, True, f"the link did not come back after restart {gen}", load)
            load(10)
            reach(heads(f"after restart {gen}"), f"after restart {gen}")
        for t in topics:
            pubs[0].publish(t, "marker")
        final = heads("at the end")
        reach(final, "at the end")
        assert link(nodes[1])["batches_in"] >= 1, [state(d) for d in nodes]

        # Every subscriber slot saw each topic dense from seq 1 to its head
        # (so each acknowledged message once, in order), the same payloads,
        # across its connections.
        for life in lives:
            for s in life:
                assert s.problems == [] and s.errors == [], (s.name, s.problems, s.errors)
        views = [sorted((t, q, bytes(p)) for s in life for (t, q, p, _) in s.messages)
                 for life in lives]
        assert all(v == views[0] for v in views), [len(v) for v in views]
        assert [(t, q) for t, q, _ in views[0]] == sorted(
            (t, q) for t in topics for q in range(1, final[t] + 1))
        seen = {(t, q): p for t, q, p in views[0]}
        acked = {(t, q) for p in all_pubs for t, qs in p.acks.items() for q in qs}
        assert acked <= set(seen)
        # What was seen but never acknowledged: publishes node 2 had in
        # flight when it was killed, and only those.
        extra = sorted(k for k in seen if k not in acked)
        in_flight = sum(len(d.inflight) for d in dead)
        assert len(extra) <= in_flight, (extra, [d.inflight for d in dead])
        prefixes = tuple(f"{d.name}:".encode() for d in dead)
        assert all(seen[k].startswith(prefixes) for k in extra), [seen[k] for k in extra]
        print(f"holes fetched: cut {holes}, after the second restart {after_restart}; "
              f"in flight at the kills {[len(d.inflight) for d in dead]}, seen "
              f"unacknowledged {len(extra)}")
    except AssertionError as e:
        raise AssertionError(f"seed {seed}: {e}") from e
    finally:
        for c in list(drv.sel.get_map().values()):
            c.data.close()
