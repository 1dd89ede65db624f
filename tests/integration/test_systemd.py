"""The systemd unit: rendered as `make install` renders it, with ExecStart
pointing at the built daemon ($RINGBUS_BUILD/ringbusd, default
build/release), it must pass `systemd-analyze verify` without a word about
ringbusd.service. The sysusers and tmpfiles snippets must parse too."""

import os
import pathlib
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "systemd"


def daemon_path():
    build = pathlib.Path(os.environ.get("RINGBUS_BUILD", "build/release"))
    if not build.is_absolute():
        build = REPO / build
    return build / "ringbusd"


def run(cmd, **kwargs):
    return subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60, **kwargs
    )


@pytest.fixture
def rendered_unit(tmp_path):
    daemon = daemon_path()
    assert os.access(daemon, os.X_OK), f"{daemon} is not built (run make first)"
    text = (SYSTEMD / "ringbusd.service").read_text()
    assert "@PREFIX@/bin/ringbusd " in text
    text = text.replace("@PREFIX@/bin/ringbusd", str(daemon)).replace("@PREFIX@", "/usr")
    assert "@" not in text.replace("$MAINPID", "")
    unit = tmp_path / "ringbusd.service"
    unit.write_text(text)
    return unit


def test_systemd_analyze_is_installed():
    assert shutil.which("systemd-analyze"), "systemd-analyze missing (package systemd)"


def test_unit_passes_systemd_analyze_verify(rendered_unit):
    result = run(["systemd-analyze", "verify", "--man=no", str(rendered_unit)])
    about_unit = [line for line in result.stdout.splitlines() if "ringbusd.service" in line]
    assert result.returncode == 0 and not about_unit, (
        f"systemd-analyze verify exited {result.returncode}:\n{result.stdout}"
    )


def test_unit_keeps_the_required_settings():
    text = (SYSTEMD / "ringbusd.service").read_text()
    settings = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    assert settings["Type"] == "notify"
    assert settings["ExecStart"] == "@PREFIX@/bin/ringbusd --config /etc/ringbus/ringbusd.toml"
    assert settings["ExecReload"] == "@PREFIX@/bin/ringbusd --reload --pid $MAINPID"
    assert settings["LimitMEMLOCK"] == "infinity"
    assert settings["LimitNOFILE"] == "1048576"
    assert settings["Restart"] == "on-failure"
    assert settings["RestrictAddressFamilies"] == "AF_INET AF_INET6 AF_UNIX"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectControlGroups", "RestrictNamespaces",
                "LockPersonality", "MemoryDenyWriteExecute"):
        assert settings[key] == "yes", key
    assert settings["ProtectSystem"] == "strict"
    assert settings["SystemCallArchitectures"] == "native"
    assert settings["StateDirectory"] == "ringbus"
    assert settings["ConfigurationDirectory"] == "ringbus"
    # io_uring must stay allowed: no seccomp filter at all.
    assert "SystemCallFilter" not in settings
    # The stop timeout must exceed the default close grace (2 s).
    stop = settings["TimeoutStopSec"]
    assert stop.endswith("s") and int(stop[:-1]) > 2


def sysusers_into(root):
    (root / "etc").mkdir(exist_ok=True)
    return run(["systemd-sysusers", "--root", str(root), str(SYSTEMD / "ringbusd.sysusers")])


def test_sysusers_snippet_creates_the_ringbus_user(tmp_path):
    result = sysusers_into(tmp_path)
    assert result.returncode == 0 and "ringbusd.sysusers" not in result.stdout, result.stdout
    passwd = (tmp_path / "etc" / "passwd").read_text()
    assert any(line.startswith("ringbus:") for line in passwd.splitlines()), passwd


def test_tmpfiles_snippet_parses_and_names_known_users(tmp_path):
    # The ringbus user and group must resolve: create them in a scratch root.
    assert sysusers_into(tmp_path).returncode == 0
    snippet = str(SYSTEMD / "ringbusd.tmpfiles")
    # --clean parses every line and resolves owners without chown, so it
    # works unprivileged; --create additionally needs root.
    modes = ["--clean"] + (["--create"] if os.geteuid() == 0 else [])
    for mode in modes:
        result = run(["systemd-tmpfiles", "--root", str(tmp_path), mode, snippet])
        assert result.returncode == 0 and "ringbusd.tmpfiles" not in result.stdout, result.stdout
    if os.geteuid() == 0:
        assert (tmp_path / "var" / "lib" / "ringbus").is_dir()
        assert (tmp_path / "etc" / "ringbus").is_dir()
