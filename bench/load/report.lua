-- wrk reporting script for bench/load/run.py: prints one machine-readable line at the end of a
-- run. It defines only done(), so wrk keeps its static pre-built request (no per-request Lua).
-- Latency values are microseconds; duration is microseconds.

local percentiles = { 50, 75, 90, 99, 99.9, 99.99 }

done = function(summary, latency, requests)
  local e = summary.errors
  local parts = {}
  for _, p in ipairs(percentiles) do
    parts[#parts + 1] = string.format('"%g":%d', p, latency:percentile(p))
  end
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"max":%d,"mean":%.1f,"stdev":%.1f,"percentiles":{%s}}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.max, latency.mean, latency.stdev, table.concat(parts, ",")))
end
