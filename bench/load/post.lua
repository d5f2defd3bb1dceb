-- wrk script for the POST cases of bench/load/run.py: every request is a POST of a 4 KiB body
-- (wrk keeps one static pre-built request: no per-request Lua), reported like report.lua.
wrk.method = "POST"
wrk.body = string.rep("x", 4096)
wrk.headers["Content-Type"] = "application/octet-stream"

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")
