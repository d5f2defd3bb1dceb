//! Response heads: the parser and the response framing rules on any bytes (the first byte says
//! whether the request was a HEAD). The head written to the app must parse and carry exactly
//! the framing field the decision says.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use waypost::forward::h1::fields::tokens;
use waypost::forward::h1::framing::Framing;
use waypost::forward::h1::response::{encode, parse, Parsed, Reply};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let mut buf = BytesMut::from(rest);
    let head = loop {
        match parse(&mut buf, first & 1 == 1) {
            Ok(Parsed::Final(head)) => break head,
            Ok(Parsed::Interim(_)) => continue,
            Ok(Parsed::Partial) | Err(_) => return,
        }
    };
    for http10 in [false, true] {
        let mut out = Vec::new();
        let framing = encode(&mut out, &head, Reply { close: first & 2 == 2, http10 });
        let mut slots = [httparse::EMPTY_HEADER; 128];
        let mut resp = httparse::Response::new(&mut slots);
        let parsed = resp.parse(&out);
        assert!(
            matches!(parsed, Ok(httparse::Status::Complete(n)) if n == out.len()),
            "the app's head does not parse: {parsed:?}\n{}",
            String::from_utf8_lossy(&out)
        );
        let lengths: Vec<&[u8]> = resp
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| h.value)
            .collect();
        // Any Transfer-Encoding with a `chunked` element, in any case or list position.
        let chunked = resp.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("transfer-encoding")
                && tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"chunked"))
        });
        match framing {
            Framing::Length(n) => {
                assert_eq!(lengths, [n.to_string().as_bytes()]);
                assert!(!chunked);
            }
            Framing::Chunked => {
                assert!(lengths.is_empty() && chunked && !http10);
                let te = resp.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
                assert_eq!(te.count(), 1, "one Transfer-Encoding, waypost's");
            }
            Framing::Close => assert!(lengths.is_empty() && !chunked),
            Framing::Empty => {}
        }
    }
});
