#!/bin/sh
# Installs proxyd as a systemd service on Debian: the package (system Python), a
# dedicated user, /etc/proxyd/proxyd.yaml (kept if present) and the unit.
set -eu
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
pip install --quiet .
PROXYD="$(command -v proxyd)"
id proxyd >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin proxyd
install -d -m 0755 /etc/proxyd
[ -f /etc/proxyd/proxyd.yaml ] || install -m 0644 etc/proxyd.yaml /etc/proxyd/proxyd.yaml
sed "s#/usr/local/bin/proxyd#$PROXYD#g" systemd/proxyd.service > /etc/systemd/system/proxyd.service
chmod 0644 /etc/systemd/system/proxyd.service
systemctl daemon-reload
echo "installed: systemctl enable --now proxyd; systemctl reload proxyd; journalctl -u proxyd"
