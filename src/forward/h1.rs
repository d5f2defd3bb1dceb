//! The one HTTP/1 framing module (RFC 9112), used by the server side (app connections) and the
//! upstream client alike — as Pingora shares `v1/common.rs` between its two sides:
//!
//! - [`request`]: request heads from apps, parsed and checked against the HTTP/1 policy
//!   (README), and the head the upstream gets, encoded from the framing decision;
//! - [`response`]: response heads from upstreams, and the head the app gets;
//! - [`framing`]: the framing decision, one pure function per message, request and response
//!   rules (RFC 9112 §6.1–6.3);
//! - [`chunked`]: the strict chunked decoder, for request and response bodies, with the
//!   trailer section filtered by [`fields::trailer_allowed`];
//! - [`fields`]: what waypost knows of field names and values (hop-by-hop, tokens, `Host`);
//! - [`write`](mod@write): the line and field writers, and the chunk encoder's pieces.
//!
//! Nothing here does I/O: it all works on bytes, which is what makes it table-testable and
//! fuzzable (`fuzz/`).

pub mod chunked;
pub mod fields;
pub mod framing;
pub mod request;
pub mod response;
pub mod write;
