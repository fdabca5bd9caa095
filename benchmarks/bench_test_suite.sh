#!/usr/bin/env bash
# Times the README's `make test` (and optionally other targets) on a fresh clone of this
# repository, idle or with the machine shared by CPU-bound jobs.
#
#   bash benchmarks/bench_test_suite.sh                 # idle: make test
#   bash benchmarks/bench_test_suite.sh --hogs 2        # shared: 2 busy-loop processes run alongside
#   bash benchmarks/bench_test_suite.sh --target test-fast --target test   # several, in order
#
# The clone is made from the current HEAD (commit first); data come from $MEDSEC_DATA (default:
# the shared/data folder beside the repository). Prints one line per phase with the wall time and
# the 1-minute load average before and after; results are recorded in benchmarks/test-suite.md.
set -euo pipefail
HOGS=0
TARGETS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --hogs) HOGS="$2"; shift 2 ;;
    --target) TARGETS+=("$2"); shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(test)
REPO="$(cd "$(dirname "$0")/.." && pwd)"
export MEDSEC_DATA="${MEDSEC_DATA:-$(cd "$REPO/.." && pwd)/shared/data}"
export MEDSEC_PROGRESS=0
WORK="$(mktemp -d /tmp/medsec-suite-XXXXXX)"
trap 'kill ${PIDS:-} 2>/dev/null || true; rm -rf "$WORK"' EXIT
git clone -q "$REPO" "$WORK/medsec"
cd "$WORK/medsec"
PIDS=""
for _ in $(seq 1 "$HOGS"); do
  python3 -c "while True: pass" &
  PIDS="$PIDS $!"
done
load() { cut -d' ' -f1 /proc/loadavg; }
echo "commit $(git rev-parse --short HEAD), $(nproc) cores, $HOGS busy-loop jobs alongside"
start=$(date +%s); l0=$(load)
make install > "$WORK/install.log" 2>&1
t=$(( $(date +%s) - start )); echo "install: ${t} s (load ${l0} -> $(load))"
for target in "${TARGETS[@]}"; do
  s=$(date +%s); l0=$(load)
  make "$target" > "$WORK/$target.log" 2>&1 || { tail -30 "$WORK/$target.log"; exit 1; }
  t=$(( $(date +%s) - s ))
  echo "make $target: ${t} s (load ${l0} -> $(load)); $(grep -E '[0-9]+ passed' "$WORK/$target.log" | tail -1)"
  grep "randomly-seed" "$WORK/$target.log" | tail -1 || true
done
echo "total: $(( $(date +%s) - start )) s"
