#!/bin/sh
# Installs proxyd as a systemd service on Debian, without touching the system Python:
#   - a venv in $PREFIX (default /opt/proxyd) with proxyd and its dependencies in it,
#   - /usr/local/bin/proxyd, a link to the venv's console script (the path the unit runs),
#   - the system user `proxyd`, /etc/proxyd/proxyd.yaml (kept if present),
#   - /etc/systemd/system/proxyd.service, then `systemctl daemon-reload`.
# Run it again to upgrade. ROOT=DIR installs into DIR as if it were / (no user, no
# daemon-reload; the tests verify the unit written there).
set -eu
cd "$(dirname "$0")/.."
PREFIX="${PREFIX:-/opt/proxyd}"
ROOT="${ROOT:-}"
[ -n "$ROOT" ] || [ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
python3 -m venv "$ROOT$PREFIX"
"$ROOT$PREFIX/bin/pip" install --quiet --upgrade .
install -d -m 0755 "$ROOT/usr/local/bin" "$ROOT/etc/proxyd" "$ROOT/etc/systemd/system"
ln -sfn "$PREFIX/bin/proxyd" "$ROOT/usr/local/bin/proxyd"
[ -f "$ROOT/etc/proxyd/proxyd.yaml" ] || install -m 0644 etc/proxyd.yaml "$ROOT/etc/proxyd/proxyd.yaml"
install -m 0644 systemd/proxyd.service "$ROOT/etc/systemd/system/proxyd.service"
[ -z "$ROOT" ] || exit 0
id proxyd >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin proxyd
systemctl daemon-reload
echo "installed in $PREFIX: systemctl enable --now proxyd; systemctl reload proxyd; journalctl -u proxyd"
