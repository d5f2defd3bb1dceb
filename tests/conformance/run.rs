//! Running one case: the exchange on the app's side ([`super::app`]), then the checks of
//! [`super::model::Want`] against what the app read and what the recorder received.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::app::{exchange, shorten, Resp, Seen, QUIET};
use super::model::{Answer, Case, Interim, Piece, Up, Want};
use crate::support::recorder::{Recorded, Recorder};

/// How long a cut-off upstream connection has to be closed by the proxy.
const CUT_WAIT: Duration = Duration::from_secs(3);

/// Rewrites the service name `echo`/`ECHO` into `svc` (same length) in `b`.
pub fn rename(b: &[u8], svc: &str) -> Vec<u8> {
    assert_eq!(svc.len(), 4, "service names keep the length of `echo`");
    let upper = svc.to_ascii_uppercase();
    let mut out = b.to_vec();
    for (from, to) in [(&b"echo"[..], svc.as_bytes()), (b"ECHO", upper.as_bytes())] {
        let mut i = 0;
        while i + 4 <= out.len() {
            if &out[i..i + 4] == from {
                out[i..i + 4].copy_from_slice(to);
                i += 4;
            } else {
                i += 1;
            }
        }
    }
    out
}

/// Runs `case` through the proxy listening at `addr` for the case, whose upstream is `rec` and
/// whose service is `svc`, expecting one of `wants` (the first decides how long to read).
/// Every problem found with the first, or none when one of them holds.
pub async fn run(
    case: &Case,
    wants: &[Want],
    addr: SocketAddr,
    rec: &Recorder,
    svc: &str,
) -> Vec<String> {
    let wants: Vec<Want> = wants.iter().map(|w| renamed(w, svc)).collect();
    let want = &wants[0];
    let send: Vec<Piece> = case
        .send
        .iter()
        .map(|p| match p {
            Piece::Bytes(b) => Piece::Bytes(rename(b, svc)),
            other => other.clone(),
        })
        .collect();
    let mut ups = want.up.iter();
    let heads: Vec<bool> = want
        .app
        .iter()
        .map(|a| matches!(a, Answer::Own) && ups.next().is_some_and(|u| u.method == "HEAD"))
        .collect();
    let seen = exchange(addr, &send, &heads, want.app.len(), want.close, QUIET).await;
    if want.cut {
        // The proxy closes a cut-off upstream connection after (or as) it answers the app.
        let deadline = Instant::now() + CUT_WAIT;
        while Instant::now() < deadline && rec.conns().iter().any(|c| c.pending() > 0 && !c.eof) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let sent: Vec<u8> = send
        .iter()
        .flat_map(|p| match p {
            Piece::Bytes(b) => b.clone(),
            _ => Vec::new(),
        })
        .collect();
    let first = check(want, &seen, rec, &sent);
    if first.is_empty()
        || wants[1..]
            .iter()
            .any(|w| check(w, &seen, rec, &sent).is_empty())
    {
        return Vec::new();
    }
    first
}

/// `want` with `echo` renamed to `svc` in the upstream targets and Host values.
fn renamed(want: &Want, svc: &str) -> Want {
    let renamed = |t: &str| String::from_utf8_lossy(&rename(t.as_bytes(), svc)).into_owned();
    let mut want = want.clone();
    for u in &mut want.up {
        u.host = u.host.as_deref().map(renamed);
        u.target = renamed(&u.target);
    }
    want
}

/// Field names the app sent, lowercased (every line's text before a colon: enough to tell a
/// field the proxy invented from one it passed on).
fn sent_names(sent: &[u8]) -> Vec<String> {
    sent.split(|&b| b == b'\n')
        .filter_map(|l| l.iter().position(|&b| b == b':').map(|i| &l[..i]))
        .map(|n| String::from_utf8_lossy(n.trim_ascii()).to_ascii_lowercase())
        .collect()
}

/// Hop-by-hop fields that must never reach the upstream.
const HOP_BY_HOP: [&str; 6] = [
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Compares one recorded request with what was expected; problems are pushed to `out`.
fn check_up(i: usize, want: &Up, got: &Recorded, sent: &[String], out: &mut Vec<String>) {
    let h = &got.head;
    let mut bad = |what: String| {
        out.push(format!(
            "upstream request {}: {what} (got `{} {} {}`)",
            i + 1,
            h.method,
            h.target,
            h.version
        ))
    };
    if h.method != want.method || h.target != want.target {
        bad(format!("expected `{} {}`", want.method, want.target));
    }
    match want.version {
        Some(v) if h.version != v => bad(format!("version {} expected", v)),
        _ => {}
    }
    let hosts = h.all("host");
    match &want.host {
        Some(w) if hosts != [w.as_str()] => bad(format!("Host {hosts:?}, expected [{w:?}]")),
        None if !hosts.is_empty() => bad(format!("Host {hosts:?}, expected none")),
        _ => {}
    }
    if got.framing != want.framing {
        bad(format!(
            "framing {:?}, expected {:?}",
            got.framing, want.framing
        ));
    }
    if got.body.data != want.body {
        bad(format!(
            "body {:?}, expected {:?}",
            shorten(&got.body.data, 80),
            shorten(&want.body, 80)
        ));
    }
    if got.body.extensions > 0 {
        bad(format!(
            "{} chunk extension(s) forwarded",
            got.body.extensions
        ));
    }
    let norm = |v: &[(String, String)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect()
    };
    if norm(&got.body.trailers) != norm(&want.trailers) {
        bad(format!(
            "trailers {:?}, expected {:?}",
            got.body.trailers, want.trailers
        ));
    }
    for (name, value) in &want.has {
        let all = h.all(name);
        if all != [value.as_str()] {
            bad(format!("{name} {all:?}, expected [{value:?}]"));
        }
    }
    let hop_by_hop = if want.hop_by_hop {
        &[][..]
    } else {
        &HOP_BY_HOP[..]
    };
    for name in want
        .lacks
        .iter()
        .map(String::as_str)
        .chain(
            hop_by_hop
                .iter()
                .copied()
                .filter(|n| !(want.upgrade && *n == "upgrade")),
        )
        .chain(["x-waypost-error"])
    {
        if !h.all(name).is_empty() {
            bad(format!("{name} forwarded: {:?}", h.all(name)));
        }
    }
    for token in h.elements("connection") {
        let own = token.eq_ignore_ascii_case("keep-alive")
            || token.eq_ignore_ascii_case("close")
            || (want.upgrade && token.eq_ignore_ascii_case("upgrade"));
        if !own && !want.hop_by_hop {
            bad(format!("Connection names {token:?} upstream"));
        }
    }
    let own = ["host", "content-length", "transfer-encoding", "connection"];
    for (name, _) in &h.fields {
        let lower = name.to_ascii_lowercase();
        if !own.contains(&lower.as_str()) && !sent.contains(&lower) {
            bad(format!("field {name:?} the app never sent"));
        }
    }
}

/// Every way `seen` (the app's side) and `rec` (the upstream's) differ from `want`.
pub fn check(want: &Want, seen: &Seen, rec: &Recorder, sent: &[u8]) -> Vec<String> {
    let mut out = seen.trouble.clone();
    let violations = rec.violations();
    match want.flagged {
        None => out.extend(
            violations
                .iter()
                .map(|v| format!("upstream violation: {v}")),
        ),
        Some(what) if violations.len() != 1 || !violations[0].contains(what) => {
            out.push(format!(
                "expected one upstream violation about {what:?}, got {violations:?}"
            ));
        }
        Some(_) => {}
    }
    let recs = rec.requests();
    if recs.len() != want.up.len() {
        let lines: Vec<String> = recs
            .iter()
            .map(|r| format!("{} {}", r.head.method, r.head.target))
            .collect();
        out.push(format!(
            "upstream received {} request(s) {lines:?}, expected {}",
            recs.len(),
            want.up.len()
        ));
    }
    let names = sent_names(sent);
    for (i, (w, g)) in want.up.iter().zip(&recs).enumerate() {
        check_up(i, w, g, &names, &mut out);
    }
    let conns = rec.conns();
    if want.up.is_empty() && !want.cut && want.flagged.is_none() && rec.bytes() > 0 {
        let b: Vec<u8> = conns.iter().flat_map(|c| c.bytes.clone()).collect();
        out.push(format!("bytes reached the upstream: {}", shorten(&b, 120)));
    }
    for c in conns.iter().filter(|c| c.pending() > 0) {
        if !want.cut {
            out.push(format!(
                "a request was cut off on upstream connection {}: {}",
                c.id,
                shorten(&c.bytes, 120)
            ));
        } else if !c.eof {
            out.push(format!("cut-off upstream connection {} left open", c.id));
        }
    }
    let shown: Vec<String> = seen.responses.iter().map(Resp::show).collect();
    if seen.responses.len() != want.app.len() {
        out.push(format!(
            "app read {} response(s) {shown:?}, expected {}",
            seen.responses.len(),
            want.app.len()
        ));
    }
    let mut next_up = 0;
    for (i, (a, r)) in want.app.iter().zip(&seen.responses).enumerate() {
        let mut bad =
            |what: String| out.push(format!("response {}: {what} (got {})", i + 1, r.show()));
        match a {
            Answer::Error(status, kind) => {
                if r.status != *status {
                    bad(format!("status {status} expected"));
                }
                if let Some(kind) = kind {
                    if r.field("x-waypost-error") != Some(kind) {
                        bad(format!("x-waypost-error {kind} expected"));
                    }
                }
                if r.field("x-recorder-target").is_some() {
                    bad("came from the upstream, expected the proxy's own error".into());
                }
            }
            Answer::Flagged => {
                if r.field("x-recorder-violation").is_none() {
                    bad("expected the recorder's answer to a violation".into());
                }
            }
            Answer::Own => {
                let up = want.up.get(next_up);
                let target = recs.get(next_up).map(|r| r.head.target.clone());
                next_up += 1;
                if r.status != 200 || r.field("x-waypost-error").is_some() {
                    bad("expected the upstream's 200".into());
                }
                let is_head = up.is_some_and(|u| u.method == "HEAD");
                match &target {
                    Some(t)
                        if r.field("x-recorder-target") != Some(t)
                            || (!is_head && r.body != t.as_bytes()) =>
                    {
                        bad(format!(
                            "expected the answer to upstream request {next_up} ({t})"
                        ));
                    }
                    None => bad(format!(
                        "answers upstream request {next_up}, which never came"
                    )),
                    _ => {}
                }
                let interim_ok = match up.map(|u| u.interim) {
                    Some(Interim::Continue) => r.interim == [100],
                    Some(Interim::Any) => r.interim.is_empty() || r.interim == [100],
                    _ => r.interim.is_empty(),
                };
                if !interim_ok {
                    bad(format!("interim responses {:?}", r.interim));
                }
            }
        }
    }
    match (want.close, seen.eof) {
        (true, false) => out.push("connection left open, expected the proxy to close it".into()),
        (false, true) => out.push("connection closed, expected it to stay open".into()),
        _ => {}
    }
    out
}
