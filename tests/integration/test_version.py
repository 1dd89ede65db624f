"""One semantic version everywhere: `ringbusd --version`, `ringbus
--version`, `ringbus_version()` from the shared library and ringbus.pc
(tests/integration/test_install.py) all give the VERSION file's version,
followed by the commit as build metadata in a git checkout, and VERSION
alone when git cannot be run (a tarball or `git archive` export)."""

import os
import re
import shutil
import subprocess

from conftest import BUILD, RINGBUS, RINGBUSD, ROOT

SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$")

PROGRAM = r"""
#include <stdio.h>
#include "client/ringbus.h"
int main(void)
{
    puts(ringbus_version());
    return 0;
}
"""


def version_file(root=ROOT):
    return (root / "VERSION").read_text().strip()


def tool_version(exe, name):
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    words = out.stdout.split()
    assert len(words) == 2 and words[0] == name, out.stdout
    return words[1]


def sanitizer_flags(build):
    if "asan" in build.name:
        return ["-fsanitize=address,undefined"]
    if "tsan" in build.name:
        return ["-fsanitize=thread"]
    return []


def library_version(tmp_path, build):
    """ringbus_version() of build's libringbus.so, called by a program linked
    with it (built like the library, so sanitizer runtimes match)."""
    src = tmp_path / "v.c"
    src.write_text(PROGRAM)
    exe = tmp_path / "v"
    subprocess.run(["cc", "-std=c11", *sanitizer_flags(build), f"-I{ROOT}", str(src),
                    f"-L{build}", "-lringbus", "-o", str(exe)], check=True, timeout=120)
    # The program asks for the soname, libringbus.so.0, as make install names it.
    libdir = tmp_path / "lib"
    libdir.mkdir(exist_ok=True)
    (libdir / "libringbus.so.0").symlink_to(build / "libringbus.so")
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30, check=True,
                         env=dict(os.environ, LD_LIBRARY_PATH=str(libdir)))
    return out.stdout.strip()


def test_version_file_is_a_plain_semantic_version():
    assert re.match(r"^\d+\.\d+\.\d+$", version_file()), version_file()


def test_daemon_cli_and_library_report_one_version(tmp_path):
    daemon = tool_version(RINGBUSD, "ringbusd")
    cli = tool_version(RINGBUS, "ringbus")
    lib = library_version(tmp_path, BUILD)
    assert daemon == cli == lib
    assert SEMVER.match(daemon), daemon
    base, _, meta = daemon.partition("+")
    assert base == version_file()
    assert meta == "" or re.match(r"^g[0-9a-f]{7,}(\.dirty)?$", meta), meta


def exported_tree(dest):
    """The checkout's tracked files as they are now, without .git: what
    `git archive` gives, including changes not yet committed."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True,
                           timeout=60).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def test_build_without_git_uses_the_version_file(tmp_path):
    tree = exported_tree(tmp_path / "ringbus-export")
    assert not (tree / ".git").exists()
    # git must not find this (or any enclosing) repository, nor run usefully.
    env = dict(os.environ, GIT_DIR=str(tmp_path / "no-such-git"),
               GIT_CEILING_DIRECTORIES=str(tmp_path))
    # The suite may run inside `make VARIANT=asan ...`: nothing of the outer
    # make (its variables travel in these) may reach the export's build.
    for var in ("MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES", "MAKELEVEL", "VARIANT", "BUILDDIR"):
        env.pop(var, None)
    build = tree / "build" / "release"
    targets = [str(build.relative_to(tree) / t) for t in ("ringbusd", "ringbus", "libringbus.so")]
    out = subprocess.run(["make", "-s", "-j2", "--no-print-directory", "VARIANT=release", *targets],
                         cwd=tree,
                         env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    plain = version_file(tree)
    assert tool_version(build / "ringbusd", "ringbusd") == plain
    assert tool_version(build / "ringbus", "ringbus") == plain
    assert library_version(tmp_path, build) == plain
    made = subprocess.run(["make", "-s", "--no-print-directory", "version"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    assert made.stdout.strip() == plain
    # ringbus.pc gets the same version from make install (shown, not run).
    dry = subprocess.run(["make", "-n", "--no-print-directory", "install", "PREFIX=/usr",
                          f"DESTDIR={tmp_path / 'root'}"], cwd=tree, env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert f"-e 's|@VERSION@|{plain}|g' client/ringbus.pc.in" in dry, dry[-2000:]
