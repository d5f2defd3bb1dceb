#!/usr/bin/env bash
# `make run`: three example upstreams of `echo` (weights 3, 2, 1) in the embedded file registry,
# and waypost in front of them. echo-1 and echo-2 register themselves; echo-3 is registered by
# waypost behind a health check on its /healthz (configs/local.yaml, `register:`). Ctrl-C stops
# everything; every registration is removed on the way out, so no registry entry is left behind.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release
export WAYPOST_REGISTRY_DIR="${WAYPOST_REGISTRY_DIR:-/tmp/waypost/registry}"
pids=()
cleanup() {
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped; registry entries left: $(find "$WAYPOST_REGISTRY_DIR" -name '*.json' 2>/dev/null | wc -l)"
}
trap cleanup INT TERM EXIT
for i in 1 2; do
  w=$((4 - i))
  "$BIN/examples/upstream" --listen "127.0.0.1:1900$i" --name "echo-$i" --weight "$w" \
    --registry-dir "$WAYPOST_REGISTRY_DIR" --service echo &
  pids+=($!)
done
# echo-3 does not register itself: waypost does, while its /healthz answers 200.
"$BIN/examples/upstream" --listen 127.0.0.1:19003 --name echo-3 &
pids+=($!)
"$BIN/waypost" run --config configs/local.yaml &
pids+=($!)
for _ in $(seq 50); do
  command -v curl >/dev/null || { sleep 1; break; }
  curl -fs http://127.0.0.1:18090/ready >/dev/null 2>&1 && break
  sleep 0.1
done
cat <<MSG

waypost is running on the embedded file registry (${WAYPOST_REGISTRY_DIR}).
  echo instances: 127.0.0.1:19001 (weight 3), :19002 (weight 2), :19003 (weight 1)
  echo-3 (:19003) is registered by waypost while its /healthz is good (rise 2, fall 2, every 1s).

Try:
  curl -H 'Host: echo' http://127.0.0.1:18080/whoami              # by Host header
  curl -x http://127.0.0.1:18080 http://echo/whoami                # as an HTTP_PROXY client
  curl http://127.0.0.1:18081/whoami                               # echo's own port
  for i in \$(seq 60); do curl -s -H 'Host: echo' http://127.0.0.1:18080/whoami; done | sort | uniq -c
  curl http://127.0.0.1:18090/metrics                              # Prometheus metrics
  curl http://127.0.0.1:18090/debug/services                       # tables, weights, freshness
  curl http://127.0.0.1:18090/debug/registrations                  # echo-3's health and state
  curl -X POST http://127.0.0.1:19003/healthz/fail                 # echo-3 withdrawn in ~2s
  curl -X POST http://127.0.0.1:19003/healthz/ok                   # ...and back in ~2s

Ctrl-C stops waypost and the upstreams.
MSG
wait
