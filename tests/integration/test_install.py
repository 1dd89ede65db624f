"""`make install` honours PREFIX and DESTDIR, and what it installs is usable:
a C program built against the installed header and pkg-config file, linked
with the installed shared library, publishes to the real daemon."""

import os
import pathlib
import subprocess

from conftest import ROOT

PROGRAM = r"""
#include <ringbus.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    ringbus_conn *conn = NULL;
    ringbus_error err = {0};
    if (ringbus_connect(argv[1], NULL, &conn, &err) != 0) {
        fprintf(stderr, "connect: %s\n", err.message);
        return 1;
    }
    uint64_t seq = 0;
    for (int i = 0; i < 3; i++) {
        if (ringbus_publish_sync(conn, "installed", 9, "hello", 5, &seq, &err) != 0) {
            fprintf(stderr, "publish: %s\n", err.message);
            return 1;
        }
    }
    printf("%llu\n", (unsigned long long)seq);
    ringbus_close(conn);
    return argc == 2 ? 0 : 1;
}
"""


def test_make_install_into_destdir_gives_a_usable_library(tmp_path, daemon):
    dest = tmp_path / "root"
    out = subprocess.run(["make", "-s", "--no-print-directory", "install", "VARIANT=release",
                          "PREFIX=/usr", f"DESTDIR={dest}"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    for rel in ("usr/bin/ringbusd", "usr/bin/ringbus", "usr/include/ringbus.h",
                "usr/lib/libringbus.a", "usr/lib/libringbus.so.0", "usr/lib/pkgconfig/ringbus.pc",
                "usr/lib/systemd/system/ringbusd.service", "usr/lib/sysusers.d/ringbusd.conf",
                "usr/lib/tmpfiles.d/ringbusd.conf", "usr/share/ringbus/ringbusd.example.toml"):
        assert (dest / rel).exists(), rel
    unit = (dest / "usr/lib/systemd/system/ringbusd.service").read_text()
    assert "ExecStart=/usr/bin/ringbusd " in unit
    env = dict(os.environ, PKG_CONFIG_SYSROOT_DIR=str(dest),
               PKG_CONFIG_PATH=str(dest / "usr/lib/pkgconfig"))
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "ringbus"], env=env,
                           capture_output=True, text=True, check=True).stdout.split()
    # ringbus.pc carries the version the binaries report (test_version.py).
    pc_version = subprocess.run(["pkg-config", "--modversion", "ringbus"], env=env,
                                capture_output=True, text=True, check=True).stdout.strip()
    cli = subprocess.run([str(dest / "usr/bin/ringbus"), "--version"], capture_output=True,
                         text=True, check=True, timeout=30).stdout.split()
    assert cli == ["ringbus", pc_version]
    src = tmp_path / "prog.c"
    src.write_text(PROGRAM)
    exe = tmp_path / "prog"
    subprocess.run(["cc", "-std=c11", "-Wall", "-Werror", str(src), "-o", str(exe), *flags],
                   check=True, timeout=120)
    run = subprocess.run([str(exe), daemon.url], capture_output=True, text=True, timeout=30,
                         env=dict(os.environ, LD_LIBRARY_PATH=str(dest / "usr/lib")))
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "3"
