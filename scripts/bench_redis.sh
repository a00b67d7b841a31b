#!/bin/bash
# redis-benchmark against one redis-server: direct, through proxyd and through real Envoy
# (redis_proxy, 2 workers each), ROUNDS times; prints rps and the proxy's CPU time per
# request (utime+stime of its processes over the run, from /proc), which a loaded
# machine disturbs less than rps.
# Usage: scripts/bench_redis.sh [ENVOY_BINARY]   (ROUNDS="1 2 3", N=20000 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
ENVOY=${1:-$(dirname "$(command -v "$PY")")/envoy}
N=${N:-20000}
DIR=$(mktemp -d /tmp/bench-redis-XXXX)
port() { "$PY" -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])"; }
RP=$(port); PP=$(port); EP=$(port)
config() {  # $1 listener port
cat <<YAML
static_resources:
  listeners:
  - name: redis
    address: {socket_address: {address: 127.0.0.1, port_value: $1}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.redis_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy
          stat_prefix: bench
          settings: {op_timeout: 5s}
          prefix_routes: {catch_all_route: {cluster: redis}}
  clusters:
  - name: redis
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: redis
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $RP}}}
YAML
}
config "$PP" > "$DIR/proxyd.yaml"; config "$EP" > "$DIR/envoy.yaml"
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --dir "$DIR" > /dev/null &
RPID=$!
"$ENVOY" -c "$DIR/envoy.yaml" --base-id $((RANDOM + 30000)) --concurrency 2 -l error > "$DIR/envoy.log" 2>&1 &
EPID=$!
PYTHONPATH=. "$PY" -m proxyd run -c "$DIR/proxyd.yaml" --concurrency 2 --runtime-dir "$DIR/rt" > "$DIR/proxyd.log" 2>&1 &
XPID=$!
trap 'kill $EPID $XPID $RPID 2>/dev/null; sleep 1; rm -rf "$DIR"' EXIT
sleep 8
cpu() { local t=0 p; for p in "$@"; do read -r -a f < "/proc/$p/stat"; t=$((t + f[13] + f[14])); done; echo $t; }
WORKERS=$(pgrep -P $XPID | tr '\n' ',' | sed 's/,$//')
TICK=$(getconf CLK_TCK)
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in ${ROUNDS:-1 2 3}; do
  for target in direct:$RP:$RPID proxyd:$PP:$WORKERS envoy:$EP:$EPID; do
    IFS=: read -r name p pids <<< "$target"
    pids=${pids//,/ }
    c0=$(cpu $pids)
    out=$(redis-benchmark -p "$p" -q -n "$N" -t get,set 2>&1 | tr '\r' '\n' | grep 'per second' \
          | sed 's/ requests per second, p50=/ rps p50 /' | tr '\n' ' ')
    c1=$(cpu $pids)
    echo "$round $name $out cpu_us_per_request=$(( (c1 - c0) * 1000000 / TICK / (2 * N) ))"
  done
done
