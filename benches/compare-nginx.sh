#!/usr/bin/env bash
# runway-proxy beside nginx proxy_pass, in one run on this machine.
#
# One nginx is the upstream (it answers the feed and a submission with CometAPI's
# envelope); in front of it, in turn, an nginx `proxy_pass` (2 workers, upstream
# keepalive) and `runway-proxy serve` (release build, every layer on, the callback
# rewrite included). wrk drives each with keep-alive connections; each pair of runs is
# back to back, so both see the same machine. Printed per workload: requests per second,
# the ratio to nginx, and the proxy's CPU time per request (user + system, from /proc).
#
#   benches/compare-nginx.sh                  # 10 s per run, 64 connections, 2 rounds
#   DURATION=5 CONNECTIONS=128 ROUNDS=3 benches/compare-nginx.sh
#   PROXY_ARGS="--access-log true" benches/compare-nginx.sh   # extra flags for serve
#   PERF_RECORD=perf.data WORKLOAD=feed benches/compare-nginx.sh   # profile serve (and nginx: perf.data.nginx)
#   PERF_STAT=1 benches/compare-nginx.sh      # also syscalls and context switches per request
#   RUNWAY_BIN=/tmp/other-build benches/compare-nginx.sh   # a binary built elsewhere (A/B)
#   BARE=1 benches/compare-nginx.sh           # also hyper alone (examples/bare_proxy): the floor
#
# Needs nginx and wrk; it says so and stops when they are missing (on Debian:
# apt-get install nginx-light wrk). Everything listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
ROUNDS=${ROUNDS:-2}
PROXY_ARGS=${PROXY_ARGS:-}
PERF_RECORD=${PERF_RECORD:-}
PERF_STAT=${PERF_STAT:-}
BARE=${BARE:-}
WORKLOADS=${WORKLOAD:-feed submit}

for tool in nginx wrk; do
    if ! command -v "$tool" >/dev/null; then
        echo "compare-nginx: $tool is not installed (Debian: apt-get install nginx-light wrk)" >&2
        exit 1
    fi
done

if [ -n "${RUNWAY_BIN:-}" ]; then
    bin=$RUNWAY_BIN
else
    echo "building runway-proxy (release)..." >&2
    cargo build --release --quiet --bin runway-proxy
    bin="$PWD/target/release/runway-proxy"
fi
if [ -n "$BARE" ]; then
    cargo build --release --quiet --example bare_proxy
fi

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for conf in "$work"/*.conf; do
        [ -f "$conf" ] && nginx -q -p "$work" -c "$conf" -s stop 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=benches/support/nginx.sh
source benches/support/nginx.sh
upstream_port=$(free_port)
nginx_port=$(free_port)
proxy_port=$(free_port)
hooks_port=$(free_port)
bare_port=$(free_port)

# The upstream: one worker, shared by both proxies.
write_upstream_conf "$upstream_port"

# The peer: nginx proxy_pass as one would deploy it (2 workers, upstream keepalive).
{
    common_nginx proxy
    echo "worker_processes 2;"
    cat <<EOF
http {
    access_log off;
    keepalive_requests 1000000;
    upstream cometapi { server 127.0.0.1:$upstream_port; keepalive 128; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$nginx_port;
        location / {
            proxy_pass http://cometapi;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
EOF
} >"$work/proxy.conf"

nginx -q -p "$work" -c "$work/upstream.conf"
nginx -q -p "$work" -c "$work/proxy.conf"

# shellcheck disable=SC2086
"$bin" serve --listen "127.0.0.1:$proxy_port" --webhook-listen "127.0.0.1:$hooks_port" \
    --upstream "http://127.0.0.1:$upstream_port" --data-dir "$work/data" \
    --allow-private-callbacks $PROXY_ARGS 2>"$work/runway-proxy.log" &
pids+=($!)
proxy_pid=$!
if [ -n "$BARE" ]; then
    "$PWD/target/release/examples/bare_proxy" "127.0.0.1:$bare_port" "127.0.0.1:$upstream_port" 2>"$work/bare.log" &
    pids+=($!)
    bare_pid=$!
fi
for _ in $(seq 100); do
    if curl -sf "http://127.0.0.1:$proxy_port/-/readyz" >/dev/null 2>&1; then break; fi
    sleep 0.1
done

cat >"$work/feed.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"task_id":"d51c94db-f7fa-4ad3-a083-b8918686c478"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
EOF
# A 1 KB submission with a callback_url the proxy rewrites.
python3 - "$work/submit.lua" <<'EOF'
import json, sys
body = {"prompt": "a cat " + "x" * 880, "model": "gen4_turbo", "ratio": "16:9",
        "options": {"seconds": 5}, "callback_url": "http://127.0.0.1:9/hook"}
text = json.dumps(body)
lua = ('wrk.method = "POST"\nwrk.body = %s\n'
       'wrk.headers["Content-Type"] = "application/json"\n'
       'wrk.headers["Authorization"] = "Bearer sk-bench"\n') % json.dumps(text)
open(sys.argv[1], "w").write(lua)
EOF

# CPU ticks (user + system) of a process and its children's threads: /proc/PID/stat.
ticks() {
    local total=0 pid
    for pid in "$@"; do
        if [ -r "/proc/$pid/stat" ]; then
            total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
        fi
    done
    echo "$total"
}
nginx_pids() { echo "$(cat "$work/proxy.pid") $(pgrep -P "$(cat "$work/proxy.pid")" | tr '\n' ' ')"; }
hz=$(getconf CLK_TCK)

# run NAME PORT SCRIPT PATH PIDS... -> "requests_per_second cpu_us_per_request"
run() {
    local port=$1 script=$2 path=$3
    shift 3
    local before after out requests rps
    local stat_pid=
    if [ -n "$PERF_STAT" ]; then
        perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$(echo "$@" | tr ' ' ',')" \
            -o "$work/stat.txt" -- sleep "$DURATION" 2>/dev/null &
        stat_pid=$!
    fi
    before=$(ticks "$@")
    out=$(wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -s "$script" "http://127.0.0.1:$port$path")
    after=$(ticks "$@")
    if [ -n "$stat_pid" ]; then
        wait "$stat_pid" || true
        awk -F, -v n="$(echo "$out" | awk '/requests in/ {print $1}')" -v port="$port" \
            '/raw_syscalls|context-switches/ { printf "  port %s: %.2f %s per request\n", port, $1 / n, $3 }' \
            "$work/stat.txt" >&2
    fi
    requests=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    if echo "$out" | grep -q "Non-2xx"; then
        echo "compare-nginx: non-2xx answers on port $port $path:" >&2
        echo "$out" >&2
        exit 1
    fi
    awk -v r="$rps" -v n="$requests" -v t=$((after - before)) -v hz="$hz" \
        'BEGIN { printf "%.0f %.1f\n", r, (t / hz) / n * 1e6 }'
}

# Warm both up (connections, caches).
run "$nginx_port" "$work/feed.lua" /runway/feed $(nginx_pids) >/dev/null
run "$proxy_port" "$work/feed.lua" /runway/feed "$proxy_pid" >/dev/null
if [ -n "$BARE" ]; then run "$bare_port" "$work/feed.lua" /runway/feed "$bare_pid" >/dev/null; fi

bare_header=
if [ -n "$BARE" ]; then bare_header=$(printf ' | %12s %9s %6s' "bare req/s" "bare µs" ratio); fi
printf '%-12s %5s | %14s %10s | %14s %10s | %6s%s\n' workload round "nginx req/s" "nginx µs" "runway req/s" "runway µs" ratio "$bare_header"
for round in $(seq "$ROUNDS"); do
    for workload in $WORKLOADS; do
        case $workload in
            feed) path=/runway/feed ;;
            submit) path=/runway/pro/generate ;;
        esac
        if [ -n "$PERF_RECORD" ] && [ "$round" = 1 ]; then
            perf record -q -F 1999 -g -o "$PERF_RECORD.nginx" -p "$(nginx_pids | tr ' ' ',' | sed 's/,*$//')" \
                -- sleep "$DURATION" 2>/dev/null &
            perf_pid=$!
        fi
        read -r n_rps n_cpu < <(run "$nginx_port" "$work/$workload.lua" "$path" $(nginx_pids))
        if [ -n "${perf_pid:-}" ]; then wait "$perf_pid" || true; unset perf_pid; fi
        if [ -n "$PERF_RECORD" ] && [ "$round" = 1 ]; then
            perf record -q -F 1999 -g -o "$PERF_RECORD" -p "$proxy_pid" -- sleep "$DURATION" 2>/dev/null &
            perf_pid=$!
        fi
        read -r r_rps r_cpu < <(run "$proxy_port" "$work/$workload.lua" "$path" "$proxy_pid")
        if [ -n "${perf_pid:-}" ]; then wait "$perf_pid" || true; unset perf_pid; fi
        bare_cols=
        if [ -n "$BARE" ]; then
            read -r b_rps b_cpu < <(run "$bare_port" "$work/$workload.lua" "$path" "$bare_pid")
            bare_cols=$(awk -v a="$n_rps" -v e="$b_rps" -v f="$b_cpu" 'BEGIN { printf " | %12s %9s %6.2f", e, f, e / a }')
        fi
        awk -v w="$workload" -v round="$round" -v a="$n_rps" -v b="$n_cpu" -v c="$r_rps" -v d="$r_cpu" -v bare="$bare_cols" \
            'BEGIN { printf "%-12s %5s | %14s %10s | %14s %10s | %6.2f%s\n", w, round, a, b, c, d, c / a, bare }'
    done
done
echo "(wrk -t1 -c$CONNECTIONS -d${DURATION}s per run; µs = proxy CPU time per request, user + system)"
