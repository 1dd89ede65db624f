"""The shape of server/ (docs/DESIGN.md §5, README "Layout"), read off the
built objects: which server/ file calls into which is the graph of each
object's undefined symbols resolved against the others' definitions.

- No call cycle spans more than two files, and the only two-file cycle is
  session <-> stream (the stream is the session's, and answers through it).
- shard.c runs the thread, the turn and the registered hooks: besides
  common/ it calls only the mailbox and the free lists (the ground), never
  a subsystem, a transport or a store by name."""

import subprocess

from conftest import BUILD

OBJ = BUILD / "obj"
DAEMON_DIRS = ["common", "config", "server", "storage", "transports"]
ALLOWED_PAIRS = {frozenset({"server/session", "server/stream"})}
SHARD_GROUND = {"server/mailbox", "server/freelist"}


def symbols(obj, *flags):
    out = subprocess.run(["nm", *flags, str(obj)], capture_output=True, text=True, timeout=30, check=True)
    return {line.split()[-1] for line in out.stdout.splitlines() if line.strip()}


def call_graph(dirs):
    """file -> the files it calls, for the daemon's objects in dirs
    (files named dir/stem)."""
    objs = {f"{d}/{o.stem}": o for d in dirs for o in sorted((OBJ / d).glob("*.o"))}
    assert len(objs) > 10, f"no daemon objects under {OBJ}"
    defined = {}
    for name, o in objs.items():
        for s in symbols(o, "--defined-only", "--extern-only"):
            defined[s] = name
    return {
        name: {defined[s] for s in symbols(o, "--undefined-only") if s in defined} - {name}
        for name, o in objs.items()
    }


def components(graph):
    """Strongly connected components (Tarjan), each a set of file stems."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            out.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_components_finds_a_cycle_it_is_given():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert sorted(map(sorted, components(graph))) == [["a", "b", "c"], ["d"]]


def test_no_call_cycle_in_server_but_session_and_stream():
    graph = call_graph(["server"])
    bad = [c for c in components(graph) if len(c) > 1 and frozenset(c) not in ALLOWED_PAIRS]
    edges = {f: sorted(graph[f] & c) for c in bad for f in sorted(c)}
    assert not bad, f"call cycles in server/: {[sorted(c) for c in bad]}; edges inside them: {edges}"


def test_shard_calls_no_subsystem_by_name():
    graph = call_graph(DAEMON_DIRS)
    called = {f for f in graph["server/shard"] if not f.startswith("common/")}
    assert called <= SHARD_GROUND, f"shard.c calls {sorted(called - SHARD_GROUND)} by name"
