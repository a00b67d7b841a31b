"""systemd/proxyd.service, rendered as scripts/install.sh renders it (the real `proxyd`
path substituted), passes `systemd-analyze verify` and says what the issue asks."""
import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import REPO, run_cli

UNIT = REPO / "systemd" / "proxyd.service"
INSTALL = REPO / "scripts" / "install.sh"


def _proxyd_path() -> str:
    beside = Path(sys.executable).parent / "proxyd"
    return str(beside) if beside.exists() else (shutil.which("proxyd") or "")


def _render(tmp_path) -> Path:
    """install.sh's own sed substitution, applied to the unit."""
    m = re.search(r"""sed "(s#/usr/local/bin/proxyd#\$PROXYD#g)" systemd/proxyd.service""",
                  INSTALL.read_text())
    assert m, "scripts/install.sh no longer renders the unit with sed"
    out = tmp_path / "proxyd.service"
    out.write_text(UNIT.read_text().replace("/usr/local/bin/proxyd", _proxyd_path()))
    return out


def _service(path: Path) -> dict:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str
    cp.read(path)
    return dict(cp["Service"])


def test_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    if not _proxyd_path():
        pytest.skip("the proxyd console script is not installed")
    unit = _render(tmp_path)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "proxyd.service" not in r.stdout + r.stderr, r.stdout + r.stderr


def test_unit_settings(tmp_path):
    svc = _service(_render(tmp_path))
    exe = _proxyd_path() or "/usr/local/bin/proxyd"
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
