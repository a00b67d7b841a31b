"""The unit that scripts/install.sh writes (installed into a scratch root: its own venv,
the /usr/local/bin/proxyd link) passes `systemd-analyze verify` against that root and says
what the issue asks."""
import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import REPO, run_cli

import proxyd

INSTALL = REPO / "scripts" / "install.sh"
EXE = "/usr/local/bin/proxyd"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """scripts/install.sh run for real with ROOT=<scratch>; pip is told (PIP_NO_DEPS, its
    own environment knob) to skip the dependencies, which the unit checks do not need."""
    rt = tmp_path_factory.mktemp("root")
    r = subprocess.run(["sh", str(INSTALL)], env=dict(os.environ, ROOT=str(rt), PIP_NO_DEPS="1"),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return rt


def test_install_links_the_venvs_console_script(root):
    link = root / EXE.lstrip("/")
    assert os.readlink(link) == "/opt/proxyd/bin/proxyd"
    r = subprocess.run([str(root / "opt/proxyd/bin/proxyd"), "--version"], capture_output=True,
                       text=True, timeout=60)
    assert r.stdout.strip() == "proxyd " + proxyd.__version__, r.stdout + r.stderr
    assert (root / "etc/proxyd/proxyd.yaml").read_bytes() == (REPO / "etc/proxyd.yaml").read_bytes()


def _service(path: Path) -> dict:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str
    cp.read(path)
    return dict(cp["Service"])


def test_systemd_analyze_verify(root):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # verify --root resolves the unit's dependencies (sysinit.target...) inside the root.
    (root / "usr/lib/systemd").mkdir(parents=True, exist_ok=True)
    os.symlink("/usr/lib/systemd/system", root / "usr/lib/systemd/system")
    unit = root / "etc/systemd/system/proxyd.service"
    r = subprocess.run(["systemd-analyze", "verify", "--root", str(root), str(unit)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "proxyd.service" not in r.stdout + r.stderr, r.stdout + r.stderr


def test_unit_settings(root):
    svc = _service(root / "etc/systemd/system/proxyd.service")
    exe = EXE
    assert (svc["Type"], svc["NotifyAccess"], svc["KillMode"]) == ("notify", "all", "mixed")
    assert svc["ExecStartPre"].startswith(exe + " check -c /etc/proxyd/proxyd.yaml")
    assert svc["ExecStart"].startswith(exe + " run -c /etc/proxyd/proxyd.yaml")
    assert svc["ExecReload"].startswith(exe + " reload")
    assert svc["RuntimeDirectory"] == "proxyd"
    assert svc["Restart"] == "on-failure"
    assert svc["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert svc[key] == "yes", key
    assert svc["ProtectSystem"] == "strict"
    drain = float(re.search(r"--drain-time-s (\S+)", svc["ExecStart"]).group(1))
    parent = float(re.search(r"--parent-shutdown-time-s (\S+)", svc["ExecStart"]).group(1))
    # A stop waits for the drain (plus the master's 5 s grace); a reload's old master
    # may live until the parent-shutdown time: systemd must not SIGKILL before either.
    assert float(svc["TimeoutStopSec"]) > max(drain + 5, parent)


def test_shipped_config_passes_the_units_check():
    """ExecStartPre runs `proxyd check` on the config install.sh installs."""
    r = run_cli("check", "-c", REPO / "etc" / "proxyd.yaml")
    assert r.returncode == 0, r.stderr
