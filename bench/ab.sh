#!/usr/bin/env bash
# A/B of two waypost builds on one core: both pinned to CPU 0 at the same time, each loaded by
# its own wrk (c64, keep-alive) on CPU 1, in front of the same three example upstreams. The VM's
# drifting speed hits both alike, so the ratio of their CPU time per request resolves changes of
# 1–2 % that sequential runs on this machine cannot (bench/FINDINGS.md). Ports 2808x/2909x/2900x.
#   usage: bench/ab.sh OLD_BINARY NEW_BINARY [PATH] [REPS]
#   e.g.:  cp target/release/waypost /tmp/old; <change>; cargo build --release;
#          bench/ab.sh /tmp/old target/release/waypost /64k 5
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n 2,8p "$0" >&2; exit 2; }
A="$1" B="$2" URLPATH="${3:-/}" REPS="${4:-5}" SECS=4
command -v wrk >/dev/null || { echo "missing wrk: apt-get install -y wrk" >&2; exit 1; }
cargo build --release --example upstream >/dev/null 2>&1
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
for side in a b; do
  port=$([ $side = a ] && echo 28081 || echo 28082)
  cat > "$tmp/$side.yaml" <<YAML
listen: 127.0.0.1:$port
admin: {listen: 127.0.0.1:2909${port: -1}}
services:
  echo:
    resolver:
      static:
        instances:
          - {address: 127.0.0.1:29001, weight: 3}
          - {address: 127.0.0.1:29002, weight: 2}
          - {address: 127.0.0.1:29003, weight: 1}
YAML
done
for i in 1 2 3; do
  taskset -c 1 target/release/examples/upstream --listen "127.0.0.1:2900$i" --name "echo-$i" >/dev/null 2>&1 &
  pids+=($!)
done
taskset -c 0 "$A" run --config "$tmp/a.yaml" >"$tmp/a.log" 2>&1 & a=$!; pids+=($a)
taskset -c 0 "$B" run --config "$tmp/b.yaml" >"$tmp/b.log" 2>&1 & b=$!; pids+=($b)
for port in 28081 28082; do
  for _ in $(seq 50); do curl -fs -o /dev/null -H 'Host: echo' "http://127.0.0.1:$port/" && break; sleep 0.2; done
done
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime, in clock ticks
both() {  # seconds, then output files
  taskset -c 1 wrk -t1 -c64 -d"$1"s -H 'Host: echo' "http://127.0.0.1:28081$URLPATH" >"$2" & w=$!
  taskset -c 1 wrk -t1 -c64 -d"$1"s -H 'Host: echo' "http://127.0.0.1:28082$URLPATH" >"$3"
  wait "$w"
}
echo "A = $A, B = $B, GET $URLPATH, $REPS runs of ${SECS}s"
for rep in $(seq "$REPS"); do
  both 1 /dev/null /dev/null
  ca=$(cpu $a) cb=$(cpu $b)
  both "$SECS" "$tmp/wa" "$tmp/wb"
  ca=$(( $(cpu $a) - ca )) cb=$(( $(cpu $b) - cb ))
  na=$(awk '/requests in/{print $1}' "$tmp/wa") nb=$(awk '/requests in/{print $1}' "$tmp/wb")
  python3 -c "
tck = $(getconf CLK_TCK)
a, b = $ca / tck * 1e6 / $na, $cb / tck * 1e6 / $nb
print(f'run $rep: A {$na / $SECS:8.0f} req/s {a:6.2f} µs/req | B {$nb / $SECS:8.0f} req/s {b:6.2f} µs/req'
      f' | B/A CPU per request {b / a:.3f}, req/s {$nb / $na:.3f}')"
done
