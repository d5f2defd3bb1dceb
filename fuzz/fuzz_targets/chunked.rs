//! The chunked decoder on any bytes, fed in pieces whose sizes the input chooses: decoding must
//! not depend on how the bytes were split, and what it decodes, chunked again the way waypost
//! writes it, must decode to the same data.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use waypost::forward::h1::chunked::{ChunkError, Decoded, Decoder};
use waypost::forward::h1::write::{chunk_size, last_chunk};

/// Decodes `raw` fed in pieces of `step` bytes: the data and the trailers, or the error.
fn decode(raw: &[u8], step: usize) -> Result<(Vec<u8>, Option<http::HeaderMap>), ChunkError> {
    let mut d = Decoder::new();
    let mut buf = BytesMut::new();
    let (mut fed, mut data) = (0, Vec::new());
    loop {
        match d.decode(&mut buf, 16 * 1024)? {
            Decoded::Data(b) => data.extend_from_slice(&b),
            Decoded::End(t) => return Ok((data, t)),
            Decoded::More if fed == raw.len() => return Err(ChunkError("end of input")),
            Decoded::More => {
                let n = step.min(raw.len() - fed);
                buf.extend_from_slice(&raw[fed..fed + n]);
                fed += n;
            }
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&step, raw)) = input.split_first() else {
        return;
    };
    let whole = decode(raw, raw.len().max(1));
    let pieces = decode(raw, usize::from(step).max(1));
    assert_eq!(whole.is_ok(), pieces.is_ok(), "splitting changed the verdict");
    let Ok((data, trailers)) = whole else {
        return;
    };
    assert_eq!(pieces.as_ref().map(|p| &p.0), Ok(&data), "splitting changed the data");
    let mut again = Vec::new();
    let mut size = [0u8; 18];
    for chunk in data.chunks(usize::from(step).max(1)) {
        again.extend_from_slice(chunk_size(&mut size, chunk.len()));
        again.extend_from_slice(chunk);
        again.extend_from_slice(b"\r\n");
    }
    last_chunk(&mut again, trailers.as_ref());
    let (round, _) = decode(&again, again.len()).expect("what waypost writes decodes");
    assert_eq!(round, data);
});
