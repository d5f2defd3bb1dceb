//! The shape of a conformance case: what the app sends, and what must come of it — at the
//! upstream (the requests the recorder must receive) and at the app (the responses it must
//! read) — for waypost and, where it differs, for HAProxy. Builders keep each case of the table
//! to a line or three.
//!
//! Requests name their service `echo` (in `Host`, absolute-form targets, `echo:80`…). Each case
//! runs against a service of its own, so the runner rewrites `echo` (and `ECHO`) to that
//! service's four-letter name, the same length, so `Content-Length`s in the table stay right.

use crate::support::recorder::strict::Framing;

/// One step of what the app sends.
#[derive(Debug, Clone)]
pub enum Piece {
    /// These bytes, written and flushed (a short pause separates consecutive pieces).
    Bytes(Vec<u8>),
    /// Wait until an interim `100` response has arrived (at most 2 s), as a client sending
    /// `Expect: 100-continue` does before its body.
    Await100,
    /// Half-close: shut down the app's sending side (FIN) and keep reading.
    Shutdown,
}

/// Which waypost listener the case is sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The outbound listener: the service is named by `Host` or an absolute-form target.
    Outbound,
    /// The case's own per-service listener (`services.<name>.listen`).
    Service,
}

/// Interim responses expected before a forwarded request's final response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interim {
    /// None.
    None,
    /// Exactly one `100 Continue`.
    Continue,
    /// None or a `100 Continue` (when the app does not wait for it, either order is right).
    Any,
}

/// One request the upstream must receive.
#[derive(Debug, Clone)]
pub struct Up {
    /// The method.
    pub method: String,
    /// The request target, exactly.
    pub target: String,
    /// The version on the request line; `None` accepts `HTTP/1.1` or `HTTP/1.0` (a request
    /// that came in as HTTP/1.0 may be forwarded as either).
    pub version: Option<&'static str>,
    /// The one `Host` field's value, or `None` for no `Host` field.
    pub host: Option<String>,
    /// The framing, hence exactly one framing field or none.
    pub framing: Framing,
    /// The decoded body.
    pub body: Vec<u8>,
    /// The trailer fields after a chunked body, in order (names compared in any case).
    pub trailers: Vec<(String, String)>,
    /// Fields that must arrive exactly once with this value.
    pub has: Vec<(String, String)>,
    /// Fields that must not arrive.
    pub lacks: Vec<String>,
    /// Interim responses the app reads before this request's final response.
    pub interim: Interim,
    /// Hop-by-hop fields may arrive (HAProxy forwards them; waypost never does).
    pub hop_by_hop: bool,
    /// An upgrade passed on: `Upgrade`, and `Connection` naming `upgrade`, arrive.
    pub upgrade: bool,
}

/// A request `method target` with `Host: echo`, no body.
pub fn up(method: &str, target: &str) -> Up {
    Up {
        method: method.into(),
        target: target.into(),
        version: Some("HTTP/1.1"),
        host: Some("echo".into()),
        framing: Framing::None,
        body: Vec::new(),
        trailers: Vec::new(),
        has: Vec::new(),
        lacks: Vec::new(),
        interim: Interim::None,
        hop_by_hop: false,
        upgrade: false,
    }
}

/// `GET target`.
pub fn get(target: &str) -> Up {
    up("GET", target)
}

/// `POST target`.
pub fn post(target: &str) -> Up {
    up("POST", target)
}

impl Up {
    /// Framed by `Content-Length`, with this body.
    pub fn len(mut self, body: &str) -> Up {
        self.framing = Framing::Length(body.len() as u64);
        self.body = body.as_bytes().to_vec();
        self
    }

    /// Framed by `Transfer-Encoding: chunked`, with this decoded body.
    pub fn chunked(mut self, body: &str) -> Up {
        self.framing = Framing::Chunked;
        self.body = body.as_bytes().to_vec();
        self
    }

    /// With this `Host` value (`None`: without `Host`).
    pub fn host(mut self, host: Option<&str>) -> Up {
        self.host = host.map(Into::into);
        self
    }

    /// Request line version `HTTP/1.1` or `HTTP/1.0`, either.
    pub fn any_version(mut self) -> Up {
        self.version = None;
        self
    }

    /// Field `name` arrives once, as `value`.
    pub fn has(mut self, name: &str, value: &str) -> Up {
        self.has.push((name.into(), value.into()));
        self
    }

    /// None of `names` arrives.
    pub fn lacks(mut self, names: &[&str]) -> Up {
        self.lacks.extend(names.iter().map(|n| n.to_string()));
        self
    }

    /// With this trailer field (in order).
    pub fn trailer(mut self, name: &str, value: &str) -> Up {
        self.trailers.push((name.into(), value.into()));
        self
    }

    /// Hop-by-hop fields (and `Connection` naming others) may arrive: only HAProxy's outcomes
    /// say so.
    pub fn passes_hop_by_hop(mut self) -> Up {
        self.hop_by_hop = true;
        self
    }

    /// An upgrade request passed on: `Upgrade: <protocols>` and `Connection: upgrade` arrive
    /// (and only those of the hop-by-hop fields).
    pub fn upgrades(mut self, protocols: &str) -> Up {
        self.upgrade = true;
        self.has("upgrade", protocols).has("connection", "upgrade")
    }

    /// The app reads these interim responses first.
    pub fn interim(mut self, interim: Interim) -> Up {
        self.interim = interim;
        self
    }
}

/// One response the app must read, in order.
#[derive(Debug, Clone)]
pub enum Answer {
    /// The upstream's answer to the next request of [`Want::up`].
    Own,
    /// An error the proxy wrote itself: status, and `x-waypost-error` (`None`: not checked —
    /// HAProxy's own errors have no such field).
    Error(u16, Option<&'static str>),
    /// The recorder's own `400`: the proxy forwarded something the strict parser refuses (only
    /// HAProxy's outcomes say so; see [`Want::flagged`]).
    Flagged,
}

/// The outcome a case must have on one proxy.
#[derive(Debug, Clone)]
pub struct Want {
    /// The requests the upstream must receive, in order — and nothing else.
    pub up: Vec<Up>,
    /// The responses the app must read, in order — and nothing else.
    pub app: Vec<Answer>,
    /// Whether the proxy closes the app connection after the last response (else it must stay
    /// open).
    pub close: bool,
    /// Whether a request may have started towards the upstream and been cut off (a malformed
    /// body found while streaming): such a connection must carry no complete request and be
    /// closed by the proxy.
    pub cut: bool,
    /// The one violation the recorder must find (a part of its message), when the proxy is
    /// expected to forward something ambiguous; `None`: no violation at all.
    pub flagged: Option<&'static str>,
}

/// The `x-waypost-error` kind waypost writes with `status` (http1-conformance.md).
pub fn kind(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        404 => "unknown_service",
        405 => "method_not_allowed",
        408 => "request_timeout",
        417 => "expectation_failed",
        431 => "header_too_large",
        501 => "not_implemented",
        505 => "version_not_supported",
        other => panic!("no x-waypost-error kind for {other} in the policy"),
    }
}

/// waypost answers `status` itself, sends nothing upstream, and closes the connection.
pub fn reject(status: u16) -> Want {
    Want {
        up: Vec::new(),
        app: vec![Answer::Error(status, Some(kind(status)))],
        close: true,
        cut: false,
        flagged: None,
    }
}

/// The proxy answers nothing, sends nothing complete upstream, and closes the app connection.
pub fn closed() -> Want {
    Want {
        up: Vec::new(),
        app: Vec::new(),
        close: true,
        cut: false,
        flagged: None,
    }
}

/// The upstream receives `ups`; the app reads their answers; the connection stays open.
pub fn forward(ups: impl IntoIterator<Item = Up>) -> Want {
    let up: Vec<Up> = ups.into_iter().collect();
    Want {
        app: vec![Answer::Own; up.len()],
        up,
        close: false,
        cut: false,
        flagged: None,
    }
}

impl Want {
    /// Then the proxy answers `status` itself and closes.
    pub fn then_reject(mut self, status: u16) -> Want {
        self.app.push(Answer::Error(status, Some(kind(status))));
        self.close = true;
        self
    }

    /// Then the proxy answers `status` itself and the connection stays open (routing errors).
    pub fn then_error(mut self, status: u16) -> Want {
        self.app.push(Answer::Error(status, Some(kind(status))));
        self
    }

    /// Then more forwarded requests.
    pub fn then_forward(mut self, ups: impl IntoIterator<Item = Up>) -> Want {
        for u in ups {
            self.up.push(u);
            self.app.push(Answer::Own);
        }
        self
    }

    /// The proxy closes the app connection after the last response.
    pub fn closing(mut self) -> Want {
        self.close = true;
        self
    }

    /// The proxy keeps the app connection open after the last response.
    pub fn keep_open(mut self) -> Want {
        self.close = false;
        self
    }

    /// A request may have started upstream and been cut off (see [`Want::cut`]).
    pub fn cut(mut self) -> Want {
        self.cut = true;
        self
    }

    /// The same outcome as HAProxy would show it: its own errors carry no `x-waypost-error`.
    pub fn as_haproxy(&self) -> Want {
        let mut w = self.clone();
        for a in &mut w.app {
            if let Answer::Error(_, kind) = a {
                *kind = None;
            }
        }
        w
    }
}

/// HAProxy answers `status` itself, sends nothing upstream, and closes.
pub fn ha_reject(status: u16) -> Want {
    Want {
        up: Vec::new(),
        app: vec![Answer::Error(status, None)],
        close: true,
        cut: false,
        flagged: None,
    }
}

/// The proxy forwards a request the recorder refuses for `what` (a part of the violation
/// message); the app reads the recorder's `400`, and the proxy closes.
pub fn flagged(what: &'static str) -> Want {
    Want {
        up: Vec::new(),
        app: vec![Answer::Flagged],
        close: true,
        cut: false,
        flagged: Some(what),
    }
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Case {
    /// Short unique id (kebab-case), used in reports and in docs/http1-conformance.md.
    pub id: &'static str,
    /// Why the case is here, in one line.
    pub why: &'static str,
    /// What the app sends.
    pub send: Vec<Piece>,
    /// The listener it is sent to.
    pub via: Via,
    /// What must come of it through waypost (the policy).
    pub want: Want,
    /// What HAProxy does instead (one outcome, or either of several when it varies from run to
    /// run), and why waypost differs; `None` when HAProxy shows the same outcome (its error
    /// statuses equal waypost's).
    pub haproxy: Option<(Vec<Want>, &'static str)>,
}

/// A case sending `bytes` in one write. Give it an outcome with [`Case::want`].
pub fn case(id: &'static str, why: &'static str, bytes: impl AsRef<[u8]>) -> Case {
    pieces(id, why, vec![Piece::Bytes(bytes.as_ref().to_vec())])
}

/// A case sending `send` step by step.
pub fn pieces(id: &'static str, why: &'static str, send: Vec<Piece>) -> Case {
    Case {
        id,
        why,
        send,
        via: Via::Outbound,
        want: Want {
            up: Vec::new(),
            app: Vec::new(),
            close: false,
            cut: false,
            flagged: None,
        },
        haproxy: None,
    }
}

/// `Piece::Bytes` from anything byte-like.
pub fn bytes(b: impl AsRef<[u8]>) -> Piece {
    Piece::Bytes(b.as_ref().to_vec())
}

impl Case {
    /// waypost's outcome.
    pub fn want(mut self, want: Want) -> Case {
        self.want = want;
        self
    }

    /// HAProxy's outcome where it differs from waypost's, and why waypost does otherwise.
    pub fn haproxy(mut self, want: Want, why: &'static str) -> Case {
        self.haproxy = Some((vec![want], why));
        self
    }

    /// HAProxy shows waypost's outcome on some runs and `want` on others (timing inside
    /// HAProxy decides), and why waypost differs.
    pub fn haproxy_sometimes(mut self, want: Want, why: &'static str) -> Case {
        self.haproxy = Some((vec![self.want.as_haproxy(), want], why));
        self
    }

    /// Sent to the case's per-service listener instead of the outbound one.
    pub fn via_service(mut self) -> Case {
        self.via = Via::Service;
        self
    }

    /// The outcomes expected from HAProxy (any one of them).
    pub fn haproxy_wants(&self) -> Vec<Want> {
        match &self.haproxy {
            Some((w, _)) => w.clone(),
            None => vec![self.want.as_haproxy()],
        }
    }
}

/// Why waypost differs from HAProxy 2.6, for differences several cases share. Each names the
/// rule waypost follows; docs/http1-conformance.md expands on them.
pub mod why {
    /// Both framing fields.
    pub const CL_TE: &str = "RFC 9112 §6.1 lets a server reject a message with both Content-Length and \
        Transfer-Encoding, or frame it by Transfer-Encoding and close after; HAProxy does the latter \
        (dropping Content-Length), waypost rejects: a message framed two ways is broken or an attack";
    /// obs-fold.
    pub const OBS_FOLD: &str =
        "RFC 9112 §5.2 lets a server reject obs-fold or replace it with spaces; \
        HAProxy unfolds, waypost rejects, so no hop behind it reads a folded line another way";
    /// Lenient chunk syntax.
    pub const CHUNKS: &str =
        "HAProxy's chunk parser takes a bare LF, whitespace after the size and \
        extensions unchecked, then re-chunks; waypost holds to the RFC 9112 §7.1 grammar, since \
        chunk-syntax leniency is what chunk-based smuggling between two parsers relies on";
    /// Trailers.
    pub const TRAILERS: &str =
        "HAProxy forwards trailer fields as they came (Content-Length aside); \
        RFC 9110 §6.5.1 rules out trailers for framing, routing, authentication, controls and \
        content handling, and a server that merges trailers into the header section could be \
        misled by them, so waypost drops those";
    /// Control bytes in field values.
    pub const CTL: &str =
        "HAProxy forwards control bytes in field values (haproxy#2914 asks for a \
        strict mode); RFC 9110 §5.5: a recipient of NUL, CR or LF in a value MUST reject it or \
        replace it with SP, other CTLs are invalid too: waypost rejects them all but HTAB";
    /// Connection naming framing or routing fields.
    pub const CONN_FRAMING: &str = "HAProxy acts only on close and keep-alive in Connection and \
        forwards the field, whatever it names; an upstream that honours `Connection: \
        content-length` drops the framing (the smuggling of issue 15), so waypost refuses a \
        request whose Connection names a framing or routing field";
    /// Hop-by-hop fields.
    pub const HOP_BY_HOP: &str = "HAProxy does not remove the fields Connection names nor the \
        other hop-by-hop fields; RFC 9110 §7.6.1 says an intermediary MUST, and waypost does";
    /// Head size and field count.
    pub const LIMITS: &str =
        "HAProxy's head limit is its buffer (tune.bufsize, 16 KiB by default, \
        and tune.http.maxhdr fields) and it answers 400; waypost takes heads up to 64 KiB and 100 \
        fields (client.max_head_size, client.max_headers) and answers 431 (RFC 6585 §5) beyond";
    /// Absolute-form forwarded as is.
    pub const ABS: &str =
        "HAProxy forwards absolute-form as it came; waypost sends origin-form with \
        Host from the authority, as RFC 9112 §3.2.1 asks of requests to an origin server";
    /// Absolute-form with a Host that differs from the authority.
    pub const ABS_HOST: &str =
        "HAProxy rejects a Host that differs from the authority (since 2.1, \
        haproxy#1378); RFC 9112 §3.2.2 says a proxy MUST ignore that Host and send the authority, \
        which waypost does";
    /// Userinfo.
    pub const USERINFO: &str =
        "HAProxy forwards userinfo in absolute-form; RFC 9110 §4.2.4 forbids \
        sending it and asks a recipient to treat it as an error";
    /// Schemes.
    pub const SCHEME: &str =
        "HAProxy forwards any scheme as it came; waypost forwards only http:// \
        (https:// would need TLS it does not originate, other schemes are not HTTP)";
    /// No Host.
    pub const NO_HOST: &str =
        "HAProxy forwards HTTP/1.1 without Host; RFC 9112 §3.2: a server MUST \
        answer 400";
    /// Invalid Host.
    pub const BAD_HOST: &str = "HAProxy forwards a Host that is not host[:port]; RFC 9112 §3.2: a \
        server MUST answer 400 to an invalid Host";
    /// Upgrade.
    pub const UPGRADE: &str = "Both pass the WebSocket upgrade on and tunnel after a 101; HAProxy \
        copies Connection as the app wrote it, waypost writes its own `connection: upgrade`";
    /// h2c upgrade.
    pub const UPGRADE_H2C: &str = "HAProxy forwards an h2c upgrade; waypost never does (HTTP/2 \
        from apps is served with prior knowledge by hyper's h2 server), so the request goes up \
        as a plain one";
    /// Request-line whitespace.
    pub const RL_WS: &str = "HAProxy splits the request line on runs of spaces or tabs, which RFC \
        9112 §3 allows but warns can enable smuggling between parsers that differ; waypost takes \
        single SPs only";
}
