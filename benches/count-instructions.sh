#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind (callgrind): for `runway-proxy
# serve` and for hyper alone (examples/bare_proxy), in front of one nginx upstream.
#
# Wall-clock figures on a small shared machine move by 10-20% from run to run;
# instruction counts do not (the same binary and load give the same count within ~1%),
# so this is the figure to compare a change by. It is not time: kernel work, cache misses
# and the allocator's memory behaviour are not in it (compare-nginx.sh measures those).
#
#   benches/count-instructions.sh                    # feed reads, serve and bare
#   WORKLOAD=submit benches/count-instructions.sh    # 1 KB submissions, rewrite on
#   RUNWAY_BIN=/tmp/other-build benches/count-instructions.sh
#   KEEP=dir benches/count-instructions.sh           # keep callgrind.out files in dir
#
# Each proxy runs twice under callgrind, driven by wrk for SHORT and LONG seconds; the
# difference of the two totals over the difference of their request counts is the cost
# of one request, with start-up and shutdown taken out. Needs nginx, wrk and valgrind
# (Debian: apt-get install nginx-light wrk valgrind); it installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

WORKLOAD=${WORKLOAD:-feed}
SHORT=${SHORT:-2}
LONG=${LONG:-6}
KEEP=${KEEP:-}

for tool in nginx wrk valgrind callgrind_annotate; do
    if ! command -v "$tool" >/dev/null; then
        echo "count-instructions: $tool is not installed (Debian: apt-get install nginx-light wrk valgrind)" >&2
        exit 1
    fi
done

if [ -n "${RUNWAY_BIN:-}" ]; then
    bin=$RUNWAY_BIN
    cargo build --release --quiet --example bare_proxy
else
    echo "building runway-proxy and bare_proxy (release)..." >&2
    cargo build --release --quiet --bin runway-proxy --example bare_proxy
    bin="$PWD/target/release/runway-proxy"
fi
bare="$PWD/target/release/examples/bare_proxy"

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -f "$work/upstream.pid" ] && nginx -q -p "$work" -c "$work/upstream.conf" -s stop 2>/dev/null || true
    if [ -n "$KEEP" ]; then mkdir -p "$KEEP" && cp "$work"/callgrind.* "$KEEP"/ 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=benches/support/nginx.sh
source benches/support/nginx.sh
upstream_port=$(free_port)
write_upstream_conf "$upstream_port"
nginx -q -p "$work" -c "$work/upstream.conf"

case $WORKLOAD in
    feed)
        path=/runway/feed
        body='{"task_id":"d51c94db-f7fa-4ad3-a083-b8918686c478"}'
        ;;
    submit)
        path=/runway/pro/generate
        body=$(python3 -c 'import json; print(json.dumps({"prompt": "a cat " + "x" * 880, "model": "gen4_turbo", "ratio": "16:9", "options": {"seconds": 5}, "callback_url": "http://127.0.0.1:9/hook"}))')
        ;;
    *)
        echo "count-instructions: WORKLOAD is feed or submit" >&2
        exit 2
        ;;
esac
python3 - "$work/load.lua" "$body" <<'EOF'
import json, sys
lua = ('wrk.method = "POST"\nwrk.body = %s\n'
       'wrk.headers["Content-Type"] = "application/json"\n'
       'wrk.headers["Authorization"] = "Bearer sk-bench"\n') % json.dumps(sys.argv[2])
open(sys.argv[1], "w").write(lua)
EOF

# measure NAME SECONDS PORT CMD... -> "requests instructions"
measure() {
    local name=$1 seconds=$2 port=$3
    shift 3
    local out="$work/callgrind.$name.$seconds"
    valgrind --tool=callgrind --callgrind-out-file="$out" "$@" 2>"$work/$name.$seconds.log" &
    local pid=$!
    pids+=("$pid")
    for _ in $(seq 300); do
        if curl -s -o /dev/null -X POST -d "$body" "http://127.0.0.1:$port$path" 2>/dev/null; then break; fi
        sleep 0.2
    done
    local requests
    requests=$(wrk -t1 -c16 -d"${seconds}s" -s "$work/load.lua" "http://127.0.0.1:$port$path" | awk '/requests in/ {print $1}')
    kill -INT "$pid" 2>/dev/null || true
    sleep 1
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local total
    total=$(callgrind_annotate "$out"* 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
    echo "$requests $total"
}

# per_request NAME CMD_WITH_PORT_PLACEHOLDER...
per_request() {
    local name=$1
    shift
    local short long port
    port=$(free_port)
    read -r short_n short_ir < <(measure "$name" "$SHORT" "$port" "${@//PORT/$port}")
    port=$(free_port)
    read -r long_n long_ir < <(measure "$name" "$LONG" "$port" "${@//PORT/$port}")
    awk -v name="$name" -v a="$short_n" -v b="$short_ir" -v c="$long_n" -v d="$long_ir" \
        'BEGIN { printf "%-8s %10.0f instructions per request (%d and %d requests)\n", name, (d - b) / (c - a), a, c }'
}

echo "$WORKLOAD: instructions per request through each proxy (callgrind; wrk -c16)"
per_request serve "$bin" serve --listen 127.0.0.1:PORT --webhook-listen 127.0.0.1:0 \
    --upstream "http://127.0.0.1:$upstream_port" --data-dir "$work/data-PORT" --allow-private-callbacks
per_request bare "$bare" 127.0.0.1:PORT "127.0.0.1:$upstream_port"
