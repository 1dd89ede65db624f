"""libringbus.so exports the API of client/ringbus.h and nothing else: the
library's own helpers (rb_*), common/ and the transports stay local, so a
program linking it cannot collide with them or come to depend on them."""

import re
import subprocess

from conftest import BUILD, ROOT


def exported_symbols(so):
    out = subprocess.run(["nm", "-D", "--defined-only", str(so)], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    names = set()
    for line in out.splitlines():
        fields = line.split()
        if fields:
            names.add(fields[-1].split("@")[0])
    return names


def header_api():
    text = (ROOT / "client" / "ringbus.h").read_text()
    return set(re.findall(r"^RINGBUS_API [^(]*?\b(ringbus_[a-z0-9_]+)\(", text, re.M))


def test_shared_library_exports_only_ringbus_symbols():
    names = exported_symbols(BUILD / "libringbus.so")
    foreign = sorted(n for n in names if not n.startswith("ringbus_"))
    assert not foreign, f"libringbus.so exports non-API symbols: {foreign[:20]}"


def test_shared_library_exports_every_declared_function():
    declared = header_api()
    assert "ringbus_connect" in declared and "ringbus_version" in declared
    names = exported_symbols(BUILD / "libringbus.so")
    assert names == declared, (f"missing: {sorted(declared - names)}, "
                               f"undeclared: {sorted(names - declared)}")
