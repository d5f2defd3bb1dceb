"""Reporting half of the load harness: turns the runs of bench/load/run.py into
bench/results.json (everything, machine-readable), bench/RESULTS.md (medians with min..max,
ratios, the bar) and bench/latency.svg (latency percentile curves, one line per target and a
panel per case, hand-written SVG). Standard library only.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

PERCENTILES = ["50", "75", "90", "99", "99.9", "99.99"]
COLORS = {"waypost": "#d62728", "haproxy": "#1f77b4", "nginx": "#2ca02c", "envoy": "#9467bd", "direct": "#555555",
          "direct-xcpu": "#aaaaaa"}
MIB = 1024.0
NOISY = 0.10  # a run during which other processes used ≥ 10 % of a CPU is flagged
CASE_LABELS = {
    "c64-13B": "64 connections, 13 B",
    "c64-64KiB": "64 connections, 64 KiB",
    "c1-13B": "1 connection, 13 B",
    "c1-64KiB": "1 connection, 64 KiB",
    "c64-13B-unpinned": "64 connections, 13 B, unpinned",
    "c64-4KiB-POST": "64 connections, 4 KiB POST, 13 B answer",
}


# ---------------------------------------------------------------------------------------------
# Aggregation


def spread(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarize(runs: list[dict], cases: list[dict], targets: list[str]) -> dict:
    """Per case and target: median/min/max of each metric over the successful repetitions."""
    out: dict = {}
    for case in cases:
        per: dict = {}
        for t in targets:
            mine = [r for r in runs if r["case"] == case["name"] and r["target"] == t]
            ok = [r for r in mine if r["ok"]]
            entry = {
                "runs": len(mine),
                "ok": len(ok),
                "failures": [r["error"] for r in mine if not r["ok"]],
                "wrk_errors": sum(sum(r["errors"].values()) for r in ok),
                "rps": spread([r["rps"] for r in ok]),
                "p50_us": spread([r["latency_us"]["percentiles"]["50"] for r in ok]),
                "p99_us": spread([r["latency_us"]["percentiles"]["99"] for r in ok]),
                "cpu_us_per_req": spread([r["cpu_us_per_req"] for r in ok]),
                "rss_mib": spread([r["rss_kib"] / MIB if r["rss_kib"] is not None else None for r in ok]),
                "other_cpu_share": spread([r["other_cpu_s"] / r["duration_s"] for r in ok
                                           if r.get("other_cpu_s") is not None and r["duration_s"]]),
                "percentiles_us": {p: statistics.median(r["latency_us"]["percentiles"][p] for r in ok)
                                   for p in PERCENTILES} if ok else None,
            }
            per[t] = entry
        ratios(per)
        out[case["name"]] = per
    return out


def med(entry: dict | None, key: str) -> float | None:
    if not entry or not entry.get(key):
        return None
    return entry[key]["median"]


def ratios(per: dict) -> None:
    """Ratios of medians against HAProxy and against direct, in place."""
    ha, direct = per.get("haproxy"), per.get("direct")
    for t, e in per.items():
        r: dict = {}
        for key in ("rps", "cpu_us_per_req", "p50_us", "p99_us"):
            mine, theirs = med(e, key), med(ha, key)
            if mine is not None and theirs:
                r[f"{key}_vs_haproxy"] = mine / theirs
        if med(e, "rps") is not None and med(direct, "rps"):
            r["rps_vs_direct"] = med(e, "rps") / med(direct, "rps")
        for key in ("p50_us", "p99_us"):
            if med(e, key) is not None and med(direct, key) is not None:
                r[f"added_{key}"] = med(e, key) - med(direct, key)
        e["ratios"] = r


def summarize_duels(duels: list[dict], pair: str = "waypost÷haproxy") -> dict:
    """Per case of the duels between `pair`'s two sides: spreads of each side's CPU per request
    and req/s, and of the two ratios."""
    out: dict = {}
    duels = [d for d in duels if d.get("pair", "waypost÷haproxy") == pair]
    for case in dict.fromkeys(d["case"] for d in duels):
        ok = [d for d in duels if d["case"] == case and d["ok"]]
        entry = {"runs": len(ok), "failed": sum(1 for d in duels if d["case"] == case and not d["ok"])}
        if ok:
            entry["cpu_ratio"] = spread([d["cpu_ratio"] for d in ok])
            entry["rps_ratio"] = spread([d["rps_ratio"] for d in ok])
            for side in ok[0]["sides"]:
                entry[side] = {k: spread([d["sides"][side][k] for d in ok]) for k in ("rps", "cpu_us_per_req")}
        out[case] = entry
    return out


def duel_line(d) -> str:
    """One progress line for a head-to-head run (a `Duel`): first side, second side, ratios."""
    if not d.ok:
        return f"  head to head {d.case:10} rep {d.rep + 1}: FAILED {d.error}"
    sides = " | ".join(f"{name} {s['rps']:8,.0f} req/s {s['cpu_us_per_req']:6.2f} µs/req"
                       for name, s in d.sides.items())
    return (f"  head to head {d.case:10} rep {d.rep + 1}: {sides}"
            f" | CPU {d.cpu_ratio:.3f}× req/s {d.rps_ratio:.3f}×")


def bar(summary: dict, micro: dict | None, h2h: dict | None = None, floor: dict | None = None) -> list[dict]:
    """The lines of issue 4's bar, each with waypost's value, the reference and a verdict."""
    lines = []

    def line(text: str, value: str, reference: str, passed: bool | None) -> None:
        lines.append({"line": text, "waypost": value, "reference": reference, "pass": passed})

    def get(case: str, target: str) -> dict | None:
        return summary.get(case, {}).get(target)

    wp, ha = get("c64-13B", "waypost"), get("c64-13B", "haproxy")
    a, b = med(wp, "cpu_us_per_req"), med(ha, "cpu_us_per_req")
    line("CPU per request ≤ 0.8 × HAProxy's (c64, 13 B)", fmt_num(a, " µs"),
         f"0.8 × {fmt_num(b, ' µs')} = {fmt_num(0.8 * b if b else None, ' µs')}",
         a <= 0.8 * b if a is not None and b is not None else None)
    for case, label in (("c64-13B", "c64, 13 B"), ("c64-64KiB", "c64, 64 KiB")):
        a, b = med(get(case, "waypost"), "rps"), med(get(case, "haproxy"), "rps")
        line(f"Requests/s ≥ HAProxy's ({label})", fmt_num(a), fmt_num(b),
             a >= b if a is not None and b is not None else None)
    wpr = (get("c1-13B", "waypost") or {}).get("ratios", {})
    har = (get("c1-13B", "haproxy") or {}).get("ratios", {})
    a, b = wpr.get("added_p50_us"), har.get("added_p50_us")
    line("Added p50 at 1 connection (− direct p50) ≤ HAProxy's (c1, 13 B)", fmt_num(a, " µs"),
         fmt_num(b, " µs"), a <= b if a is not None and b is not None else None)
    peaks = [e["rss_mib"]["max"] for c in summary.values() for t, e in c.items()
             if t == "waypost" and e.get("rss_mib")]
    peak = max(peaks) if peaks else None
    line("Peak RSS under load ≤ 16 MiB (max over every case)", fmt_num(peak, " MiB", 1), "16 MiB",
         peak <= 16 if peak is not None else None)
    # The same load lines measured head to head (both proxies on CPU 0 at once): steadier.
    for case, label in (("c64-13B", "c64, 13 B"), ("c64-64KiB", "c64, 64 KiB")):
        e = (h2h or {}).get(case, {})
        cpu, rps = (e.get("cpu_ratio") or {}).get("median"), (e.get("rps_ratio") or {}).get("median")
        if cpu is None:
            continue
        if case == "c64-13B":
            least = ((floor or {}).get(case, {}).get("cpu_ratio") or {}).get("median")
            note = f" (a bare relay: {least:.3f}×)" if least is not None else ""
            line(f"Head to head: CPU per request ≤ 0.8 × HAProxy's ({label})", f"{cpu:.3f}×", f"≤ 0.8×{note}",
                 cpu <= 0.8)
        line(f"Head to head: requests/s ≥ HAProxy's ({label})", f"{rps:.3f}×", "≥ 1×", rps >= 1)

    rows = {r["name"]: r for r in (micro or {}).get("rows", [])}
    p3, p10k = rows.get("pick/3"), rows.get("pick/10000")
    build = rows.get("build/10000")
    todo = "`cargo bench --bench balance`"
    if p10k:
        line("`pick()` ≤ 25 ns at 10,000 instances (divan median)", fmt_ns(p10k["median_ns"]), "25 ns",
             p10k["median_ns"] <= 25)
    else:
        line("`pick()` ≤ 25 ns at 10,000 instances", "not measured", todo, None)
    if p3 and p10k:
        ratio = p10k["median_ns"] / p3["median_ns"]
        line("`pick()` flat in instance count (10,000 vs 3 instances, ≤ 1.5×)",
             f"{fmt_ns(p10k['median_ns'])} vs {fmt_ns(p3['median_ns'])} = {ratio:.2f}×", "≤ 1.5×", ratio <= 1.5)
    else:
        line("`pick()` flat in instance count", "not measured", todo, None)
    if build:
        line("10,000-instance table built in ≤ 1 ms (divan median)", fmt_ns(build["median_ns"]), "1 ms",
             build["median_ns"] <= 1e6)
    else:
        line("10,000-instance table built in ≤ 1 ms", "not measured", todo, None)
    return lines


# ---------------------------------------------------------------------------------------------
# Formatting


def fmt_num(v: float | None, unit: str = "", digits: int | None = None) -> str:
    if v is None:
        return "—"
    if digits is None:
        digits = 0 if abs(v) >= 100 else 1 if abs(v) >= 10 else 2
    return f"{v:,.{digits}f}{unit}"


def fmt_spread(s: dict | None, digits: int | None = None) -> str:
    if not s:
        return "—"
    if s["n"] == 1:
        return fmt_num(s["median"], digits=digits)
    return f"{fmt_num(s['median'], digits=digits)} ({fmt_num(s['min'], digits=digits)}..{fmt_num(s['max'], digits=digits)})"


def fmt_ns(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:.3g} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.3g} µs"
    return f"{ns:.3g} ns"


def fmt_ratio(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}×"


def fmt_delta(v: float | None) -> str:
    return "—" if v is None else f"{v:+,.0f}"


def progress_line(i: int, total: int, run) -> str:
    head = f"[{i:>3}/{total}] rep {run.rep + 1} {run.case:<17} {run.target:<11}"
    if not run.ok:
        return f"{head} FAILED: {run.error.splitlines()[0] if run.error else '?'}"
    p = run.latency_us["percentiles"]
    cpu = f"  cpu {run.cpu_us_per_req:6.2f} µs/req  rss {run.rss_kib / MIB:6.1f} MiB" if run.cpu_us_per_req else ""
    errs = f"  wrk errors {run.errors}" if run.errors else ""
    other = ""
    if run.other_cpu_s is not None and run.duration_s and run.other_cpu_s / run.duration_s >= NOISY:
        other = f"  ⚠ other processes used {run.other_cpu_s / run.duration_s:.0%} of a CPU"
    return f"{head} {run.rps:>10,.0f} req/s  p50 {p['50']:>6} µs  p99 {p['99']:>6} µs{cpu}{errs}{other}"


# ---------------------------------------------------------------------------------------------
# divan


UNITS_NS = {"ps": 1e-3, "ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}


def parse_divan(text: str) -> list[dict]:
    """Rows of divan's tree table as {name: "pick/10000", fastest_ns, slowest_ns, median_ns,
    mean_ns, samples, iters}; group rows without numbers are skipped."""
    rows, stack = [], []
    lines = text.splitlines()
    start = next((i for i, l in enumerate(lines) if "fastest" in l and "median" in l), None)
    if start is None:
        return []
    for line in lines[start + 1:]:
        m = re.match(r"^([│├╰─\s]*)(\S+)(.*)$", line)
        if not m or "│" not in line:
            continue
        depth = len(m.group(1)) // 3
        name, rest = m.group(2), m.group(3)
        stack[depth - 1:] = [name]
        cols = [c.strip() for c in rest.split("│")]
        if len(cols) < 6 or not cols[0]:
            continue
        try:
            vals = [float(c.split()[0]) * UNITS_NS[c.split()[1]] for c in cols[:4]]
        except (KeyError, IndexError, ValueError):
            continue
        rows.append({"name": "/".join(stack[:depth]), "fastest_ns": vals[0], "slowest_ns": vals[1],
                     "median_ns": vals[2], "mean_ns": vals[3], "samples": int(cols[4]), "iters": int(cols[5])})
    return rows


# ---------------------------------------------------------------------------------------------
# SVG


def nice_ticks(lo: float, hi: float) -> list[float]:
    ticks = []
    for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0 ** e
            if lo <= v <= hi:
                ticks.append(v)
    return ticks


def latency_svg(summary: dict, cases: list[dict], targets: list[str], title: str) -> str:
    """Latency percentile curves (p50..p99.99), x on a log(1/(1−q)) axis, y log µs."""
    pw, ph, cols = 400, 270, 3
    ml, mr, mt, mb = 58, 26, 30, 40
    panels = [c["name"] for c in cases]
    rows_n = math.ceil((len(panels) + 1) / cols)  # one slot for the legend
    width, height = pw * cols, ph * rows_n + 40
    xs = {p: math.log10(1 / (1 - float(p) / 100)) for p in PERCENTILES}
    xmin, xmax = xs[PERCENTILES[0]], xs[PERCENTILES[-1]]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="24" text-anchor="middle" font-size="15">{esc(title)}</text>']
    for k, case in enumerate(panels + ["legend"]):
        ox, oy = (k % cols) * pw, 40 + (k // cols) * ph
        x0, x1, y0, y1 = ox + ml, ox + pw - mr, oy + mt, oy + ph - mb
        if case == "legend":
            for j, t in enumerate(targets):
                y = oy + 60 + j * 22
                dash = ' stroke-dasharray="5,3"' if t == "direct-xcpu" else ""
                out.append(f'<line x1="{ox + 60}" y1="{y}" x2="{ox + 100}" y2="{y}" stroke="{COLORS.get(t, "#000")}" '
                           f'stroke-width="2.5"{dash}/><text x="{ox + 108}" y="{y + 4}" font-size="13">{esc(t)}</text>')
            out.append(f'<text x="{ox + 60}" y="{oy + 70 + len(targets) * 22}" fill="#555">medians over repetitions;'
                       f'</text><text x="{ox + 60}" y="{oy + 84 + len(targets) * 22}" fill="#555">'
                       f'wrk latency, keep-alive</text>')
            continue
        series = {t: e["percentiles_us"] for t, e in summary.get(case, {}).items()
                  if e.get("percentiles_us") and t in targets}
        out.append(f'<text x="{(x0 + x1) / 2}" y="{oy + 18}" text-anchor="middle" font-size="13">'
                   f'{esc(CASE_LABELS.get(case, case))}</text>')
        out.append(f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" fill="none" stroke="#999"/>')
        values = [max(v, 1) for s in series.values() for v in s.values()]
        if not values:
            out.append(f'<text x="{(x0 + x1) / 2}" y="{(y0 + y1) / 2}" text-anchor="middle">no data</text>')
            continue
        lo, hi = min(values) / 1.3, max(values) * 1.3
        ly0, ly1 = math.log10(lo), math.log10(hi)

        def px(p: str) -> float:
            return x0 + (xs[p] - xmin) / (xmax - xmin) * (x1 - x0)

        def py(v: float) -> float:
            return y1 - (math.log10(max(v, 1)) - ly0) / (ly1 - ly0) * (y1 - y0)

        for p in PERCENTILES:
            x = px(p)
            out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y1}" stroke="#eee"/>'
                       f'<text x="{x:.1f}" y="{y1 + 14}" text-anchor="middle">p{p}</text>')
        ticks = nice_ticks(lo, hi)
        if len(ticks) > 8:
            ticks = [t for t in ticks if str(t)[0] in "15"]
        for t in ticks:
            y = py(t)
            label = f"{t / 1000:g} ms" if t >= 1000 else f"{t:g} µs"
            out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#eee"/>'
                       f'<text x="{x0 - 4}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
        out.append(f'<text x="{(x0 + x1) / 2}" y="{y1 + 30}" text-anchor="middle" fill="#555">percentile</text>')
        for t in targets:
            s = series.get(t)
            if not s:
                continue
            pts = " ".join(f"{px(p):.1f},{py(s[p]):.1f}" for p in PERCENTILES)
            c = COLORS.get(t, "#000")
            dash = ' stroke-dasharray="5,3"' if t == "direct-xcpu" else ""
            out.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2"{dash}><title>{esc(t)}: '
                       + ", ".join(f"p{p} {s[p]:,.0f} µs" for p in PERCENTILES) + "</title></polyline>")
            out.extend(f'<circle cx="{px(p):.1f}" cy="{py(s[p]):.1f}" r="2.5" fill="{c}"/>' for p in PERCENTILES)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ---------------------------------------------------------------------------------------------
# Markdown


def markdown(meta: dict, cases: list[dict], targets: list[str], summary: dict, bar_lines: list[dict],
             micro: dict | None, runs: list[dict], h2h: dict | None = None, floor: dict | None = None) -> str:
    m, v, s = meta["machine"], meta["versions"], meta["settings"]
    out = [
        "# Benchmarks: waypost beside HAProxy, nginx and Envoy",
        "",
        f"Written by `bench/load/run.py` on {meta['date']} ({meta['elapsed_s']} s). "
        "Do not edit by hand: rerun the harness (`python3 bench/load/run.py`, or `--quick` for a smoke run).",
        "",
        "## The bar",
        "",
        "| line | waypost | reference | |",
        "| --- | --- | --- | --- |",
    ]
    for b in bar_lines:
        mark = "✅" if b["pass"] is True else "❌" if b["pass"] is False else "—"
        out.append(f"| {b['line']} | {b['waypost']} | {b['reference']} | {mark} |")
    out += [
        "",
        "Load lines compare medians of the same run; \"added p50\" is a target's p50 minus the "
        "direct p50 (wrk straight at one upstream). \"Head to head\" lines are medians of ratios "
        "measured with waypost and HAProxy loaded at the same time on the same CPU (below).",
        "",
        "## Machine and versions",
        "",
        f"- machine: {m['nproc']} CPUs (`nproc`), {m['cpu_model']} (`lscpu`), {m['memory_gib']} GiB, "
        f"kernel {m['kernel']}, {m['os']}",
    ]
    out += [f"- {k}: {val}" for k, val in v.items()]
    out += [
        f"- settings: {s['reps']} repetition(s) × {s['duration_s']:g} s per run after {s['warmup_s']:g} s of "
        f"warm-up; proxy on CPU {s['proxy_cpu']}, wrk (1 thread) and upstreams on CPU {s['load_cpu']} "
        "(`taskset -c`), except the unpinned case",
        f"- invocation: `{meta['invocation'].strip()}`; load average at start {meta['loadavg_at_start']}",
        "",
    ]
    if meta["notes"]:
        out += ["**Notes of this run:**", ""] + [f"- {n}" for n in meta["notes"]] + [""]
    out += ["## Latency distribution", "", "![latency percentiles per target and case](latency.svg)", "",
            "[latency.svg](latency.svg): p50..p99.99 per target, one panel per case (medians over repetitions).", ""]
    out += ["## Results by case", "",
            "Each cell: median (min..max) over the repetitions. CPU is utime+stime of the proxy's process "
            "tree (nginx: master + worker) during the measured run ÷ requests; peak RSS is VmHWM summed "
            "over the same tree at the end of the run. Ratios are of medians.", ""]
    for case in cases:
        per = summary[case["name"]]
        out += [f"### {CASE_LABELS.get(case['name'], case['name'])} (`{case['name']}`: wrk -c{case['conns']} "
                f"{case.get('method', 'GET')} {case['path']}{'' if case['pinned'] else ', nothing pinned'})", "",
                "| target | req/s | vs HAProxy | vs direct | p50 µs | p99 µs | added p50 µs | added p99 µs "
                "| CPU µs/req | CPU vs HAProxy | peak RSS MiB |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for t in targets:
            e = per.get(t)
            if not e or not e["runs"]:
                continue
            if not e["ok"]:
                why = e["failures"][0].splitlines()[0] if e["failures"] else "not run"
                out.append(f"| {t} | failed: {esc(why)} | | | | | | | | | |")
                continue
            r = e["ratios"]
            name = f"**{t}**" if t == "waypost" else t
            if e["ok"] < e["runs"]:
                name += f" ({e['ok']}/{e['runs']} runs)"
            if e["wrk_errors"]:
                name += f" ⚠ {e['wrk_errors']} wrk errors"
            out.append(" | ".join([
                f"| {name}", fmt_spread(e["rps"], 0), fmt_ratio(r.get("rps_vs_haproxy")),
                fmt_ratio(r.get("rps_vs_direct")), fmt_spread(e["p50_us"], 0), fmt_spread(e["p99_us"], 0),
                fmt_delta(r.get("added_p50_us")), fmt_delta(r.get("added_p99_us")),
                fmt_spread(e["cpu_us_per_req"], 2), fmt_ratio(r.get("cpu_us_per_req_vs_haproxy")),
                fmt_spread(e["rss_mib"], 1)]) + " |")
        shares = [e["other_cpu_share"] for e in per.values() if e.get("other_cpu_share")]
        if shares:
            worst = max(x["max"] for x in shares)
            typical = statistics.median(x["median"] for x in shares)
            warn = " ⚠ some runs were disturbed" if worst >= NOISY else ""
            out.append(f"\nOther processes on the machine during these runs: {typical:.0%} of a CPU (median), "
                       f"{worst:.0%} at most.{warn}")
        out.append("")
    if h2h:
        out += ["## Head to head on one core", "",
                "waypost and HAProxy both on CPU 0 at the same time, each loaded by its own wrk on CPU 1 "
                "(the same three upstreams), measured over the same seconds. The scheduler shares CPU 0 "
                "between them, so the proxy that spends less per request serves more requests, and a "
                "change in the VM's speed during a run hits both alike. Each cell: median (min..max) over "
                "the repetitions; the ratios are per run (waypost ÷ HAProxy), then their median.", "",
                "| case | runs | waypost req/s | HAProxy req/s | req/s ratio | waypost CPU µs/req "
                "| HAProxy CPU µs/req | CPU ratio |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for case, e in h2h.items():
            if not e.get("runs"):
                out.append(f"| {case} | 0 ({e.get('failed', 0)} failed) | | | | | | |")
                continue
            w, h = e["waypost"], e["haproxy"]
            out.append(f"| {case} | {e['runs']} | {fmt_spread(w['rps'])} | {fmt_spread(h['rps'])} "
                       f"| {fmt_spread(e['rps_ratio'], 3)} | {fmt_spread(w['cpu_us_per_req'], 2)} "
                       f"| {fmt_spread(h['cpu_us_per_req'], 2)} | {fmt_spread(e['cpu_ratio'], 3)} |")
        out.append("")
        for case, e in (floor or {}).items():
            if e.get("runs"):
                f, h = e["floor"], e["haproxy"]
                out += [f"**The floor** ({case}): `examples/relay.rs`, a bare TCP relay that makes the same "
                        "system calls per request as any proxy (one read and one write on each side) and "
                        "nothing else — no parsing, routing, metrics or timers — dueled with HAProxy the "
                        f"same way, {e['runs']} runs: {fmt_spread(f['cpu_us_per_req'], 2)} µs against "
                        f"{fmt_spread(h['cpu_us_per_req'], 2)} µs per request, a CPU ratio of "
                        f"{fmt_spread(e['cpu_ratio'], 3)}. No proxy making these system calls gets below it "
                        "on this kernel.", ""]
    out += ["## Micro benches (divan)", ""]
    if micro:
        out += [f"`{micro['command']}` — divan's median per benchmark (fastest..slowest sample).", "",
                "| bench | median | fastest..slowest | iterations |", "| --- | ---: | ---: | ---: |"]
        out += [f"| `{r['name']}` | {fmt_ns(r['median_ns'])} | {fmt_ns(r['fastest_ns'])}..{fmt_ns(r['slowest_ns'])} "
                f"| {r['iters']:,} |" for r in micro["rows"]]
        out += ["", "`pick` is one `Table::pick()` (random number included); `build` is `Table::build`; "
                "`pick_shared` is the forwarder's `Balancer::load` + `pick` on 2 threads sharing one snapshot (time per "
                "iteration per thread). Weights random in 1..=100, fixed seed.", ""]
    else:
        out += ["Not run this time (`--quick` or `--no-micro`): `cargo bench --bench balance`.", ""]
    # Hand-written analysis (profiles, changes made and what each bought) kept beside the
    # generated numbers, so a rerun never loses it.
    findings = Path(__file__).resolve().parent.parent / "FINDINGS.md"
    if findings.exists():
        out += [findings.read_text().rstrip(), ""]
    out += ["## Method", "",
            "- Upstreams: three servers on 127.0.0.1:19001..19003, `GET /` → 13 bytes, `GET /64k` → 65,536 "
            "bytes, keep-alive. The service `echo` spreads 3:2:1 over them in every proxy (weighted random "
            "in waypost, weighted round robin in HAProxy, nginx and Envoy), with pooled keep-alive upstream "
            "connections.",
            "- The waypost, upstream and relay binaries are copied to the temp dir (`$TMP/bin`) after the build, "
            "so a rebuild during the run cannot change the code under test.",
            "- Each run starts the proxy afresh (so peak RSS is per case), checks `GET /` and `GET /64k` "
            "through it, warms up, then measures one wrk run. Targets alternate order from one case and "
            "repetition to the next.",
            "- wrk: `" + meta["wrk"] + "` (connections, path and port vary by case and target; "
            "`report.lua` prints the percentiles).",
            "- `direct-xcpu` is wrk on the proxy's CPU straight at an upstream on the other CPU: no proxy, "
            "but the same CPU crossings. On a VM, waking an idle vCPU is slow, so at 1 connection it, not "
            "the proxy's own work, is most of what every proxy adds; compare proxies with each other and "
            "with this line.",
            "- A failed run is listed in its table and left out of the medians.",
            "- Noise: for every run the harness also counts the CPU time used by processes outside the "
            "benchmark (machine busy time from /proc/stat minus proxy, upstreams and wrk); runs where "
            f"that reaches {NOISY:.0%} of a CPU are flagged.",
            "", "### Commands", ""]
    out += [f"- {t}: `{cmd}`" for t, cmd in meta["commands"].items()]
    out += ["", "### Generated configs", ""]
    for name, text in meta["configs"].items():
        out += [f"<details><summary>{name}</summary>", "", "```", text.rstrip(), "```", "", "</details>", ""]
    checked = [r for r in runs if r.get("shares")]
    if checked:
        out += ["### Weight check", "",
                "Before its first run, 1,200 sequential `GET /` through each proxy, counted by the "
                "upstream's `x-instance` header (want 0.5 / 0.333 / 0.167):", ""]
        out += [f"- {r['target']}: " + ", ".join(f"{k} {v:.3f}" for k, v in r["shares"].items()) for r in checked]
        out.append("")
    noisy = [r for r in runs if r["ok"] and r.get("other_cpu_s") is not None and r["duration_s"]
             and r["other_cpu_s"] / r["duration_s"] >= NOISY]
    if noisy:
        out += ["### Disturbed runs", "", f"Runs during which other processes used ≥ {NOISY:.0%} of a CPU:", ""]
        out += [f"- rep {r['rep'] + 1}, {r['case']}, {r['target']}: {r['other_cpu_s'] / r['duration_s']:.0%}"
                for r in noisy]
        out.append("")
    failed = [r for r in runs if not r["ok"]]
    if failed:
        out += ["### Failed runs", ""]
        out += [f"- rep {r['rep'] + 1}, {r['case']}, {r['target']}: `{r['error'].splitlines()[0]}`" for r in failed]
        out.append("")
    return "\n".join(out)


def write_all(out: Path, meta: dict, cases: list[dict], targets: list[str], runs: list[dict],
              micro: dict | None, duels: list[dict]) -> list[Path]:
    summary = summarize(runs, cases, targets)
    summary_h2h = summarize_duels(duels)
    summary_floor = summarize_duels(duels, "floor÷haproxy")
    bar_lines = bar(summary, micro, summary_h2h, summary_floor)
    title = f"Latency percentiles, {meta['date']} — waypost {meta['versions']['waypost'].split()[0]}"
    paths = [out / "results.json", out / "RESULTS.md", out / "latency.svg"]
    micro_json = {k: v for k, v in micro.items() if k != "raw"} if micro else None
    paths[0].write_text(json.dumps({"meta": meta, "cases": cases, "targets": targets, "bar": bar_lines,
                                    "summary": summary, "head_to_head": summary_h2h,
                                    "floor": summary_floor, "micro": micro_json,
                                    "runs": runs, "duels": duels}, indent=1) + "\n")
    paths[1].write_text(markdown(meta, cases, targets, summary, bar_lines, micro, runs, summary_h2h, summary_floor))
    paths[2].write_text(latency_svg(summary, cases, targets, title))
    return paths
