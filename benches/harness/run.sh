#!/usr/bin/env bash
# One command for the side-by-side benchmark of issue 7 (see README.md in this directory):
#   bash benches/harness/run.sh [harness options, e.g. --rounds 5 --heavy-rounds 3]
# Installs the tools (apt) if missing, builds dockerproxy (release) and the harness, then runs
# the harness pinned to core 1 (servers go to core 0). Every process the harness starts is
# recorded in a pid file and killed by PID on exit, whatever happens.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target}"
[ -d "$(dirname "$CARGO_TARGET_DIR")" ] || export CARGO_TARGET_DIR="$repo/target"

need=()
for pair in wrk:wrk nginx:nginx-light curl:curl skopeo:skopeo docker-registry:docker-registry taskset:util-linux; do
  bin="${pair%%:*}"; pkg="${pair#*:}"
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
command -v h2load >/dev/null 2>&1 || echo "note: h2load (nghttp2-client) not installed; optional, unused" >&2

cd "$repo"
cargo build --release -p dockerproxy-server --bin dockerproxy >&2
# The harness itself is a light orchestrator (its relay moves 100 MB/s): the dev profile reuses
# the test fixtures' build.
cargo build -p dockerproxy-benches --bin harness >&2

pidfile="$(mktemp /tmp/dp-bench-pids.XXXXXX)"
harness_pid=""
cleanup() {
  if [ -n "$harness_pid" ]; then kill "$harness_pid" 2>/dev/null || true; fi
  sleep 0.5
  while read -r pid; do
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  done < "$pidfile"
  rm -f "$pidfile"
}
trap cleanup EXIT INT TERM

export HARNESS_PIDFILE="$pidfile"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
# The whole run is bounded (2 h); each step inside has its own timeout.
timeout --signal=TERM 7200 taskset -c 1 "$CARGO_TARGET_DIR/debug/harness" \
  --dockerproxy "$CARGO_TARGET_DIR/release/dockerproxy" \
  --md-out "$here/last-run.md" --json-out "$here/results.jsonl" "$@" &
harness_pid=$!
wait "$harness_pid"
