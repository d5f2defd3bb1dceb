"""The load harness's hands and eyes (bench/load/run.py): child processes in their own process
groups, port and HTTP probes against 127.0.0.1, and what /proc says about CPU time and memory.
Standard library only.
"""

from __future__ import annotations

import http.client
import os
import re
import resource
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# The upstreams' contract: `GET /` → 13 bytes, `GET /64k` → 65536 bytes; every request carries
# the service name as its Host.
HOST = "echo"
SMALL_BODY = 13
LARGE_BODY = 65536


class HarnessError(Exception):
    """A step failed in a way that ends one run (or, at start-up, the whole harness)."""


# ---------------------------------------------------------------------------------------------
# Processes


def clean_env() -> dict:
    """This environment without configs/static.yaml's variables (WAYPOST_LISTEN, WAYPOST_ADMIN,
    ECHO_1..3), so a value left exported in the shell cannot move waypost off the harness's ports."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("WAYPOST_", "ECHO_"))}


class Procs:
    """Every child process, each in its own session (process group), stopped on exit."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.live: dict[int, tuple[str, subprocess.Popen, Path]] = {}

    def start(self, name: str, argv: list[str], cpu: str | None, env: dict | None = None) -> subprocess.Popen:
        if cpu is not None:
            argv = ["taskset", "-c", cpu, *argv]  # taskset execs: the pid is the program's
        log = self.logdir / f"{name}.log"
        with open(log, "ab") as out:
            out.write(f"\n$ {' '.join(argv)}\n".encode())
            out.flush()
            p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True, env={**clean_env(), **(env or {})})
        self.live[p.pid] = (name, p, log)
        return p

    def log_tail(self, p: subprocess.Popen, lines: int = 15) -> str:
        _, _, log = self.live.get(p.pid, ("", p, None))
        if log is None or not log.exists():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, p: subprocess.Popen) -> None:
        self.live.pop(p.pid, None)
        if p.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                return
            try:
                p.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def stop_all(self) -> None:
        for _, p, _ in list(self.live.values()):
            self.stop(p)


def sh(argv: list[str], check: bool = True, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, timeout=timeout, text=True, capture_output=True, **kw)


def first_line(argv: list[str]) -> str:
    try:
        r = sh(argv, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    text = (r.stdout or "") + (r.stderr or "")
    return text.strip().splitlines()[0].strip() if text.strip() else "unknown"


# ---------------------------------------------------------------------------------------------
# Probing and measuring


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def listeners(port: int) -> dict[int, str]:
    """Processes with a TCP socket listening on `port` (IPv4 or IPv6), pid → command line."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                inodes.add(f"socket:[{f[9]}]")
    found: dict[int, str] = {}
    if not inodes:
        return found
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{d}/fd")
            if any(os.readlink(f"/proc/{d}/fd/{fd}") in inodes for fd in fds):
                cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found[int(d)] = cmd.strip()
        except OSError:
            continue
    return found


def wait_port_free(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not port_free(port):
        if time.monotonic() > deadline:
            who = "; ".join(f"pid {p}: {c[:120]}" for p, c in listeners(port).items()) or "unknown"
            raise HarnessError(f"127.0.0.1:{port} is taken by a process this harness did not start ({who}); "
                               "stop it (`make run`?) and run the benchmark again")
        time.sleep(0.1)


def get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": HOST})
        r = conn.getresponse()
        return r.status, r.read(), {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def wait_ready(port: int, proc: subprocess.Popen | None, timeout: float = 30.0) -> None:
    """Until `GET /` through the target answers 200 with the 13-byte body, then check /64k."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        if proc is not None and proc.poll() is not None:
            raise HarnessError(f"exited with status {proc.returncode} before answering")
        try:
            status, body, _ = get(port, "/")
            if status == 200 and len(body) == SMALL_BODY:
                break
            last = f"GET / → {status}, {len(body)} bytes"
        except OSError as e:
            last = str(e)
        if time.monotonic() > deadline:
            raise HarnessError(f"not ready after {timeout:.0f}s: {last}")
        time.sleep(0.1)
    status, body, _ = get(port, "/64k")
    if status != 200 or len(body) != LARGE_BODY:
        raise HarnessError(f"GET /64k → {status}, {len(body)} bytes (want 200, {LARGE_BODY})")


def weight_shares(port: int, samples: int = 1200) -> dict[str, float] | None:
    """Share of `GET /` answered by each upstream (its `x-instance` header) over one keep-alive
    connection; None when the upstreams do not name themselves (nginx fallback)."""
    counts: dict[str, int] = {}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        for _ in range(samples):
            conn.request("GET", "/", headers={"Host": HOST})
            r = conn.getresponse()
            r.read()
            name = r.getheader("x-instance")
            if name is None:
                return None
            counts[name] = counts.get(name, 0) + 1
    finally:
        conn.close()
    return {k: round(v / samples, 3) for k, v in sorted(counts.items())}


def tree(pid: int) -> list[int]:
    """`pid` and its descendants (nginx: master + worker)."""
    parents: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of every thread of `pids` (a process's stat sums its threads)."""
    ticks = 0
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return ticks / CLK_TCK


def peak_rss_kib(pids: list[int]) -> int:
    total = 0
    for p in pids:
        m = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text(), re.M)
        total += int(m.group(1)) if m else 0
    return total


@dataclass
class Usage:
    """Machine-wide busy and steal time, and what the benchmark's own processes used."""

    busy_s: float
    steal_s: float
    ours_s: float

    @classmethod
    def now(cls, pids: list[int]) -> "Usage":
        # /proc/stat `cpu` line: user nice system idle iowait irq softirq steal …, in USER_HZ.
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once waited for
        ours = cpu_seconds(pids) + kids.ru_utime + kids.ru_stime
        return cls((f[0] + f[1] + f[2] + f[5] + f[6]) / CLK_TCK, f[7] / CLK_TCK, ours)

    def minus(self, before: "Usage", proxy_s: float) -> tuple[float, float]:
        """(CPU seconds used by other processes, steal seconds) between `before` and now."""
        ours = self.ours_s - before.ours_s + proxy_s
        other = max(0.0, self.busy_s - before.busy_s - ours)
        return round(other, 2), round(self.steal_s - before.steal_s, 2)


def wait_quiet(notes: list[str], limit_s: int, when: str) -> None:
    """Before measuring, wait (up to `limit_s`) until other processes use < 20 % of a CPU."""
    deadline = time.monotonic() + limit_s
    while True:
        before = Usage.now([])
        time.sleep(1.0)
        busy = Usage.now([]).minus(before, 0.0)[0]
        if busy < 0.2:
            return
        if time.monotonic() > deadline:
            notes.append(f"the machine was busy {when} ({busy:.0%} of a CPU used by other processes after "
                         f"waiting {limit_s}s); see the other-CPU figures per case")
            return
        print(f"waiting for a quiet machine: other processes use {busy:.0%} of a CPU …", flush=True)

