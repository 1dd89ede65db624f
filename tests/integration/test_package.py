"""Packaging (issue 14): `make deb` builds the Debian package from what
`make install` installs, lintian reports no error on it, and the man pages
ringbusd(8) and ringbus(1) name every option their program's --help names
and render without a groff warning."""

import os
import pathlib
import re
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
BUILD = pathlib.Path(os.environ.get("RINGBUS_BUILD", "build/release"))
if not BUILD.is_absolute():
    BUILD = REPO / BUILD

PACKAGE_FILES = [
    "./usr/bin/ringbusd", "./usr/bin/ringbus", "./usr/lib/libringbus.so.0",
    "./usr/lib/libringbus.so", "./usr/lib/libringbus.a", "./usr/include/ringbus.h",
    "./usr/lib/pkgconfig/ringbus.pc", "./usr/lib/systemd/system/ringbusd.service",
    "./usr/lib/sysusers.d/ringbusd.conf", "./usr/lib/tmpfiles.d/ringbusd.conf",
    "./usr/share/ringbus/ringbusd.example.toml", "./usr/share/man/man8/ringbusd.8.gz",
    "./usr/share/man/man1/ringbus.1.gz", "./usr/share/doc/ringbus/copyright",
    "./usr/share/doc/ringbus/changelog.Debian.gz",
]


# A make run by this test under `make -j2 test` would inherit the parent's
# jobserver flags without its descriptors, and warn about it on the output
# this test reads.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}


def run(cmd, timeout=300, **kw):
    return subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout, env=CLEAN_ENV, **kw)


@pytest.fixture(scope="module")
def deb():
    result = run(["make", "--no-print-directory", "deb"])
    assert result.returncode == 0, result.stdout
    path = pathlib.Path(result.stdout.strip().splitlines()[-1])
    path = path if path.is_absolute() else REPO / path
    assert path.is_file() and path.suffix == ".deb", result.stdout
    return path


def test_deb_holds_every_installed_file(deb):
    listing = run(["dpkg-deb", "-c", str(deb)]).stdout
    names = {line.split()[5] for line in listing.splitlines()}
    missing = [f for f in PACKAGE_FILES if f not in names]
    assert not missing, listing
    owners = {line.split()[1] for line in listing.splitlines()}
    assert owners == {"root/root"}, owners
    info = run(["dpkg-deb", "-f", str(deb), "Package", "Version", "Depends"]).stdout
    assert "Package: ringbus" in info and "liburing" in info and "libpq5" in info, info
    version = run(["make", "--no-print-directory", "version"]).stdout.strip()
    assert f"Version: {version}-1" in info, info


def test_lintian_reports_no_error(deb):
    result = run(["lintian", "--pedantic", "--no-tag-display-limit", str(deb)])
    print(result.stdout)
    errors = [line for line in result.stdout.splitlines() if line.startswith("E:")]
    assert not errors, result.stdout
    assert result.returncode in (0, 1), result.stdout  # 1: warnings only


def help_options(binary):
    result = subprocess.run([str(BUILD / binary), "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=10)
    assert result.returncode == 0, result.stdout
    return result.stdout, sorted(set(re.findall(r"(?<![\w-])--?[a-z][a-z-]*", result.stdout)))


def man_text(page):
    # The roff source with its escaped hyphens as plain ones, and no font
    # changes (\fB, \fI, \fR, \fP).
    text = (REPO / "man" / page).read_text().replace("\\-", "-")
    return re.sub(r"\\f[BIRP]", "", text)


@pytest.mark.parametrize("binary,page", [("ringbusd", "ringbusd.8"), ("ringbus", "ringbus.1")])
def test_man_page_names_every_help_option(binary, page):
    text, options = help_options(binary)
    man = man_text(page)
    missing = [o for o in options if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", man)]
    assert not missing, f"{page} lacks {missing} from {binary} --help"
    if binary == "ringbus":
        commands = re.findall(r"^  ([a-z]+) ", text.split("commands:")[1], re.M)
        assert len(commands) >= 7, commands
        assert all(re.search(rf"^\.B {c}\b", man, re.M) for c in commands), commands


@pytest.mark.parametrize("page", ["ringbusd.8", "ringbus.1"])
def test_man_page_renders_without_warnings(page):
    # groff's warnings go to stderr; the rendered page to stdout.
    result = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", f"man/{page}"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, timeout=30,
                            env={**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_deb_installs_and_removes_in_a_scratch_root(deb, tmp_path):
    # dpkg --root with chrootless maintainer scripts: the postinst acts on
    # DPKG_ROOT (the scratch root), never on this machine.
    root = tmp_path / "root"
    (root / "var/lib/dpkg/updates").mkdir(parents=True)
    (root / "var/lib/dpkg/info").mkdir()
    (root / "etc").mkdir()
    (root / "var/lib/dpkg/status").write_text("")
    dpkg = ["dpkg", f"--root={root}", "--force-script-chrootless", "--force-depends",
            "--force-not-root", "--log=/dev/null"]
    result = run(dpkg + ["-i", str(deb)])
    assert result.returncode == 0, result.stdout
    passwd = (root / "etc/passwd").read_text()
    assert any(line.startswith("ringbus:") and line.endswith(":/usr/sbin/nologin")
               for line in passwd.splitlines()), passwd
    assert (root / "var/lib/ringbus").is_dir() and (root / "etc/ringbus").is_dir()
    assert os.access(root / "usr/bin/ringbusd", os.X_OK)
    version = subprocess.run([str(root / "usr/bin/ringbusd"), "--version"], text=True,
                             stdout=subprocess.PIPE, timeout=10).stdout
    assert version.startswith("ringbusd "), version
    result = run(dpkg + ["-r", "ringbus"])
    assert result.returncode == 0, result.stdout
    assert not (root / "usr/bin/ringbusd").exists()
    assert not (root / "usr/lib/systemd/system/ringbusd.service").exists()
    # The user and the state directory stay (stored messages live there).
    assert "ringbus:" in (root / "etc/passwd").read_text()
    assert (root / "var/lib/ringbus").is_dir()
