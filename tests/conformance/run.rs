//! Running one case: the app's side (send the pieces, read and parse every response, see
//! whether the connection closes), then the checks of [`super::model::Want`] against what the
//! app read and what the recorder received. Every read is bounded; a case never hangs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::model::{Answer, Case, Interim, Piece, Up, Want};
use crate::support::recorder::strict::{self, Framing, Step};
use crate::support::recorder::{Recorded, Recorder};

/// Pause between two pieces, so the proxy reads them separately.
const GAP: Duration = Duration::from_millis(30);
/// After the expected responses, how long the app connection must stay quiet (no extra bytes:
/// an extra response would be a desync) before a kept-alive case is over.
const QUIET: Duration = Duration::from_millis(300);
/// After the expected responses, how long the proxy has to close a connection it must close.
const CLOSE_WAIT: Duration = Duration::from_secs(3);
/// Bound on a whole exchange.
const LIMIT: Duration = Duration::from_secs(8);
/// How long a cut-off upstream connection has to be closed by the proxy.
const CUT_WAIT: Duration = Duration::from_secs(3);

/// One response as the app read it.
#[derive(Debug, Clone)]
pub struct Resp {
    /// The status code.
    pub status: u16,
    /// The fields, in order.
    pub fields: Vec<(String, String)>,
    /// The decoded body.
    pub body: Vec<u8>,
    /// Interim (1xx) statuses that came before it.
    pub interim: Vec<u16>,
}

impl Resp {
    /// The first value of `name`, if any.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn show(&self) -> String {
        let err = self.field("x-waypost-error").unwrap_or("-");
        format!("{} [{err}] {:?}", self.status, shorten(&self.body, 60))
    }
}

/// What the app saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Final responses, in order.
    pub responses: Vec<Resp>,
    /// Whether the proxy closed (or reset) the connection.
    pub eof: bool,
    /// What went wrong on the app's side (unparsable bytes, no answer in time).
    pub trouble: Vec<String>,
}

/// Bytes shown in a report: printable ASCII as is, the rest escaped, cut at `max`.
pub fn shorten(b: &[u8], max: usize) -> String {
    let text: String = b
        .iter()
        .flat_map(|&c| std::ascii::escape_default(c))
        .map(char::from)
        .collect();
    if text.len() > max {
        format!("{}…", &text[..max])
    } else {
        text
    }
}

/// Parses one response at the start of `buf`; `head` when it answers a HEAD request, `eof`
/// when no more bytes will come (a close-delimited body ends there).
fn response(buf: &[u8], head: bool, eof: bool) -> Step<(Resp, usize)> {
    let (line, next) = match strict::line(buf, 0) {
        None => return Step::Partial,
        Some(Err(e)) => return Step::Bad(e),
        Some(Ok(l)) => l,
    };
    let text = String::from_utf8_lossy(line);
    let mut parts = text.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let status = match code.parse::<u16>() {
        Ok(s) if (version == "HTTP/1.1" || version == "HTTP/1.0") && code.len() == 3 => s,
        _ => return Step::Bad(format!("bad status line {text:?}")),
    };
    let (fields, at) = match strict::fields(buf, next) {
        Step::Partial => return Step::Partial,
        Step::Bad(e) => return Step::Bad(e),
        Step::Done(f) => f,
    };
    let resp = |body: Vec<u8>| Resp {
        status,
        fields: fields.clone(),
        body,
        interim: Vec::new(),
    };
    if (100..200).contains(&status) || head || status == 204 || status == 304 {
        return Step::Done((resp(Vec::new()), at));
    }
    let get = |n: &str| {
        fields
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(n))
            .count()
    };
    let framing = if get("transfer-encoding") > 0 {
        Some(Framing::Chunked)
    } else if let Some((_, v)) = fields
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        match v.parse() {
            Ok(n) => Some(Framing::Length(n)),
            Err(_) => return Step::Bad(format!("response content-length {v:?}")),
        }
    } else {
        None
    };
    match framing {
        Some(f) => match strict::body(f, &buf[at..]) {
            Step::Partial => Step::Partial,
            Step::Bad(e) => Step::Bad(e),
            Step::Done(b) => Step::Done((resp(b.data), at + b.len)),
        },
        None if eof => Step::Done((resp(buf[at..].to_vec()), buf.len())),
        None => Step::Partial,
    }
}

/// Sends `send` to `addr` and reads responses until `finals` final responses came and then
/// either the connection closed (`close`) or it stayed quiet for `quiet`. `heads[i]` tells
/// whether final response `i` answers a HEAD request.
pub async fn exchange(
    addr: SocketAddr,
    send: &[Piece],
    heads: &[bool],
    finals: usize,
    close: bool,
    quiet: Duration,
) -> Seen {
    let mut seen = Seen::default();
    let stream = match tokio::time::timeout(LIMIT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        other => {
            seen.trouble
                .push(format!("cannot connect to {addr}: {other:?}"));
            return seen;
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let continued = Arc::new(Notify::new());
    let sender = tokio::spawn({
        let (send, continued) = (send.to_vec(), continued.clone());
        async move {
            let mut first = true;
            for piece in send {
                match piece {
                    Piece::Bytes(b) => {
                        if !first {
                            tokio::time::sleep(GAP).await;
                        }
                        first = false;
                        if wr.write_all(&b).await.is_err() {
                            break;
                        }
                    }
                    Piece::Await100 => {
                        let _ = tokio::time::timeout(Duration::from_secs(2), continued.notified())
                            .await;
                    }
                    Piece::Shutdown => {
                        let _ = wr.shutdown().await;
                    }
                }
            }
            // Handed back so the sending side stays open until the case is over (dropping it
            // would half-close the connection).
            wr
        }
    });
    let limit = Instant::now() + LIMIT;
    let (mut buf, mut used, mut interim) = (Vec::new(), 0, Vec::new());
    let mut tmp = vec![0u8; 64 * 1024];
    let mut close_by = None;
    loop {
        loop {
            let head = heads.get(seen.responses.len()).copied().unwrap_or(false);
            match response(&buf[used..], head, seen.eof) {
                Step::Partial => break,
                Step::Bad(e) => {
                    seen.trouble.push(format!(
                        "unparsable response bytes ({e}): {}",
                        shorten(&buf[used..], 120)
                    ));
                    used = buf.len();
                    break;
                }
                Step::Done((mut r, n)) => {
                    used += n;
                    if (100..200).contains(&r.status) {
                        interim.push(r.status);
                        if r.status == 100 {
                            continued.notify_one();
                        }
                    } else {
                        r.interim = std::mem::take(&mut interim);
                        seen.responses.push(r);
                    }
                }
            }
        }
        if seen.eof {
            if used < buf.len() {
                seen.trouble.push(format!(
                    "incomplete response at close: {}",
                    shorten(&buf[used..], 120)
                ));
            }
            break;
        }
        let until = if seen.responses.len() >= finals {
            if close {
                *close_by.get_or_insert_with(|| (Instant::now() + CLOSE_WAIT).min(limit))
            } else {
                (Instant::now() + quiet).min(limit)
            }
        } else {
            limit
        };
        match tokio::time::timeout_at(until, rd.read(&mut tmp)).await {
            Err(_) => {
                if seen.responses.len() < finals {
                    seen.trouble.push(format!(
                        "no complete answer within {LIMIT:?}; pending bytes: {}",
                        shorten(&buf[used..], 120)
                    ));
                }
                break;
            }
            Ok(Ok(0)) | Ok(Err(_)) => seen.eof = true,
            Ok(Ok(n)) => buf.extend_from_slice(&tmp[..n]),
        }
    }
    sender.abort();
    seen
}

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
        .chain(hop_by_hop.iter().copied())
        .chain(["x-waypost-error"])
    {
        if !h.all(name).is_empty() {
            bad(format!("{name} forwarded: {:?}", h.all(name)));
        }
    }
    for token in h.elements("connection") {
        let own = token.eq_ignore_ascii_case("keep-alive") || token.eq_ignore_ascii_case("close");
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
