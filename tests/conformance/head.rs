//! Cases about the request head itself: the request line, line endings, field syntax (bare CR,
//! NUL, controls, obs-fold, names that are not tokens), `Connection` and the hop-by-hop fields,
//! and the limits on head size and field count.

use super::model::*;

/// A request with `n` fields: `Host` and `n - 1` others.
fn fields(n: usize) -> String {
    let mut s = String::from("GET /f HTTP/1.1\r\nHost: echo\r\n");
    for i in 1..n {
        s.push_str(&format!("X-F{i}: {i}\r\n"));
    }
    s + "\r\n"
}

/// A request whose one extra field has a value of `n` bytes.
fn big_field(n: usize) -> String {
    format!(
        "GET /big HTTP/1.1\r\nHost: echo\r\nX-Big: {}\r\n\r\n",
        "a".repeat(n)
    )
}

#[rustfmt::skip]
pub fn cases() -> Vec<Case> {
    let long_target = format!("/{}", "t".repeat(20 * 1024));
    vec![
        // --- request line ---
        case("rl-double-space", "two spaces after the method",
            "GET  /a HTTP/1.1\r\nHost: echo\r\n\r\n").want(reject(400))
            .haproxy(forward([get("/a")]), why::RL_WS),
        case("rl-trailing-space", "a space after the version",
            "GET /a HTTP/1.1 \r\nHost: echo\r\n\r\n").want(reject(400)),
        case("rl-tab", "a tab as separator",
            "GET\t/a HTTP/1.1\r\nHost: echo\r\n\r\n").want(reject(400))
            .haproxy(forward([get("/a")]), why::RL_WS),
        case("rl-no-version", "no version (an HTTP/0.9 simple request)",
            "GET /a\r\nHost: echo\r\n\r\n").want(reject(400)),
        case("rl-lower-version", "the version name is case-sensitive",
            "GET /a http/1.1\r\nHost: echo\r\n\r\n").want(reject(400)),
        case("rl-version-1.2", "a well-formed version waypost does not speak",
            "GET /a HTTP/1.2\r\nHost: echo\r\n\r\n").want(reject(505))
            .haproxy(forward([get("/a")]), "HAProxy forwards any HTTP/1.x or 2.0 request line as HTTP/1.1; waypost answers 505 (RFC 9110 §15.6.6) rather than guess what a client of another version meant"),
        case("rl-version-2.0", "HTTP/2.0 on an HTTP/1 request line (not the h2c preface)",
            "GET /a HTTP/2.0\r\nHost: echo\r\n\r\n").want(reject(505))
            .haproxy(forward([get("/a")]), "HAProxy forwards any HTTP/1.x or 2.0 request line as HTTP/1.1; waypost answers 505 (RFC 9110 §15.6.6) rather than guess what a client of another version meant"),
        case("rl-version-0.9", "HTTP/0.9 spelled out",
            "GET /a HTTP/0.9\r\nHost: echo\r\n\r\n").want(reject(505))
            .haproxy(flagged("version is not"), "HAProxy forwards an HTTP/0.9 request line as it came; waypost answers 505 (RFC 9110 §15.6.6)"),
        case("rl-version-1.10", "a version that is not digit.digit",
            "GET /a HTTP/1.10\r\nHost: echo\r\n\r\n").want(reject(400)),
        case("rl-method-not-token", "a method with a byte that is not a tchar",
            "G(T /a HTTP/1.1\r\nHost: echo\r\n\r\n").want(reject(400)),
        case("rl-method-lower", "methods are case-sensitive tokens: `get` passes as is",
            "get /m HTTP/1.1\r\nHost: echo\r\n\r\n").want(forward([up("get", "/m")])),
        case("rl-method-custom", "an extension method passes",
            "PURGE /m HTTP/1.1\r\nHost: echo\r\n\r\n").want(forward([up("PURGE", "/m")])),
        case("rl-leading-crlf", "an empty line before the request line is ignored (RFC 9112 §2.2)",
            "\r\nGET /l HTTP/1.1\r\nHost: echo\r\n\r\n").want(forward([get("/l")])),
        case("rl-bare-cr", "a bare CR ends the request line",
            "GET /a HTTP/1.1\rHost: echo\r\n\r\n").want(reject(400)),
        case("target-fragment", "a fragment is never sent (RFC 9112 §3.2)",
            "GET /a#frag HTTP/1.1\r\nHost: echo\r\n\r\n").want(reject(400)),
        case("target-non-ascii", "a byte outside visible ASCII in the target",
            b"GET /caf\xe9 HTTP/1.1\r\nHost: echo\r\n\r\n").want(reject(400)),
        case("target-ctl", "a control byte in the target",
            b"GET /a\x01b HTTP/1.1\r\nHost: echo\r\n\r\n").want(reject(400)),
        case("target-query", "a query passes untouched",
            "GET /a?b=c&d=%20&e HTTP/1.1\r\nHost: echo\r\n\r\n").want(forward([get("/a?b=c&d=%20&e")])),
        case("target-dots", "dot segments and encoded slashes pass untouched (no normalisation)",
            "GET /a/../b%2Fc/./d HTTP/1.1\r\nHost: echo\r\n\r\n").want(forward([get("/a/../b%2Fc/./d")])),
        case("target-long", "a 20 KiB target within the 64 KiB head",
            format!("GET {long_target} HTTP/1.1\r\nHost: echo\r\n\r\n")).want(forward([get(&long_target)]))
            .haproxy(ha_reject(400), why::LIMITS),
        // --- line endings ---
        case("lf-only", "bare LF line endings are accepted and sent on as CRLF",
            "GET /lf HTTP/1.1\nHost: echo\n\n").want(forward([get("/lf")])),
        case("lf-mixed", "CRLF and LF mixed",
            "GET /lf HTTP/1.1\r\nHost: echo\nX-A: 1\r\n\n").want(forward([get("/lf").has("x-a", "1")])),
        // --- field syntax ---
        case("f-space-before-colon", "whitespace between name and colon",
            "GET /a HTTP/1.1\r\nHost: echo\r\nX-A : 1\r\n\r\n").want(reject(400)),
        case("f-tab-before-colon", "a tab between name and colon",
            "GET /a HTTP/1.1\r\nHost: echo\r\nX-A\t: 1\r\n\r\n").want(reject(400)),
        case("f-empty-name", "an empty field name",
            "GET /a HTTP/1.1\r\nHost: echo\r\n: x\r\n\r\n").want(reject(400)),
        case("f-no-colon", "a field line without a colon",
            "GET /a HTTP/1.1\r\nHost: echo\r\nX-A\r\n\r\n").want(reject(400)),
        case("f-name-slash", "a name byte that is not a tchar",
            "GET /a HTTP/1.1\r\nHost: echo\r\nX/A: 1\r\n\r\n").want(reject(400)),
        case("f-name-nul", "a NUL in a field name",
            b"GET /a HTTP/1.1\r\nHost: echo\r\nX\x00A: 1\r\n\r\n").want(reject(400)),
        case("f-value-nul", "a NUL in a field value",
            b"GET /a HTTP/1.1\r\nHost: echo\r\nX-A: a\x00b\r\n\r\n").want(reject(400))
            .haproxy(flagged("control byte").keep_open(), why::CTL),
        case("f-value-bare-cr", "a bare CR inside a value",
            "GET /a HTTP/1.1\r\nHost: echo\r\nX-A: a\rb\r\n\r\n").want(reject(400)),
        case("f-value-cr-end", "a CR before the CRLF",
            "GET /a HTTP/1.1\r\nHost: echo\r\nX-A: a\r\r\n\r\n").want(reject(400)),
        case("f-value-ctl", "a control byte in a value",
            b"GET /a HTTP/1.1\r\nHost: echo\r\nX-A: a\x01b\r\n\r\n").want(reject(400))
            .haproxy(flagged("control byte").keep_open(), why::CTL),
        case("f-value-vt", "a vertical tab in a value",
            b"GET /a HTTP/1.1\r\nHost: echo\r\nX-A: a\x0bb\r\n\r\n").want(reject(400))
            .haproxy(flagged("control byte").keep_open(), why::CTL),
        case("f-value-del", "DEL in a value",
            b"GET /a HTTP/1.1\r\nHost: echo\r\nX-A: a\x7fb\r\n\r\n").want(reject(400))
            .haproxy(flagged("control byte").keep_open(), why::CTL),
        case("f-value-htab", "HTAB inside a value is allowed",
            "GET /v HTTP/1.1\r\nHost: echo\r\nX-A: a\tb\r\n\r\n").want(forward([get("/v").has("x-a", "a\tb")])),
        case("f-value-obs-text", "obs-text (bytes ≥ 0x80) in a value passes",
            b"GET /v HTTP/1.1\r\nHost: echo\r\nX-A: caf\xe9\r\n\r\n")
            .want(forward([get("/v").has("x-a", "caf\u{fffd}")])),
        case("f-value-ows", "OWS around a value is not part of it",
            "GET /v HTTP/1.1\r\nHost: echo\r\nX-A: \t b \t\r\n\r\n").want(forward([get("/v").has("x-a", "b")])),
        case("f-value-empty", "an empty value",
            "GET /v HTTP/1.1\r\nHost: echo\r\nX-A:\r\n\r\n").want(forward([get("/v").has("x-a", "")])),
        case("f-obs-fold", "obs-fold: a line continuing the previous field",
            "GET /a HTTP/1.1\r\nHost: echo\r\nX-A: a\r\n b\r\n\r\n").want(reject(400))
            .haproxy(forward([get("/a").has("x-a", "a   b")]), why::OBS_FOLD),
        case("f-obs-fold-tab", "obs-fold with a tab",
            "GET /a HTTP/1.1\r\nHost: echo\r\nX-A: a\r\n\tb\r\n\r\n").want(reject(400))
            .haproxy(forward([get("/a").has("x-a", "a  \tb")]), why::OBS_FOLD),
        case("f-first-line-space", "whitespace before the first field line",
            "GET /a HTTP/1.1\r\n Host: echo\r\n\r\n").want(reject(400)),
        // --- Connection and hop-by-hop fields ---
        case("conn-cl", "Connection naming Content-Length (the smuggling of issue 15)",
            "POST /p HTTP/1.1\r\nHost: echo\r\nConnection: content-length\r\nContent-Length: 38\r\n\r\n\
             GET /SMUGGLED HTTP/1.1\r\nHost: echo\r\n\r\n").want(reject(400))
            .haproxy(flagged("Connection names").keep_open(), why::CONN_FRAMING),
        case("conn-te", "Connection naming Transfer-Encoding",
            "POST /p HTTP/1.1\r\nHost: echo\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n\
             0\r\n\r\nGET /SMUGGLED HTTP/1.1\r\nHost: x\r\n\r\n").want(reject(400))
            .haproxy(flagged("Connection names").keep_open().then_forward([get("/SMUGGLED").host(Some("x"))]), why::CONN_FRAMING),
        case("conn-host", "Connection naming Host",
            "GET /a HTTP/1.1\r\nHost: echo\r\nConnection: host\r\n\r\n").want(reject(400))
            .haproxy(flagged("Connection names").keep_open(), why::CONN_FRAMING),
        case("conn-list-cl", "Content-Length named in a list, in another case",
            "POST /p HTTP/1.1\r\nHost: echo\r\nConnection: keep-alive, Content-Length\r\nContent-Length: 5\r\n\r\nhello")
            .want(reject(400))
            .haproxy(flagged("Connection names").keep_open(), why::CONN_FRAMING),
        case("conn-second-field", "Content-Length named by a second Connection field",
            "POST /p HTTP/1.1\r\nHost: echo\r\nConnection: keep-alive\r\nConnection: content-length\r\n\
             Content-Length: 5\r\n\r\nhello").want(reject(400))
            .haproxy(flagged("Connection names").keep_open(), why::CONN_FRAMING),
        case("conn-named", "a field Connection names is dropped, the others pass",
            "GET /n HTTP/1.1\r\nHost: echo\r\nConnection: x-private\r\nX-Private: 1\r\nX-Public: 2\r\n\r\n")
            .want(forward([get("/n").lacks(&["x-private"]).has("x-public", "2")]))
            .haproxy(forward([get("/n").has("connection", "x-private").has("x-private", "1").has("x-public", "2").passes_hop_by_hop()]), why::HOP_BY_HOP),
        case("conn-close", "Connection: close is honoured after the response",
            "GET /c HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n")
            .want(forward([get("/c")]).closing()),
        case("conn-keep-alive", "Keep-Alive is hop-by-hop",
            "GET /k HTTP/1.1\r\nHost: echo\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n")
            .want(forward([get("/k")]))
            .haproxy(forward([get("/k").has("keep-alive", "timeout=5").passes_hop_by_hop()]), why::HOP_BY_HOP),
        case("conn-te-trailers", "TE: trailers with Connection: te is fine, and not forwarded",
            "GET /t HTTP/1.1\r\nHost: echo\r\nConnection: te\r\nTE: trailers\r\n\r\n")
            .want(forward([get("/t")]))
            .haproxy(forward([get("/t").has("te", "trailers").has("connection", "te").passes_hop_by_hop()]), why::HOP_BY_HOP),
        case("hop-by-hop", "every hop-by-hop field stays on this hop",
            "GET /h HTTP/1.1\r\nHost: echo\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n\
             Proxy-Authorization: Basic eDp5\r\nKeep-Alive: 5\r\nX-E2e: 1\r\n\r\n")
            .want(forward([get("/h").has("x-e2e", "1")]))
            .haproxy(forward([get("/h").has("proxy-connection", "keep-alive").has("te", "trailers").has("proxy-authorization", "Basic eDp5").has("keep-alive", "5").has("x-e2e", "1").passes_hop_by_hop()]), why::HOP_BY_HOP),
        // --- limits ---
        case("fields-100", "100 fields (client.max_headers) pass",
            fields(100)).want(forward([get("/f").has("x-f99", "99")])),
        case("fields-101", "101 fields are too many",
            fields(101)).want(reject(431))
            .haproxy(ha_reject(400), why::LIMITS),
        case("head-40k", "a 40 KiB field within the 64 KiB head",
            big_field(40 * 1024)).want(forward([get("/big")]))
            .haproxy(ha_reject(400), why::LIMITS),
        case("head-70k", "a 70 KiB field over client.max_head_size",
            big_field(70 * 1024)).want(reject(431))
            .haproxy(ha_reject(400), why::LIMITS),
    ]
}
