# The counting step of bench/callgrind.sh and bench/callgrind-tls.sh, sourced by both (not run on
# its own): `callgrind_count LABEL PROXY-COMMAND…` starts the proxy under callgrind (profile in
# $out/cg.out, valgrind's log in $out/vg.log, its pid added to $pids for the caller's cleanup),
# waits until it answers on 127.0.0.1:28080, warms it (pools, handshakes, the allocator) with 500
# requests, zeroes the counters, sends $N keep-alive requests (ab -c 8 -k, `Host: echo`, the
# request in the array $load), stops it and prints total instructions ÷ $N.
callgrind_count() {
  local label=$1 vg total
  shift
  valgrind --tool=callgrind --callgrind-out-file="$out/cg.out" "$@" 2>"$out/vg.log" &
  vg=$!
  pids+=($vg)
  for _ in $(seq 100); do
    curl -fs -o /dev/null -H 'Host: echo' http://127.0.0.1:28080/ 2>/dev/null && break
    sleep 0.2
  done
  ab -q -n 500 -c 8 -k -H 'Host: echo' "${load[@]}" >/dev/null
  callgrind_control -z "$vg" >/dev/null
  ab -q -n "$N" -c 8 -k -H 'Host: echo' "${load[@]}" | grep -E "Complete requests|Failed requests|Non-2xx"
  kill -TERM "$vg"; wait "$vg" 2>/dev/null || true
  total=$(callgrind_annotate "$out"/cg.out 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1; exit}')
  echo "$label: instructions per request: $(( total / N ))  (total $total over $N requests)"
}
