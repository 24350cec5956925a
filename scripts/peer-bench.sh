#!/usr/bin/env bash
# Side-by-side benchmark: cartat-rules against the naive Python poller (asyncio + aiohttp) and
# Node-RED, with the shared harness in ../shared/bench (mock gateway + webhook sink, all on
# 127.0.0.1, bounded in time). Runs every peer on every workload in one sitting, then prints
# one table of medians. CPU seconds are the steadiest figure; compare ratios within one sitting.
#
#   scripts/peer-bench.sh                      # workloads A, B and idle; 3 runs each; all peers
#   RUNS=1 WORKLOADS="A idle" PEERS="cartat naive" scripts/peer-bench.sh
#   CARTAT_BIN=/path/to/cartat-rules scripts/peer-bench.sh   # another build (no cargo build)
#
# The peers live outside the repo (installed on first use):
#   PEERS_HOME (default /tmp/peers): venv/ with aiohttp, nr/ with node-red from npm.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
bench="${BENCH_DIR:-$root/../shared/bench}"
[ -f "$bench/peers/bench.py" ] || { echo "no benchmark harness at $bench (set BENCH_DIR)" >&2; exit 2; }
PEERS_HOME="${PEERS_HOME:-/tmp/peers}"
RUNS="${RUNS:-3}"
WORKLOADS="${WORKLOADS:-A B idle}"
PEERS="${PEERS:-cartat naive node-red}"
out="${OUT:-${TMPDIR:-/tmp}/perfpeers/results-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"

for p in $PEERS; do
    case "$p" in
    cartat) [ -n "${CARTAT_BIN:-}" ] || cargo build --release --bin cartat-rules ;;
    naive)
        [ -x "$PEERS_HOME/venv/bin/python" ] || python3 -m venv "$PEERS_HOME/venv"
        "$PEERS_HOME/venv/bin/python" -c 'import aiohttp' 2>/dev/null ||
            "$PEERS_HOME/venv/bin/pip" install -q aiohttp ;;
    node-red)
        [ -f "$PEERS_HOME/nr/node_modules/node-red/red.js" ] ||
            NODE_RED_HOME="$PEERS_HOME/nr" bash "$bench/peers/run-node-red.sh" --install ;;
    *) echo "unknown peer $p (cartat, naive, node-red)" >&2; exit 2 ;;
    esac
done

args_for() {
    case "$1" in
    A) echo "--chats 100 --rate 1" ;;
    B) echo "--chats 1000 --rate 0.1" ;;
    idle) echo "--chats 100 --rate 0" ;;
    *) echo "unknown workload $1 (A, B, idle)" >&2; exit 2 ;;
    esac
}

for w in $WORKLOADS; do
    for p in $PEERS; do
        case "$p" in
        cartat) cmd=(python3 "$bench/peers/run_cartat_rules.py" --bin "${CARTAT_BIN:-$root/target/release/cartat-rules}" -- -q) ;;
        naive) cmd=("$PEERS_HOME/venv/bin/python" "$bench/peers/naive_poller.py") ;;
        node-red) cmd=(env NODE_RED_HOME="$PEERS_HOME/nr" bash "$bench/peers/run-node-red.sh") ;;
        esac
        echo "== workload $w, $p ($RUNS runs)" >&2
        # shellcheck disable=SC2046
        python3 "$bench/peers/bench.py" --name "$w-$p" --runs "$RUNS" $(args_for "$w") \
            --outdir "$out" -- "${cmd[@]}" > "$out/$w-$p.log"
    done
done

python3 - "$out" $WORKLOADS -- $PEERS <<'EOF'
import json, os, sys
out = sys.argv[1]
i = sys.argv.index("--")
workloads, peers = sys.argv[2:i], sys.argv[i + 1:]
print("| workload | peer | CPU s (window, median) | CPU s (whole life) | peak RSS MB | p50 / p99 ms | missing | duplicates |")
print("|---|---|---|---|---|---|---|---|")
for w in workloads:
    base = None
    for p in peers:
        try:
            s = json.load(open(os.path.join(out, "%s-%s-summary.json" % (w, p))))
        except OSError:
            continue
        m = s["median"]
        dups = s.get("duplicates_total")
        print("| %s | %s | %s | %s | %.1f | %s / %s | %s | %s |" % (
            w, p, m["cpu_window_s"], m["cpu_total_s"], m["max_rss_mb"], m["p50_ms"], m["p99_ms"],
            s.get("missing_total"), dups))
print("\nresults in", out)
EOF
