#!/usr/bin/env bash
# Load test: builds the release daemon and the load example, then runs the real daemon binary
# against the mock gateway in synthetic mode on 127.0.0.1 (bounded: warm-up + traffic + drain,
# then it stops by itself). Arguments go to the example, e.g.
#   scripts/load-test.sh                          # 10,000 chats, 5% active, 500 req/s, 60 s measured
#   scripts/load-test.sh --compare-scheduling     # round_robin vs adaptive, 1,000 chats, 50 req/s
#   scripts/load-test.sh --chats 2000 --rate 100 --duration 30
#   scripts/load-test.sh --postgres               # the state in a throwaway PostgreSQL server
#   scripts/load-test.sh --instances 3            # three instances in a cluster on it
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins --examples
exec target/release/examples/load "$@"
