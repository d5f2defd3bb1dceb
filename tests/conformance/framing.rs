//! Cases about framing — which bytes are the body: `Content-Length`, `Transfer-Encoding`, both
//! (the CL.TE / TE.CL / TE.TE smuggling families), chunked syntax, trailers, bodies cut short.
//! The policy is docs/http1-conformance.md; each case is one line of it.

use super::model::*;

/// Smuggled requests in bodies name the host `x`, never `echo` (the runner renames `echo`).
#[rustfmt::skip]
pub fn cases() -> Vec<Case> {
    vec![
        // --- Content-Length ---
        case("cl", "a body framed by Content-Length",
            "POST /cl HTTP/1.1\r\nHost: echo\r\nContent-Length: 5\r\n\r\nhello")
            .want(forward([post("/cl").len("hello")])),
        case("cl-zero-get", "Content-Length: 0 on a GET is kept",
            "GET /z HTTP/1.1\r\nHost: echo\r\nContent-Length: 0\r\n\r\n")
            .want(forward([get("/z").len("")])),
        case("post-no-body", "a POST without framing has no body: content-length: 0 upstream",
            "POST /e HTTP/1.1\r\nHost: echo\r\n\r\n")
            .want(forward([post("/e").len("")]))
            .haproxy(forward([post("/e")]), "HAProxy forwards a POST without framing as it came; waypost states the empty body as content-length: 0, which servers that require a length on POST (411) accept"),
        case("cl-ows", "OWS around the length is trimmed",
            "POST /o HTTP/1.1\r\nHost: echo\r\nContent-Length: \t 5 \t\r\n\r\nhello")
            .want(forward([post("/o").len("hello")])),
        case("cl-leading-zeros", "005 is 1*DIGIT: five bytes",
            "POST /lz HTTP/1.1\r\nHost: echo\r\nContent-Length: 005\r\n\r\nhello")
            .want(forward([post("/lz").len("hello")])),
        case("cl-dup-equal", "two equal Content-Length fields are one length, written once",
            "POST /d HTTP/1.1\r\nHost: echo\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello")
            .want(forward([post("/d").len("hello")])),
        case("cl-list-equal", "a list of equal lengths is one length, written once",
            "POST /l HTTP/1.1\r\nHost: echo\r\nContent-Length: 5, 5\r\n\r\nhello")
            .want(forward([post("/l").len("hello")])),
        case("cl-dup-differ", "two lengths that disagree (CL.CL)",
            "POST /x HTTP/1.1\r\nHost: echo\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")
            .want(reject(400)),
        case("cl-list-differ", "a list of lengths that disagree",
            "POST /x HTTP/1.1\r\nHost: echo\r\nContent-Length: 5, 6\r\n\r\nhello!")
            .want(reject(400)),
        case("cl-plus", "+5 is not 1*DIGIT",
            "POST /x HTTP/1.1\r\nHost: echo\r\nContent-Length: +5\r\n\r\nhello")
            .want(reject(400)),
        case("cl-minus", "a negative length",
            "POST /x HTTP/1.1\r\nHost: echo\r\nContent-Length: -1\r\n\r\n")
            .want(reject(400)),
        case("cl-hex", "0x5 is not decimal",
            "POST /x HTTP/1.1\r\nHost: echo\r\nContent-Length: 0x5\r\n\r\nhello")
            .want(reject(400)),
        case("cl-suffix", "digits followed by a letter",
            "POST /x HTTP/1.1\r\nHost: echo\r\nContent-Length: 5a\r\n\r\nhello")
            .want(reject(400)),
        case("cl-decimal", "a decimal point",
            "POST /x HTTP/1.1\r\nHost: echo\r\nContent-Length: 5.0\r\n\r\nhello")
            .want(reject(400)),
        case("cl-empty", "an empty length",
            "POST /x HTTP/1.1\r\nHost: echo\r\nContent-Length: \r\n\r\n")
            .want(reject(400)),
        case("cl-space-inside", "two numbers separated by a space",
            "POST /x HTTP/1.1\r\nHost: echo\r\nContent-Length: 1 2\r\n\r\nhello world!")
            .want(reject(400)),
        case("cl-overflow", "twenty digits overflow any length",
            "POST /x HTTP/1.1\r\nHost: echo\r\nContent-Length: 99999999999999999999\r\n\r\n")
            .want(reject(400)),
        case("cl-pipeline", "the body is exactly Content-Length bytes; what follows is the next request",
            "POST /p HTTP/1.1\r\nHost: echo\r\nContent-Length: 5\r\n\r\nhelloGET /q HTTP/1.1\r\nHost: echo\r\n\r\n")
            .want(forward([post("/p").len("hello"), get("/q")])),
        pieces("cl-pieces", "a body arriving in pieces after its head is streamed", vec![
            bytes("POST /s HTTP/1.1\r\nHost: echo\r\nContent-Length: 10\r\n\r\n"),
            bytes("hello"), bytes("world")])
            .want(forward([post("/s").len("helloworld")])),
        pieces("cl-eof-mid-body", "the app closes before Content-Length bytes: both connections close", vec![
            bytes("POST /eof HTTP/1.1\r\nHost: echo\r\nContent-Length: 10\r\n\r\nhello"), Piece::Shutdown])
            .want(closed().cut()),
        // --- Content-Length and Transfer-Encoding together ---
        case("cl-te", "Content-Length then Transfer-Encoding (CL.TE)",
            "POST /x HTTP/1.1\r\nHost: echo\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX")
            .want(reject(400))
            .haproxy(forward([post("/x").chunked("")]).closing(), why::CL_TE),
        case("te-cl", "Transfer-Encoding then Content-Length (TE.CL)",
            "POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n")
            .want(reject(400))
            .haproxy(forward([post("/x").chunked("")]).closing(), why::CL_TE),
        case("cl-te-smuggle", "CL.TE hiding a request after the last chunk",
            "POST /x HTTP/1.1\r\nHost: echo\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n\
             0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
            .want(reject(400))
            .haproxy(forward([post("/x").chunked("")]).closing(), why::CL_TE),
        case("te-cl-smuggle", "TE.CL hiding a request inside a chunk",
            "POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n\
             23\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n")
            .want(reject(400))
            .haproxy(forward([post("/x").chunked("GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")]).closing(), why::CL_TE),
        case("cl-zero-te", "Content-Length: 0 beside chunked",
            "POST /x HTTP/1.1\r\nHost: echo\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
            .want(reject(400))
            .haproxy(forward([post("/x").chunked("hello")]).closing(), why::CL_TE),
        case("cl-te-get", "both on a GET",
            "GET /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n")
            .want(reject(400))
            .haproxy(forward([get("/x").chunked("")]).closing(), why::CL_TE),
        case("cl-te-unknown", "both present, whatever the coding says",
            "POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\nhello")
            .want(reject(400)),
        // --- Transfer-Encoding ---
        case("te", "a chunked body is decoded and re-chunked",
            "POST /c HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
            .want(forward([post("/c").chunked("hello")])),
        case("te-upper", "codings are case-insensitive",
            "POST /c HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: CHUNKED\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
            .want(forward([post("/c").chunked("hello")])),
        case("te-htab", "HTAB is OWS",
            "POST /c HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding:\tchunked\t\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
            .want(forward([post("/c").chunked("hello")])),
        case("te-chunked-chunked", "chunked applied twice (TE.TE)",
            "POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
            .want(reject(400)),
        case("te-two-fields", "two chunked fields",
            "POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            .want(reject(400)),
        case("te-gzip-chunked", "a coding before chunked that waypost does not decode",
            "POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n")
            .want(reject(501))
            .haproxy(ha_reject(422), "HAProxy answers 422 to any coding but chunked (haproxy#1301); RFC 9112 §6.1 asks for 501 for a coding the server does not understand, which waypost sends"),
        case("te-chunked-gzip", "final coding not chunked: the length is unknowable",
            "POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n")
            .want(reject(400)),
        case("te-gzip", "only a coding that is not chunked",
            "POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: gzip\r\n\r\nhello")
            .want(reject(400)),
        case("te-identity", "identity is no transfer coding (RFC 9112 removed it)",
            "POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: identity\r\n\r\nhello")
            .want(reject(400)),
        case("te-empty", "an empty Transfer-Encoding",
            "POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: \r\n\r\nhello")
            .want(reject(400)),
        case("te-xchunked", "a name that merely contains chunked",
            "POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n")
            .want(reject(400)),
        case("te-param", "chunked with a parameter",
            "POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n")
            .want(reject(400)),
        case("te-quoted", "a quoted coding",
            "POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: \"chunked\"\r\n\r\n0\r\n\r\n")
            .want(reject(400)),
        case("te-space-colon", "a space before the colon makes an invalid field name",
            "POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n")
            .want(reject(400)),
        case("te-vt", "a vertical tab before the coding",
            b"POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n")
            .want(reject(400)),
        case("te-nul", "a NUL after the coding",
            b"POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\x00\r\n\r\n0\r\n\r\n")
            .want(reject(400)),
        case("te-obs-fold", "the coding on a folded line",
            "POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n")
            .want(reject(400))
            .haproxy(forward([post("/x").chunked("")]), why::OBS_FOLD),
        case("te-underscore", "Transfer_Encoding is another field; Content-Length frames",
            "POST /u HTTP/1.1\r\nHost: echo\r\nTransfer_Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello")
            .want(forward([post("/u").len("hello").has("transfer_encoding", "chunked")])),
        case("te-http10", "Transfer-Encoding in an HTTP/1.0 request",
            "POST /x HTTP/1.0\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
            .want(reject(400))
            .haproxy(flagged("Transfer-Encoding in an HTTP/1.0"), "HAProxy forwards chunked HTTP/1.0 as it came; RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message MUST be treated as faulty framing, so waypost rejects it"),
        case("te-request-in-chunk", "a request inside chunk data is data",
            "POST /d HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n\
             23\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n")
            .want(forward([post("/d").chunked("GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")])),
        case("te-pipeline", "a chunked body, then the next request",
            "POST /a HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
             GET /b HTTP/1.1\r\nHost: echo\r\n\r\n")
            .want(forward([post("/a").chunked("hello"), get("/b")])),
        // --- chunk syntax ---
        case("chunk-ext", "chunk extensions are dropped when re-chunking",
            "POST /e HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n0;last\r\n\r\n")
            .want(forward([post("/e").chunked("hello")])),
        case("chunk-ext-quoted", "a quoted extension value",
            "POST /e HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n5 ; a=\"b;c\"\r\nhello\r\n0\r\n\r\n")
            .want(forward([post("/e").chunked("hello")])),
        case("chunk-upper-hex", "upper-case hex digits",
            "POST /h HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n")
            .want(forward([post("/h").chunked("0123456789")])),
        case("chunk-leading-zeros", "leading zeros in a chunk size",
            "POST /h HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n0005\r\nhello\r\n0000\r\n\r\n")
            .want(forward([post("/h").chunked("hello")])),
        case("chunk-many", "many one-byte chunks",
            "POST /m HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n\
             1\r\na\r\n1\r\nb\r\n1\r\nc\r\n1\r\nd\r\n1\r\ne\r\n1\r\nf\r\n1\r\ng\r\n1\r\nh\r\n0\r\n\r\n")
            .want(forward([post("/m").chunked("abcdefgh")])),
        pieces("chunk-pieces", "a chunked body split inside size lines and data", vec![
            bytes("POST /p HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n1"),
            bytes("0\r\n0123456"), bytes("789abcdef\r"), bytes("\n0\r"), bytes("\n\r\n")])
            .want(forward([post("/p").chunked("0123456789abcdef")])),
        case("chunk-ext-ctl", "a control byte in a chunk extension",
            b"POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\x01\r\nhello\r\n0\r\n\r\n")
            .want(reject(400).cut())
            .haproxy(forward([post("/x").chunked("hello")]), why::CHUNKS),
        case("chunk-ext-bare-lf", "a chunk size line ending in a bare LF after an extension",
            "POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\nhello\r\n0\r\n\r\n")
            .want(reject(400).cut())
            .haproxy(forward([post("/x").chunked("hello")]), why::CHUNKS),
        case("chunk-size-bare-lf", "a chunk size line ending in a bare LF",
            "POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n")
            .want(reject(400).cut())
            .haproxy(forward([post("/x").chunked("hello")]), why::CHUNKS),
        case("chunk-size-bad-hex", "a chunk size that is not hex",
            "POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\ng\r\nhello\r\n0\r\n\r\n")
            .want(reject(400).cut()),
        case("chunk-size-minus", "a negative chunk size",
            "POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n")
            .want(reject(400).cut()),
        case("chunk-size-0x", "a 0x prefix",
            "POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n")
            .want(reject(400).cut()),
        case("chunk-size-overflow", "seventeen hex digits overflow",
            "POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\nhello\r\n0\r\n\r\n")
            .want(reject(400).cut()),
        case("chunk-size-trailing-space", "whitespace after a size is allowed only before `;`",
            "POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n")
            .want(reject(400).cut())
            .haproxy(forward([post("/x").chunked("hello")]), why::CHUNKS),
        case("chunk-size-leading-space", "whitespace before a size",
            "POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n")
            .want(reject(400).cut()),
        case("chunk-size-empty", "an empty chunk size line",
            "POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n")
            .want(reject(400).cut()),
        case("chunk-data-long", "more data than the size declared",
            "POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n")
            .want(reject(400).cut()),
        case("chunk-data-no-crlf", "no CRLF after the data",
            "POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello0\r\n\r\n")
            .want(reject(400).cut()),
        case("chunk-data-lf", "a bare LF after the data",
            "POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n")
            .want(reject(400).cut())
            .haproxy(forward([post("/x").chunked("hello")]), why::CHUNKS),
        pieces("chunk-eof", "the app closes in the middle of a chunk", vec![
            bytes("POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"), Piece::Shutdown])
            .want(reject(400).cut())
            .haproxy(closed().cut(), "HAProxy closes both sides without an answer when the body stops mid-chunk; waypost answers 400 first, as for any malformed body, so the app learns why"),
        // --- trailers ---
        case("trailer", "an end-to-end trailer field is forwarded",
            "POST /t HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n")
            .want(forward([post("/t").chunked("hello").trailer("x-checksum", "abc")])),
        case("trailer-declared", "Trailer announces it, end to end",
            "POST /t HTTP/1.1\r\nHost: echo\r\nTrailer: X-Checksum\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n")
            .want(forward([post("/t").chunked("hello").has("trailer", "X-Checksum").trailer("x-checksum", "abc")])),
        case("trailer-framing", "framing fields are never forwarded as trailers",
            "POST /t HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\
             Content-Length: 5\r\nTransfer-Encoding: chunked\r\nX-Ok: 1\r\n\r\n")
            .want(forward([post("/t").chunked("hello").trailer("x-ok", "1")]))
            .haproxy(forward([post("/t").chunked("hello").trailer("transfer-encoding", "chunked").trailer("x-ok", "1")]), why::TRAILERS),
        case("trailer-routing", "Host is never forwarded as a trailer",
            "POST /t HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nHost: x\r\nX-Ok: 1\r\n\r\n")
            .want(forward([post("/t").chunked("hello").trailer("x-ok", "1")]))
            .haproxy(forward([post("/t").chunked("hello").trailer("host", "x").trailer("x-ok", "1")]), why::TRAILERS),
        case("trailer-auth", "authentication and cookies are never forwarded as trailers",
            "POST /t HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\
             Authorization: Basic eDp5\r\nCookie: a=b\r\nX-Ok: 1\r\n\r\n")
            .want(forward([post("/t").chunked("hello").trailer("x-ok", "1")]))
            .haproxy(forward([post("/t").chunked("hello").trailer("authorization", "Basic eDp5").trailer("cookie", "a=b").trailer("x-ok", "1")]), why::TRAILERS),
        case("trailer-control", "hop-by-hop, controls and content fields are never forwarded as trailers",
            "POST /t HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\
             Connection: close\r\nCache-Control: no-cache\r\nContent-Type: text/plain\r\nX-Ok: 1\r\n\r\n")
            .want(forward([post("/t").chunked("hello").trailer("x-ok", "1")]))
            .haproxy(forward([post("/t").chunked("hello").trailer("connection", "close").trailer("cache-control", "no-cache").trailer("content-type", "text/plain").trailer("x-ok", "1")]), why::TRAILERS),
        pieces("trailer-bad-name", "a trailer line whose name is not a token, after the data went up", vec![
            bytes("POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"),
            bytes("0\r\nBad Name: x\r\n\r\n")])
            .want(reject(400).cut())
            .haproxy_sometimes(flagged("not a token").keep_open(), "HAProxy answers 400 on some runs and forwards the invalid trailer on others; waypost always answers 400"),
        case("trailer-obs-fold", "a folded trailer line",
            "POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-A: 1\r\n 2\r\n\r\n")
            .want(reject(400).cut())
            .haproxy(forward([post("/x").chunked("hello").trailer("x-a", "1   2")]), why::OBS_FOLD),
        case("trailer-nul", "a NUL in a trailer value",
            b"POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-A: a\x00b\r\n\r\n")
            .want(reject(400).cut())
            .haproxy(flagged("control byte").keep_open(), why::CTL),
    ]
}
