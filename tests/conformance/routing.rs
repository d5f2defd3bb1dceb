//! Cases about what a request is for and how it travels: ordinary requests (the baseline),
//! request-target forms (absolute-form, authority-form, asterisk-form), `Host` tricks,
//! `CONNECT`, HTTP/1.0, `Expect`, `Upgrade`, pipelining and what happens after an error.

use super::model::*;

#[rustfmt::skip]
pub fn cases() -> Vec<Case> {
    vec![
        // --- the baseline ---
        case("get", "an ordinary GET",
            "GET /a HTTP/1.1\r\nHost: echo\r\n\r\n").want(forward([get("/a")])),
        case("get-fields", "end-to-end fields pass with their values",
            "GET /f HTTP/1.1\r\nHost: echo\r\nUser-Agent: t/1\r\nAccept: */*\r\nX-A: 1\r\nX-A: 2\r\n\r\n")
            .want(forward([get("/f").has("user-agent", "t/1").has("accept", "*/*")])),
        case("head", "HEAD: the answer has no body",
            "HEAD /h HTTP/1.1\r\nHost: echo\r\n\r\n").want(forward([up("HEAD", "/h")])),
        case("options-star", "asterisk-form with OPTIONS",
            "OPTIONS * HTTP/1.1\r\nHost: echo\r\n\r\n").want(forward([up("OPTIONS", "*")])),
        case("asterisk-get", "asterisk-form with another method",
            "GET * HTTP/1.1\r\nHost: echo\r\n\r\n").want(reject(400))
            .haproxy(flagged("asterisk-form").keep_open(), "HAProxy forwards * with any method; RFC 9112 §3.2.4 defines asterisk-form for OPTIONS only"),
        case("pipeline-3", "three pipelined requests, answered in order",
            "GET /1 HTTP/1.1\r\nHost: echo\r\n\r\nGET /2 HTTP/1.1\r\nHost: echo\r\n\r\nGET /3 HTTP/1.1\r\nHost: echo\r\n\r\n")
            .want(forward([get("/1"), get("/2"), get("/3")])),
        pieces("head-pieces", "a head arriving in pieces", vec![
            bytes("GE"), bytes("T /p HTTP/1.1\r"), bytes("\nHost: "), bytes("echo\r\n"), bytes("\r\n")])
            .want(forward([get("/p")])),
        pieces("half-close", "the app half-closes after its request: answered, then closed", vec![
            bytes("GET /hc HTTP/1.1\r\nHost: echo\r\n\r\n"), Piece::Shutdown])
            .want(forward([get("/hc")]).closing()),
        // --- after an error ---
        case("pipe-bad-then-good", "nothing after a bad request is read",
            "GET /a HTTP/1.1\r\nHost: echo\r\nContent-Length: -1\r\n\r\nGET /b HTTP/1.1\r\nHost: echo\r\n\r\n")
            .want(reject(400)),
        case("pipe-good-then-bad", "a good request is answered before the bad one after it",
            "GET /a HTTP/1.1\r\nHost: echo\r\n\r\nGET /b HTTP/1.1\r\nHost: echo\r\nX-A : 1\r\n\r\n")
            .want(forward([get("/a")]).then_reject(400)),
        case("pipe-good-then-smuggle", "a good request, then CL.TE on the same connection",
            "GET /a HTTP/1.1\r\nHost: echo\r\n\r\nPOST /b HTTP/1.1\r\nHost: echo\r\nContent-Length: 40\r\n\
             Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
            .want(forward([get("/a")]).then_reject(400))
            .haproxy(forward([get("/a"), post("/b").chunked("")]).closing(), why::CL_TE),
        case("unknown-then-good", "a routing 404 keeps the connection: the next request is served",
            "GET /a HTTP/1.1\r\nHost: nope\r\n\r\nGET /b HTTP/1.1\r\nHost: echo\r\n\r\n")
            .want(forward([]).then_error(404).then_forward([get("/b")]))
            .haproxy(forward([get("/a").host(Some("nope")), get("/b")]), "HAProxy routes by listener here (one backend per frontend), so no Host is unknown to it; not a parsing difference"),
        // --- absolute-form ---
        case("abs", "absolute-form goes upstream in origin-form, Host from the authority",
            "GET http://echo/a?b=1 HTTP/1.1\r\nHost: echo\r\n\r\n").want(forward([get("/a?b=1")]))
            .haproxy(forward([get("http://echo/a?b=1")]), why::ABS),
        case("abs-empty-path", "an empty path becomes / (query kept)",
            "GET http://echo?x=1 HTTP/1.1\r\nHost: echo\r\n\r\n").want(forward([get("/?x=1")]))
            .haproxy(ha_reject(400), "HAProxy refuses an authority followed directly by a query; RFC 3986 allows the empty path, which waypost sends as / (RFC 9112 §3.2.1)"),
        case("abs-no-path", "no path at all becomes /",
            "GET http://echo HTTP/1.1\r\nHost: echo\r\n\r\n").want(forward([get("/")]))
            .haproxy(forward([get("http://echo")]), why::ABS),
        case("abs-host-differs", "the authority wins over a different Host and replaces it",
            "GET http://echo/a HTTP/1.1\r\nHost: other\r\n\r\n").want(forward([get("/a")]))
            .haproxy(ha_reject(400), why::ABS_HOST),
        case("abs-port", "the authority's port is kept in Host",
            "GET http://echo:8080/a HTTP/1.1\r\nHost: echo\r\n\r\n").want(forward([get("/a").host(Some("echo:8080"))]))
            .haproxy(ha_reject(400), why::ABS_HOST),
        case("abs-upper", "the authority as written",
            "GET http://ECHO/a HTTP/1.1\r\nHost: echo\r\n\r\n").want(forward([get("/a").host(Some("ECHO"))]))
            .haproxy(forward([get("http://ECHO/a")]), why::ABS),
        case("abs-userinfo", "userinfo in the authority",
            "GET http://u:p@echo/a HTTP/1.1\r\nHost: echo\r\n\r\n").want(reject(400))
            .haproxy(forward([get("http://u:p@echo/a")]), why::USERINFO),
        case("abs-user", "a user name in the authority",
            "GET http://u@echo/a HTTP/1.1\r\nHost: echo\r\n\r\n").want(reject(400))
            .haproxy(forward([get("http://u@echo/a")]), why::USERINFO),
        case("abs-https", "https:// would need TLS waypost does not originate",
            "GET https://echo/a HTTP/1.1\r\nHost: echo\r\n\r\n").want(reject(400))
            .haproxy(forward([get("https://echo/a")]), why::SCHEME),
        case("abs-ftp", "another scheme",
            "GET ftp://echo/a HTTP/1.1\r\nHost: echo\r\n\r\n").want(reject(400))
            .haproxy(forward([get("ftp://echo/a")]), why::SCHEME),
        case("abs-no-host", "HTTP/1.1 needs Host even in absolute-form",
            "GET http://echo/a HTTP/1.1\r\n\r\n").want(reject(400))
            .haproxy(flagged("no Host").keep_open(), why::NO_HOST),
        case("abs-fragment", "a fragment in absolute-form",
            "GET http://echo/a#f HTTP/1.1\r\nHost: echo\r\n\r\n").want(reject(400)),
        case("authority-form", "authority-form is for CONNECT only",
            "GET echo:80 HTTP/1.1\r\nHost: echo\r\n\r\n").want(reject(400)),
        case("connect", "CONNECT: waypost is never an open proxy",
            "CONNECT echo:80 HTTP/1.1\r\nHost: echo:80\r\n\r\n").want(reject(405))
            .haproxy(flagged("authority-form").keep_open(), "HAProxy in mode http hands CONNECT to the server; waypost never tunnels and answers 405"),
        // --- Host ---
        case("host-missing", "HTTP/1.1 without Host",
            "GET /a HTTP/1.1\r\n\r\n").want(reject(400))
            .haproxy(flagged("no Host").keep_open(), why::NO_HOST),
        case("host-two-equal", "two Host fields, even equal",
            "GET /a HTTP/1.1\r\nHost: echo\r\nHost: echo\r\n\r\n").want(reject(400))
            .haproxy(forward([get("/a")]), "HAProxy merges identical Host fields into one; RFC 9112 §3.2: a server MUST answer 400 to more than one Host field line"),
        case("host-two-differ", "two different Host fields",
            "GET /a HTTP/1.1\r\nHost: echo\r\nHost: other\r\n\r\n").want(reject(400)),
        case("host-empty", "an empty Host",
            "GET /a HTTP/1.1\r\nHost: \r\n\r\n").want(reject(400))
            .haproxy(flagged("invalid Host").keep_open(), why::BAD_HOST),
        case("host-list", "a list in Host",
            "GET /a HTTP/1.1\r\nHost: echo, echo\r\n\r\n").want(reject(400))
            .haproxy(flagged("invalid Host").keep_open(), why::BAD_HOST),
        case("host-userinfo", "userinfo in Host",
            "GET /a HTTP/1.1\r\nHost: u@echo\r\n\r\n").want(reject(400))
            .haproxy(flagged("invalid Host").keep_open(), why::BAD_HOST),
        case("host-bad-port", "a port that is not digits",
            "GET /a HTTP/1.1\r\nHost: echo:8a\r\n\r\n").want(reject(400))
            .haproxy(flagged("invalid Host").keep_open(), why::BAD_HOST),
        case("host-space", "a space inside Host",
            "GET /a HTTP/1.1\r\nHost: ec ho\r\n\r\n").want(reject(400))
            .haproxy(flagged("invalid Host").keep_open(), why::BAD_HOST),
        case("host-port", "Host with a port passes as is",
            "GET /a HTTP/1.1\r\nHost: echo:80\r\n\r\n").want(forward([get("/a").host(Some("echo:80"))])),
        case("host-upper", "Host names the service in any case, and passes as is",
            "GET /a HTTP/1.1\r\nHost: ECHO\r\n\r\n").want(forward([get("/a").host(Some("ECHO"))])),
        // --- HTTP/1.0 ---
        case("h10", "HTTP/1.0 without keep-alive: answered, then closed",
            "GET /a HTTP/1.0\r\nHost: echo\r\n\r\n").want(forward([get("/a").any_version()]).closing()),
        case("h10-keep-alive", "HTTP/1.0 keep-alive serves a second request",
            "GET /a HTTP/1.0\r\nHost: echo\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\nHost: echo\r\nConnection: keep-alive\r\n\r\n")
            .want(forward([get("/a").any_version(), get("/b").any_version()])),
        case("h10-post", "an HTTP/1.0 body framed by Content-Length",
            "POST /p HTTP/1.0\r\nHost: echo\r\nContent-Length: 5\r\n\r\nhello")
            .want(forward([post("/p").len("hello").any_version()]).closing()),
        case("h10-abs-no-host", "HTTP/1.0 absolute-form without Host: the authority becomes Host",
            "GET http://echo/a HTTP/1.0\r\n\r\n").want(forward([get("/a").any_version()]).closing())
            .haproxy(forward([get("http://echo/a").any_version().host(None)]).closing(), why::ABS),
        case("h10-no-host", "HTTP/1.0 without Host on the outbound listener names no service",
            "GET /a HTTP/1.0\r\n\r\n").want(reject(400))
            .haproxy(forward([get("/a").any_version().host(None)]).closing(), "HAProxy forwards HTTP/1.0 without Host to its one backend; on waypost's outbound listener such a request names no service"),
        case("h10-no-host-service", "HTTP/1.0 without Host on a service port: the service name is Host",
            "GET /a HTTP/1.0\r\n\r\n").via_service().want(forward([get("/a").any_version()]).closing())
            .haproxy(forward([get("/a").any_version().host(None)]).closing(), "HAProxy forwards HTTP/1.0 without Host as it came; waypost names the service in Host, which HTTP/1.1 upstream requires"),
        case("h10-expect", "Expect is ignored in HTTP/1.0 (RFC 9110 §10.1.1) and dropped",
            "POST /e HTTP/1.0\r\nHost: echo\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello")
            .want(forward([post("/e").len("hello").any_version().lacks(&["expect"])]).closing())
            .haproxy(forward([post("/e").len("hello").any_version().has("expect", "100-continue")]).closing(), "HAProxy forwards Expect in HTTP/1.0; RFC 9110 §10.1.1: a server MUST ignore 100-continue in HTTP/1.0, so waypost drops it"),
        // --- Expect ---
        pieces("expect-100", "Expect: 100-continue: the upstream's 100 reaches the app, then the body goes up", vec![
            bytes("POST /e HTTP/1.1\r\nHost: echo\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"),
            Piece::Await100, bytes("hello")])
            .want(forward([post("/e").len("hello").has("expect", "100-continue").interim(Interim::Continue)])),
        pieces("expect-100-case", "the expectation is case-insensitive", vec![
            bytes("POST /e HTTP/1.1\r\nHost: echo\r\nExpect: 100-Continue\r\nContent-Length: 5\r\n\r\n"),
            Piece::Await100, bytes("hello")])
            .want(forward([post("/e").len("hello").has("expect", "100-Continue").interim(Interim::Continue)])),
        case("expect-100-eager", "a body sent without waiting for 100",
            "POST /e HTTP/1.1\r\nHost: echo\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello")
            .want(forward([post("/e").len("hello").has("expect", "100-continue").interim(Interim::Any)])),
        case("expect-other", "an expectation nobody can meet",
            "GET /a HTTP/1.1\r\nHost: echo\r\nExpect: something\r\n\r\n").want(reject(417))
            .haproxy(forward([get("/a").has("expect", "something")]), "HAProxy forwards an expectation it cannot meet; waypost answers 417, as RFC 9110 §10.1.1 allows, instead of leaving the client waiting on it"),
        // --- Upgrade ---
        case("upgrade-websocket", "a WebSocket upgrade goes up with its Upgrade (tunnelled on a 101)",
            "GET /ws HTTP/1.1\r\nHost: echo\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            .want(forward([get("/ws").has("sec-websocket-version", "13").upgrades("websocket")]))
            .haproxy(forward([get("/ws").has("upgrade", "websocket").has("connection", "Upgrade").passes_hop_by_hop()]), why::UPGRADE),
        case("upgrade-h2c", "h2c upgrade: never forwarded; HTTP2-Settings is named by Connection, so dropped too",
            "GET /u HTTP/1.1\r\nHost: echo\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
             HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n")
            .want(forward([get("/u").lacks(&["http2-settings"])]))
            .haproxy(forward([get("/u").has("upgrade", "h2c").has("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA").passes_hop_by_hop()]), why::UPGRADE_H2C),
    ]
}
