//! Request heads: the parser and the framing decision on any bytes. Beyond not panicking, the
//! head waypost would send upstream must itself be a valid head that frames the same way: a
//! head that parsed once and meant something else the second time is a smuggling bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waypost::forward::h1::framing::Framing;
use waypost::forward::h1::request::{finish, parse, Limits, Parsed};

const LIMITS: Limits = Limits {
    max_head_size: 64 * 1024,
    max_headers: 100,
};

/// What the head sent upstream may need: one field more (the `Host` waypost adds to an HTTP/1.0
/// request without one) and a few bytes more (that `Host`, a framing field written from the
/// decision) than the app's head was allowed.
const SENT: Limits = Limits {
    max_head_size: 64 * 1024 + 512,
    max_headers: 101,
};

/// The framing as the upstream sees it: an empty body and a zero length are the same.
fn same(a: Framing, b: Framing) -> bool {
    let norm = |f| match f {
        Framing::Length(0) => Framing::Empty,
        f => f,
    };
    norm(a) == norm(b)
}

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let Ok(Parsed::Complete(req)) = parse(data, LIMITS, &mut out, b"") else {
        return;
    };
    assert!(req.len <= data.len());
    finish(&mut out, &req, "svc");
    let mut again = Vec::new();
    match parse(&out, SENT, &mut again, b"") {
        Ok(Parsed::Complete(sent)) => {
            assert_eq!(sent.len, out.len(), "the upstream head is one whole head");
            assert!(same(sent.framing, req.framing), "{:?} became {:?}", req.framing, sent.framing);
            assert!(sent.host.is_some(), "the upstream head names its host");
            assert_eq!(sent.method, req.method);
        }
        other => panic!("the upstream head does not parse: {other:?}\n{}", String::from_utf8_lossy(&out)),
    }
});
