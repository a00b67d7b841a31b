#!/usr/bin/env bash
# Builds tests/peers/xds-server (a go-control-plane v0.14.0 / envoy v1.40.0 management server,
# versions pinned in its go.mod and go.sum) into a cache outside the repo:
#   ${PROXYD_PEERS_DIR:-~/.cache/proxyd-peers}/xds-server-<hash of its sources>
# and links ${PROXYD_PEERS_DIR}/xds-server to it. Skips the build when that binary exists.
# Without Go it says so and exits 0 (the tests that need it then skip with that reason).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="$here/xds-server"
out_dir="${PROXYD_PEERS_DIR:-$HOME/.cache/proxyd-peers}"
go_bin="$(command -v go || true)"
[ -z "$go_bin" ] && [ -x /usr/local/go/bin/go ] && go_bin=/usr/local/go/bin/go
if [ -z "$go_bin" ]; then
    echo "build_xds_server: no Go toolchain; the fleet tests will skip" >&2
    exit 0
fi
hash="$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -c1-16)"
bin="$out_dir/xds-server-$hash"
mkdir -p "$out_dir"
if [ ! -x "$bin" ]; then
    start=$(date +%s)
    (cd "$src" && GOFLAGS=-mod=readonly GOTOOLCHAIN=local CGO_ENABLED=0 "$go_bin" build -trimpath -o "$bin.tmp" .)
    mv "$bin.tmp" "$bin"
    echo "build_xds_server: built $bin in $(( $(date +%s) - start ))s"
fi
ln -sfn "$bin" "$out_dir/xds-server"
echo "$out_dir/xds-server"
