#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: noise-free on a noisy machine, so
# hot-path changes can be compared exactly. Runs the proxy under valgrind — waypost (release
# build, configs/static.yaml's layout) or, for comparison, HAProxy (bench/load/haproxy.cfg's
# settings) or the bare relay of examples/relay.rs (the floor) — in front of three example upstreams, and sends a fixed number of keep-alive requests
# (ab -n N -c 8 -k), on ports 28080/28090/29001-3; prints total instructions ÷ N and the top
# functions; the profile stays in target/callgrind/<target>[-post]/. Kernel time is not counted: all three make the same system calls per request.
# REQUEST `get` (the default) is a bodiless GET answered with 13 bytes; `post` a POST of a 4 KiB
# body to the upstream's /sink, answered with the same 13 bytes (the body arrives with its head:
# waypost's fast path sends both upstream in one write).
#   usage: bench/callgrind.sh [N] [waypost|haproxy|relay] [get|post]   (needs valgrind and apache2-utils' ab)
#   WAYPOST=path/to/waypost bench/callgrind.sh …   profiles another waypost build (a saved one, to compare)
#   CONFIG=bench/load/p2c.yaml bench/callgrind.sh …   runs waypost on another config (same variables)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/callgrind-count.sh
N="${1:-10000}"
TARGET="${2:-waypost}"
REQUEST="${3:-get}"
for tool in valgrind ab; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y valgrind apache2-utils" >&2; exit 1; }
done
cargo build -q --release --bin waypost --example upstream --example relay
out=target/callgrind/$TARGET$([ "$REQUEST" = get ] || echo "-$REQUEST")
rm -rf "$out" && mkdir -p "$out"
case "$REQUEST" in
  get) load=(http://127.0.0.1:28080/) ;;
  post) head -c 4096 /dev/zero | tr '\0' x >"$out/body"
        load=(-p "$out/body" -T application/octet-stream http://127.0.0.1:28080/sink) ;;
  *) echo "unknown request $REQUEST (get or post)" >&2; exit 2 ;;
esac
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
for i in 1 2 3; do
  target/release/examples/upstream --listen "127.0.0.1:2900$i" --name "echo-$i" >"$out/upstream-$i.log" 2>&1 &
  pids+=($!)
done
sleep 0.3
for p in "${pids[@]}"; do
  kill -0 "$p" 2>/dev/null || { echo "an upstream did not start (port 2900x taken?):" >&2; cat "$out"/upstream-*.log >&2; exit 1; }
done
# The configs the load harness uses, on ports of their own so both can run at once:
# configs/static.yaml through its variables, and bench/load/haproxy.cfg's template.
export WAYPOST_LISTEN=127.0.0.1:28080 WAYPOST_ADMIN=127.0.0.1:28090
export ECHO_1=127.0.0.1:29001 ECHO_2=127.0.0.1:29002 ECHO_3=127.0.0.1:29003
# The harness's upstream weights, moved 10000 ports up (19001 → 29001).
python3 - "$out/haproxy.cfg" <<'PY'
import sys
sys.path.insert(0, "bench/load")
from run import UPSTREAMS, haproxy_config
open(sys.argv[1], "w").write(haproxy_config("127.0.0.1:28080", [(p + 10000, w) for p, w in UPSTREAMS]))
PY
case "$TARGET" in
  waypost) proxy=("${WAYPOST:-target/release/waypost}" run --config "${CONFIG:-configs/static.yaml}") ;;
  haproxy) command -v haproxy >/dev/null || { echo "missing haproxy: apt-get install -y haproxy" >&2; exit 1; }
           proxy=(haproxy -db -f "$out/haproxy.cfg") ;;
  # The floor: a bare TCP relay (examples/relay.rs) with the same weights.
  relay) proxy=(target/release/examples/relay --listen 127.0.0.1:28080
                --upstream "$ECHO_1=3" --upstream "$ECHO_2=2" --upstream "$ECHO_3=1") ;;
  *) echo "unknown target $TARGET (waypost, haproxy or relay)" >&2; exit 2 ;;
esac
callgrind_count "$TARGET ($REQUEST)" "${proxy[@]}"
echo "profile: $out/cg.out"
callgrind_annotate --threshold=80 "$out"/cg.out 2>/dev/null | grep -E '^ *[0-9,]+ \(' | sed 's/ \[.*//' | head -30
