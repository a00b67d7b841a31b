#!/bin/sh
# Builds the Go test peers the tracing tests run against, at pinned versions:
#   jaeger-all-in-one  github.com/jaegertracing/jaeger v1.75.0, cmd/all-in-one (in-memory
#                      storage; Zipkin v2 JSON and OTLP in, query API /api/traces out)
#   otelcol-proxyd     an OpenTelemetry Collector from go.opentelemetry.io/collector v0.165.0
#                      modules (pdata etc. v1.71.0): the otlp receiver (HTTP and gRPC), the
#                      debug and otlphttp exporters (tests/peers/otelcol/main.go)
# into $PROXYD_PEERS_DIR (default ~/.cache/proxyd-peers), outside the repository. A binary
# already there is kept (delete it, or set PROXYD_PEERS_REBUILD=1, to rebuild). Without Go
# it says so and exits 0: the tests that need these peers skip, naming the missing binary.
# One build at a time (the machine is small): the two builds run one after the other.
set -eu
JAEGER_VERSION=v1.75.0
OTELCOL_VERSION=v0.165.0
OTELCOL_PDATA_VERSION=v1.71.0

here="$(cd "$(dirname "$0")" && pwd)"
# Go keeps its module and build caches under $HOME: give it one when the caller has none
[ -n "${HOME:-}" ] || HOME="$(getent passwd "$(id -u)" | cut -d: -f6)"
export HOME
out="${PROXYD_PEERS_DIR:-$HOME/.cache/proxyd-peers}"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
if [ ! -x "$GO" ] && ! command -v "$GO" >/dev/null 2>&1; then
    echo "tests/peers/build.sh: no Go toolchain (go not on PATH, no /usr/local/go/bin/go): Go peers not built" >&2
    exit 0
fi
mkdir -p "$out"
export GOFLAGS="${GOFLAGS:--buildvcs=false} -mod=mod"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
rebuild="${PROXYD_PEERS_REBUILD:-0}"

build_jaeger() {
    bin="$out/jaeger-all-in-one-$JAEGER_VERSION"
    if [ -x "$bin" ] && [ "$rebuild" != 1 ]; then echo "jaeger: $bin (kept)"; return 0; fi
    src="$out/src/jaeger-$JAEGER_VERSION"
    rm -rf "$src" && mkdir -p "$src"
    # Jaeger's own module, at the pinned release, built as the main module (so its go.mod,
    # replace directives included, is the one in force).
    (cd "$src" && "$GO" mod download -json "github.com/jaegertracing/jaeger@$JAEGER_VERSION" >mod.json)
    dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' "$src/mod.json")"
    cp -r "$dir/." "$src/tree" 2>/dev/null || { mkdir -p "$src/tree"; cp -r "$dir/." "$src/tree"; }
    chmod -R u+w "$src/tree"
    start=$(date +%s)
    (cd "$src/tree" && "$GO" build -trimpath -ldflags=-s -o "$bin.tmp" ./cmd/all-in-one)
    mv "$bin.tmp" "$bin"
    echo "jaeger: built $bin in $(( $(date +%s) - start ))s"
    rm -rf "$src"
}

build_otelcol() {
    bin="$out/otelcol-proxyd-$OTELCOL_VERSION"
    if [ -x "$bin" ] && [ "$rebuild" != 1 ]; then echo "otelcol: $bin (kept)"; return 0; fi
    src="$out/src/otelcol-$OTELCOL_VERSION"
    rm -rf "$src" && mkdir -p "$src"
    cp "$here/otelcol/main.go" "$src/main.go"
    start=$(date +%s)
    (
        cd "$src"
        "$GO" mod init proxyd.test/otelcol >/dev/null 2>&1
        "$GO" get \
            "go.opentelemetry.io/collector/otelcol@$OTELCOL_VERSION" \
            "go.opentelemetry.io/collector/component@$OTELCOL_PDATA_VERSION" \
            "go.opentelemetry.io/collector/confmap@$OTELCOL_PDATA_VERSION" \
            "go.opentelemetry.io/collector/confmap/provider/envprovider@$OTELCOL_PDATA_VERSION" \
            "go.opentelemetry.io/collector/confmap/provider/fileprovider@$OTELCOL_PDATA_VERSION" \
            "go.opentelemetry.io/collector/confmap/provider/yamlprovider@$OTELCOL_PDATA_VERSION" \
            "go.opentelemetry.io/collector/receiver/otlpreceiver@$OTELCOL_VERSION" \
            "go.opentelemetry.io/collector/service@$OTELCOL_VERSION" \
            "go.opentelemetry.io/collector/exporter/debugexporter@$OTELCOL_VERSION" \
            "go.opentelemetry.io/collector/exporter/otlphttpexporter@$OTELCOL_VERSION"
        "$GO" mod tidy
        "$GO" build -trimpath -ldflags=-s -o "$bin.tmp" .
    )
    mv "$bin.tmp" "$bin"
    echo "otelcol: built $bin in $(( $(date +%s) - start ))s"
    rm -rf "$src"
}

case "${1:-all}" in
    jaeger) build_jaeger ;;
    otelcol) build_otelcol ;;
    all) build_jaeger; build_otelcol ;;
    *) echo "usage: $0 [all|jaeger|otelcol]" >&2; exit 2 ;;
esac
