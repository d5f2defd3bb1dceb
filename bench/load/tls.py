#!/usr/bin/env python3
"""Load harness of issue 14: waypost beside HAProxy with TLS to the upstreams, and beside Envoy
(and HAProxy in h2 mode) for unary gRPC, in one run.

    python3 bench/load/tls.py [--reps N] [--duration S] [--no-build] [--out FILE]

What it does, in order (run.py's pieces: pinning, wrk + report.lua, /proc CPU readings, duels):

1. Writes a CA and a certificate for the name `echo` with the openssl CLI into a temp dir.
2. **HTTPS, keep-alive**: three upstreams (`examples/upstream --tls-cert …`, rustls with ring)
   on 127.0.0.1:19201..19203, weighted 3:2:1; waypost (`services.echo.tls: {ca}`) and HAProxy
   (`ssl verify required ca-file … verifyhost echo`, one thread, `http-reuse always`) in front,
   each loaded alone by wrk (c64, 13 B and 64 KiB; proxy on CPU 0, wrk and upstreams on CPU 1),
   then head to head on CPU 0 at the same time (same-run CPU-per-request ratios).
3. **Handshakes**: the same upstreams with `--close` on 19211..19213, so every request costs the
   proxy a new TLS connection to the upstream (c64, 13 B): req/s = upstream handshakes per second.
   `-close`: the upstream resumes sessions (TLS 1.3 tickets; both proxies offer them);
   `-close-full`: it does not (`--no-resume`), so each one is a full handshake.
4. **gRPC unary**: three h2c upstreams on 19221..19223 (an empty message, `grpc-status: 0` in the
   trailers); h2load (h2c, 4 connections × 16 streams, a 5-byte gRPC frame POSTed) through
   waypost (`protocol: h2c`), Envoy (http2_protocol_options, `--concurrency 1`) when it installs,
   and HAProxy (`proto h2` on bind and servers).
5. Prints Markdown tables and writes the raw runs as JSON (--out, default bench/tls-results.json).

Every process it starts lives in its own process group and is stopped in a `finally`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import signal
import ssl
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import run as harness
from prepare import REPO, build, ensure_envoy, which
from probe import HarnessError, Procs, cpu_seconds, sh, tree, wait_port_free, wait_ready
from run import LOAD_CPU, PROXY_CPU, Case, Side, Target

WEIGHTS = (3, 2, 1)
TLS_PORTS = (19201, 19202, 19203)
CLOSE_PORTS = (19211, 19212, 19213)
GRPC_PORTS = (19221, 19222, 19223)
WAYPOST, HAPROXY, ENVOY = Target("waypost", 18080, 18090), Target("haproxy", 18081), Target("envoy", 18083, 18093)
TLS_CASES = [Case("c64-13B", 64, "/", True), Case("c64-64KiB", 64, "/64k", True)]
CLOSE_CASES = [Case("c64-13B-close", 64, "/", True)]
FULL_CASES = [Case("c64-13B-close-full", 64, "/", True)]
H2LOAD_CONNS, H2LOAD_STREAMS = 4, 16
FRAME = Path(tempfile.gettempdir()) / "waypost-grpc-empty.bin"  # one empty gRPC message


def certificates(tmp: Path) -> dict[str, Path]:
    """A CA and a P-256 certificate for `echo` signed by it (what waypost verifies by default)."""
    def ossl(*argv: str) -> None:
        sh(["openssl", *argv], cwd=tmp)
    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "30",
         "-subj", "/CN=bench-ca", "-keyout", "ca.key", "-out", "ca.pem")
    ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=echo",
         "-keyout", "echo.key", "-out", "echo.csr")
    (tmp / "san").write_text("subjectAltName=DNS:echo\n")
    ossl("x509", "-req", "-in", "echo.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-days", "30", "-extfile", "san", "-out", "echo.pem")
    return {"ca": tmp / "ca.pem", "cert": tmp / "echo.pem", "key": tmp / "echo.key"}


def waypost_config(path: Path, ports: tuple[int, ...], extra: str) -> Path:
    instances = "\n".join(f"          - address: 127.0.0.1:{p}\n            weight: {w}"
                          for p, w in zip(ports, WEIGHTS))
    path.write_text(f"listen: 127.0.0.1:{WAYPOST.port}\nadmin: {{listen: 127.0.0.1:{WAYPOST.admin_port}}}\n"
                    f"log: {{level: warn}}\nservices:\n  echo:\n{extra}"
                    f"    resolver:\n      static:\n        instances:\n{instances}\n")
    return path


def haproxy_config(path: Path, ports: tuple[int, ...], server_opts: str, bind_opts: str = "") -> Path:
    servers = "\n".join(f"    server echo-{i} 127.0.0.1:{p} weight {w} {server_opts}"
                        for i, (p, w) in enumerate(zip(ports, WEIGHTS), 1))
    text = (harness.HERE / "haproxy.cfg").read_text()
    text = text.replace("bind $listen", f"bind 127.0.0.1:{HAPROXY.port} {bind_opts}".rstrip())
    path.write_text(text.replace("$servers", servers))
    return path


def envoy_grpc_config(path: Path) -> Path:
    """bench/load/envoy.yaml with HTTP/2 to the upstreams (h2c), for the gRPC runs."""
    endpoints = "\n".join(
        "              - endpoint:\n"
        f"                  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {p} }} }}\n"
        f"                load_balancing_weight: {w}" for p, w in zip(GRPC_PORTS, WEIGHTS))
    h2 = ("      typed_extension_protocol_options:\n"
          "        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n"
          '          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n'
          "          explicit_http_config:\n            http2_protocol_options: {}\n")
    text = harness.render("envoy.yaml", path, port=ENVOY.port, admin_port=ENVOY.admin_port, endpoints=endpoints)
    text = path.read_text().replace("      connect_timeout: 1s\n", "      connect_timeout: 1s\n" + h2)
    path.write_text(text)
    return path


def wait_tls(port: int, ca: Path, timeout: float = 15.0) -> None:
    """Until a TLS handshake for `echo` against 127.0.0.1:port succeeds."""
    ctx = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                with ctx.wrap_socket(s, server_hostname="echo"):
                    return
        except OSError as e:
            if time.monotonic() > deadline:
                raise HarnessError(f"TLS upstream 127.0.0.1:{port} not ready: {e}") from None
            time.sleep(0.1)


def start_upstreams(procs: Procs, upstream: Path, ports: tuple[int, ...], extra: list[str],
                    ca: Path | None) -> list[subprocess.Popen]:
    for p in ports:
        wait_port_free(p)
    ups = [procs.start(f"upstream-{p}", [str(upstream), "--listen", f"127.0.0.1:{p}", "--name", f"echo-{i}",
                                         *extra], LOAD_CPU) for i, p in enumerate(ports, 1)]
    for p in ports:
        if ca:
            wait_tls(p, ca)
        else:
            wait_ready(p, None, timeout=15)
    return ups


def h2load(port: int, seconds: int, warmup: int) -> dict:
    """h2load over h2c (prior knowledge) on LOAD_CPU: unary gRPC-shaped POSTs for `seconds`."""
    argv = ["taskset", "-c", LOAD_CPU, "h2load", "-c", str(H2LOAD_CONNS), "-m", str(H2LOAD_STREAMS),
            "-D", str(seconds), "--warm-up-time", str(warmup), "-d", str(FRAME),
            "-H", ":authority: echo", "-H", "content-type: application/grpc", "-H", "te: trailers",
            f"http://127.0.0.1:{port}/bench.Echo/Unary"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + warmup + 60)
    out = r.stdout
    m_rps = re.search(r"finished in [^,]+, ([\d.]+) req/s", out)
    m_req = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                      r"(\d+) errored, (\d+) timeout", out)
    m_st = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    m_lat = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if r.returncode != 0 or not (m_rps and m_req and m_st):
        raise HarnessError(f"h2load failed ({r.returncode}): {(r.stderr or out).strip()[-400:]}")
    done, ok = int(m_req.group(2)), int(m_st.group(1))
    if not done or (done - ok) * 1000 > done:
        raise HarnessError(f"h2load: {done - ok} of {done} requests not 2xx: {out.strip()[-400:]}")
    return {"requests": done, "rps": float(m_rps.group(1)), "mean_latency": m_lat.group(3) if m_lat else None}


def grpc_run(name: str, argv: list[str], port: int, procs: Procs, seconds: int, warmup: int, rep: int) -> dict:
    row = {"target": name, "case": "grpc-unary", "rep": rep, "ok": False}
    wait_port_free(port)
    proc = procs.start(name, argv, PROXY_CPU)
    try:
        deadline = time.monotonic() + 30
        while True:  # ready when one unary call goes through
            try:
                h2load_probe = subprocess.run(
                    ["h2load", "-n", "1", "-c", "1", "-d", str(FRAME), "-H", ":authority: echo",
                     "-H", "content-type: application/grpc", f"http://127.0.0.1:{port}/bench.Echo/Unary"],
                    capture_output=True, text=True, timeout=10)
                if "1 2xx" in h2load_probe.stdout:
                    break
            except subprocess.TimeoutExpired:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise HarnessError(f"{name} not ready for gRPC\n{procs.log_tail(proc)}")
            time.sleep(0.2)
        pids = tree(proc.pid)
        c0 = cpu_seconds(pids)
        t0 = time.monotonic()
        res = h2load(port, seconds, warmup)
        cpu = cpu_seconds(tree(proc.pid)) - c0
        # h2load's warm-up is inside the CPU window: charge CPU per request over the whole window.
        wall = time.monotonic() - t0
        row.update(res, cpu_s=cpu, cpu_us_per_req=cpu * 1e6 / (res["rps"] * wall), ok=True)
    except (HarnessError, OSError, subprocess.TimeoutExpired) as e:
        row["error"] = str(e).strip()
    finally:
        procs.stop(proc)
    return row


def med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def table(runs: list[dict], duels: list[dict]) -> str:
    lines = ["| case | proxy | req/s | CPU µs/req | p50 µs | p99 µs | runs |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    keys = sorted({(r["case"], r["target"]) for r in runs}, key=lambda k: (k[0], k[1] != "waypost", k[1]))
    for case, target in keys:
        ok = [r for r in runs if r["case"] == case and r["target"] == target and r["ok"]]
        fail = sum(1 for r in runs if r["case"] == case and r["target"] == target and not r["ok"])

        def f(key: str, sub: str | None = None, nd: int = 0) -> str:
            vals = [(r[key][sub] if sub else r[key]) for r in ok if (r[key].get(sub) if sub else r.get(key)) is not None]
            m = med(vals)
            return "–" if m is None else f"{m:,.{nd}f}"
        pct = [r["latency_us"]["percentiles"] for r in ok if r.get("latency_us")]
        p50 = f"{med([p['50'] for p in pct]):,.0f}" if pct else "–"
        p99 = f"{med([p['99'] for p in pct]):,.0f}" if pct else "–"
        lines.append(f"| {case} | {target} | {f('rps')} | {f('cpu_us_per_req', nd=1)} | {p50} | {p99} | "
                     f"{len(ok)}{f' ({fail} failed)' if fail else ''} |")
    if duels:
        lines += ["", "| case (head to head, both on CPU 0) | waypost ÷ HAProxy CPU/req | waypost ÷ HAProxy req/s | runs |",
                  "| --- | ---: | ---: | ---: |"]
        for case in sorted({d["case"] for d in duels}):
            ok = [d for d in duels if d["case"] == case and d["ok"]]
            cr = sorted(d["cpu_ratio"] for d in ok)
            rr = sorted(d["rps_ratio"] for d in ok)
            spread = (lambda xs: f"{med(xs):.3f} ({xs[0]:.3f}–{xs[-1]:.3f})" if xs else "–")
            lines.append(f"| {case} | {spread(cr)} | {spread(rr)} | {len(ok)} of {sum(d['case'] == case for d in duels)} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--no-envoy", action="store_true", help="gRPC against HAProxy only")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "tls-results.json")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, harness._interrupt)
    for exe, pkg in (("haproxy", "haproxy"), ("wrk", "wrk"), ("h2load", "nghttp2-client"), ("openssl", "openssl")):
        if which(exe) is None:
            raise HarnessError(f"missing {exe}: apt-get install -y {pkg}")
    notes: list[str] = []
    envoy = None if args.no_envoy else ensure_envoy(notes, install=True)
    waypost, upstream, _ = build(notes, skip=args.no_build)
    tmp = Path(tempfile.mkdtemp(prefix="waypost-tls-bench-"))
    procs = Procs(tmp)
    (tmp / "bin").mkdir()
    bins = {"waypost": str(shutil.copy2(waypost, tmp / "bin" / "waypost")), "haproxy": which("haproxy")}
    upstream = Path(shutil.copy2(upstream, tmp / "bin" / "upstream"))
    tls = certificates(tmp)
    ca = tls["ca"]
    verify = f"ssl verify required ca-file {ca} sni str(echo) verifyhost echo"
    cfg = {
        "tls": {"waypost": waypost_config(tmp / "tls.yaml", TLS_PORTS, f"    tls: {{ca: {ca}}}\n"),
                "haproxy": haproxy_config(tmp / "tls.cfg", TLS_PORTS, verify)},
        "close": {"waypost": waypost_config(tmp / "close.yaml", CLOSE_PORTS, f"    tls: {{ca: {ca}}}\n"),
                  "haproxy": haproxy_config(tmp / "close.cfg", CLOSE_PORTS, verify)},
    }
    grpc = {"waypost": [bins["waypost"], "run", "--config",
                        str(waypost_config(tmp / "grpc.yaml", GRPC_PORTS, "    protocol: h2c\n"))],
            "haproxy-h2": [bins["haproxy"], "-db", "-f",
                           str(haproxy_config(tmp / "grpc.cfg", GRPC_PORTS, "proto h2", "proto h2"))]}
    if envoy:
        grpc["envoy"] = [envoy, "-c", str(envoy_grpc_config(tmp / "envoy.yaml")), "--concurrency", "1",
                         "--disable-hot-restart", "--log-level", "warn"]
    (FRAME).write_bytes(b"\0\0\0\0\0")
    runs: list[dict] = []
    duels: list[dict] = []
    grpc_runs: list[dict] = []
    started = dt.datetime.now(dt.timezone.utc)
    print(f"configs and logs in {tmp}", flush=True)
    try:
        for mode, ports, extra, cases in (("tls", TLS_PORTS, [], TLS_CASES),
                                          ("close", CLOSE_PORTS, ["--close"], CLOSE_CASES),
                                          ("close", CLOSE_PORTS, ["--close", "--no-resume"], FULL_CASES)):
            ups = start_upstreams(procs, upstream, ports,
                                  [*extra, "--tls-cert", str(tls["cert"]), "--tls-key", str(tls["key"])], ca)
            try:
                for rep in range(args.reps):
                    for i, case in enumerate(cases):
                        order = [WAYPOST, HAPROXY] if (rep + i) % 2 == 0 else [HAPROXY, WAYPOST]
                        for target in order:
                            r = harness.measure(target, case, rep, procs, cfg[mode], bins, args.duration,
                                                args.warmup, rep == 0, ups)
                            runs.append(asdict(r))
                            print(f"{mode} {case.name} {target.name}: {r.rps:,.0f} req/s, "
                                  f"{r.cpu_us_per_req or 0:.1f} µs CPU/req, p99 {r.latency_us.get('percentiles', {}).get('99')} µs"
                                  f"{'' if r.ok else ' FAILED: ' + (r.error or '')[:300]}", flush=True)
                        sides = [Side("waypost", harness.proxy_argv("waypost", cfg[mode], bins), WAYPOST.port),
                                 Side("haproxy", harness.proxy_argv("haproxy", cfg[mode], bins), HAPROXY.port)]
                        d = harness.duel(case, rep, procs, sides, args.duration, args.warmup)
                        duels.append(asdict(d))
                        print(harness.report.duel_line(d), flush=True)
            finally:
                for p in ups:
                    procs.stop(p)
        ups = start_upstreams(procs, upstream, GRPC_PORTS, [], None)
        try:
            ports = {"waypost": WAYPOST.port, "haproxy-h2": HAPROXY.port, "envoy": ENVOY.port}
            for rep in range(args.reps):
                names = list(grpc) if rep % 2 == 0 else list(grpc)[::-1]
                for name in names:
                    row = grpc_run(name, grpc[name], ports[name], procs, args.duration, args.warmup, rep)
                    grpc_runs.append(row)
                    print(f"grpc {name}: {row.get('rps', 0):,.0f} req/s, {row.get('cpu_us_per_req', 0):.1f} µs CPU/req"
                          f"{'' if row['ok'] else ' FAILED: ' + row.get('error', '')[:300]}", flush=True)
        finally:
            for p in ups:
                procs.stop(p)
    except KeyboardInterrupt:
        notes.append("run interrupted before the end")
    finally:
        procs.stop_all()
        (FRAME).unlink(missing_ok=True)
    meta = {"date": started.strftime("%Y-%m-%d %H:%M UTC"), "invocation": "python3 bench/load/tls.py " + " ".join(sys.argv[1:]),
            "machine": harness.machine(), "versions": harness.versions({**bins, **({"envoy": envoy} if envoy else {})}),
            "h2load": f"-c {H2LOAD_CONNS} -m {H2LOAD_STREAMS}", "notes": notes,
            "configs": {f"{m}/{k}": p.read_text().replace(str(tmp), "$TMP") for m, c in cfg.items() for k, p in c.items()}}
    args.out.write_text(json.dumps({"meta": meta, "runs": runs, "duels": duels, "grpc": grpc_runs}, indent=1) + "\n")
    print("\n" + table(runs, duels) + "\n\n" + table(grpc_runs, []))
    print(f"\nwrote {args.out}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except HarnessError as e:
        print(f"bench: {e}", file=sys.stderr)
        sys.exit(1)
