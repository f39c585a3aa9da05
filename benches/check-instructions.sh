#!/usr/bin/env bash
# The regression guard CI runs: instructions per request of `runway-proxy serve`, for
# both workloads (feed reads, 1 KB submissions), against the baseline checked in as
# benches/instructions.toml. Fails when either is more than its tolerance above it.
#
# Instruction counts (callgrind) repeat within about 1% for the same binary and load,
# unlike wall-clock time on a small shared machine, so a 5% step is a change, not noise.
# Raising a baseline is a commit of its own that says why.
#
#   benches/check-instructions.sh                  # builds release, counts, compares
#   RUNWAY_BIN=/tmp/other benches/check-instructions.sh
#
# Installs nginx, wrk and valgrind from Debian's packages when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v wrk >/dev/null || missing+=(wrk)
command -v valgrind >/dev/null || missing+=(valgrind)
if [ ${#missing[@]} -gt 0 ]; then
    echo "check-instructions: installing ${missing[*]}" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
export PATH="$PATH:/usr/sbin"

baseline=benches/instructions.toml
# `key = number` under `[section]`, as the baseline file writes them.
value() {
    awk -v section="[$1]" -v key="$2" '
        /^\[/ { current = $0 }
        current == section && $1 == key && $2 == "=" { print $3; exit }
    ' "$baseline"
}
tolerance=$(value guard tolerance_percent)

failed=0
for workload in feed submit; do
    expected=$(value serve "$workload")
    report=$(WORKLOAD=$workload SHORT=${SHORT:-2} LONG=${LONG:-5} benches/count-instructions.sh)
    echo "$report"
    measured=$(echo "$report" | awk '$1 == "serve" { print $2 }')
    bare=$(echo "$report" | awk '$1 == "bare" { print $2 }')
    limit=$((expected * (100 + tolerance) / 100))
    if [ -z "$measured" ]; then
        echo "check-instructions: $workload: no count for serve" >&2
        failed=1
    elif [ "$measured" -gt "$limit" ]; then
        echo "check-instructions: $workload: $measured instructions per request, over the baseline $expected by more than $tolerance% (hyper alone: $bare)" >&2
        failed=1
    else
        echo "check-instructions: $workload: $measured per request, baseline $expected (+$tolerance%: $limit), hyper alone $bare"
    fi
done
exit $failed
