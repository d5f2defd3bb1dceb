//! The chunked decoder on valid bodies fed in every split, and on every malformed shape the
//! policy lists.

use super::*;

/// What decoding a whole body gave: the data, the trailers, the bytes left over.
type Whole = (Vec<u8>, Option<HeaderMap>, Vec<u8>);

/// Decodes `raw` fed `step` bytes at a time.
fn decode_all(raw: &[u8], step: usize) -> Result<Whole, ChunkError> {
    let mut d = Decoder::new();
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut data = Vec::new();
    loop {
        match d.decode(&mut buf, 8192)? {
            Decoded::Data(b) => data.extend_from_slice(&b),
            Decoded::End(t) => return Ok((data, t, buf.to_vec())),
            Decoded::More => {
                assert!(fed < raw.len(), "ran out of input: {raw:?}");
                let n = step.min(raw.len() - fed);
                buf.extend_from_slice(&raw[fed..fed + n]);
                fed += n;
            }
        }
    }
}

#[test]
fn valid_bodies_in_every_split() {
    let cases: &[(&[u8], &[u8])] = &[
        (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
        (b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world"),
        (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
        (b"0000a\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
        (b"5;name=value\r\nhello\r\n0;last\r\n\r\n", b"hello"),
        (b"5 ;a ; b = \"q \\\" s\"\r\nhello\r\n0\r\n\r\n", b"hello"),
        (b"5\t;a=b\r\nhello\r\n0\r\n\r\n", b"hello"),
        (b"0\r\n\r\n", b""),
    ];
    for (raw, want) in cases {
        for step in [1, 2, 3, 7, raw.len()] {
            let (data, trailers, rest) =
                decode_all(raw, step).unwrap_or_else(|e| panic!("{raw:?}/{step}: {e}"));
            assert_eq!(data, *want, "{raw:?} in pieces of {step}");
            assert!(trailers.is_none() && rest.is_empty());
        }
    }
}

#[test]
fn trailers_are_filtered_and_what_follows_is_left() {
    let raw =
        b"3\r\nabc\r\n0\r\nX-Sum: 42\r\nContent-Length: 5\r\nHost: x\r\nSet-Cookie: a\r\n\r\nNEXT";
    let (data, trailers, rest) = decode_all(raw, raw.len()).unwrap();
    assert_eq!(data, b"abc");
    let trailers = trailers.expect("x-sum is allowed");
    assert_eq!(trailers.len(), 1, "{trailers:?}");
    assert_eq!(trailers["x-sum"], "42");
    assert_eq!(
        rest, b"NEXT",
        "bytes after the body belong to the next message"
    );
    // Only forbidden fields: no trailers at all.
    let (_, trailers, _) = decode_all(b"0\r\nContent-Type: x\r\n\r\n", 3).unwrap();
    assert!(trailers.is_none());
}

#[test]
fn malformed_bodies_and_the_rule_they_break() {
    let cases: &[(&[u8], &str)] = &[
        (b"g\r\nhello\r\n0\r\n\r\n", "bad chunk size"),
        (b"\r\nhello\r\n", "bad chunk size"),
        (b"-5\r\nhello\r\n", "bad chunk size"),
        (b"0x5\r\nhello\r\n", "bad chunk size"),
        (b"5 \r\nhello\r\n", "bad chunk size"),
        (
            b"0000000000000005\r\nhello\r\n",
            "chunk size longer than 15 hex digits",
        ),
        (
            b"5\nhello\r\n0\r\n\r\n",
            "chunk-size line not ended by CRLF",
        ),
        (b"5\r\r\nhello\r\n", "bad chunk size"),
        (
            b"5\r\nhelloX\r\n0\r\n\r\n",
            "chunk data not followed by CRLF",
        ),
        (b"5\r\nhello\n0\r\n\r\n", "chunk data not followed by CRLF"),
        (b"5\r\nhello0\r\n\r\n", "chunk data not followed by CRLF"),
        (b"5;\r\nhello\r\n", "malformed chunk extension"),
        (b"5;a=\r\nhello\r\n", "malformed chunk extension"),
        (b"5;a\x01\r\nhello\r\n", "malformed chunk extension"),
        (b"5;a=\"b\x01\"\r\nhello\r\n", "malformed chunk extension"),
        (b"5;a=\"open\r\nhello\r\n", "malformed chunk extension"),
        (b"5;a b\r\nhello\r\n", "malformed chunk extension"),
        (b"0\r\nbad trailer\r\n\r\n", "malformed trailer section"),
        (b"0\r\nX: a\0\r\n\r\n", "malformed trailer section"),
    ];
    for (raw, rule) in cases {
        for step in [1, raw.len()] {
            match decode_all(raw, step) {
                Err(ChunkError(got)) => assert_eq!(got, *rule, "{raw:?} in pieces of {step}"),
                Ok(ok) => panic!("{raw:?} in pieces of {step} decoded as {ok:?}"),
            }
        }
    }
}

#[test]
fn long_lines_and_trailer_sections_are_bounded() {
    let mut buf = BytesMut::from(&[b'0'; MAX_CHUNK_LINE][..]);
    assert!(
        Decoder::new().decode(&mut buf, 8192).is_err(),
        "a size line without end"
    );
    let mut d = Decoder::new();
    let mut buf = BytesMut::from(&b"0\r\n"[..]);
    buf.extend_from_slice(format!("x: {}", "a".repeat(100)).as_bytes());
    assert_eq!(
        d.decode(&mut buf, 64),
        Err(ChunkError("trailer section too large"))
    );
    assert!(!d.is_done());
    let mut d = Decoder::new();
    let mut buf = BytesMut::from(&b"0\r\n\r\n"[..]);
    assert_eq!(d.decode(&mut buf, 64), Ok(Decoded::End(None)));
    assert!(d.is_done());
}
