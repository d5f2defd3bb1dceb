//! The `client:` part of the schema: how waypost treats the apps that connect to its forwarding
//! listeners — the connection timeouts and head limits of HTTP/1 (the policy in README,
//! "HTTP/1 policy") and the inbound HTTP/2 limits handed to hyper's h2 server. Sizes are written
//! in bytes (`65536`) or with a binary unit (`64KiB`, `1MiB`).

use std::fmt;

use serde::de::Deserializer;
use serde::Deserialize;

use super::types::ParseVisitor;
use super::Dur;

/// The most `client.max_headers` may be: the HTTP/1 head parser keeps one slot per field on
/// the stack (32 bytes each), so this bounds that frame to 32 KiB.
pub const MAX_HEADERS_LIMIT: usize = 1024;
/// The smallest `client.max_head_size` (and `client.http2.max_header_list_size`): a request
/// line, a `Host` and a few fields must fit.
pub const MIN_HEAD_SIZE: usize = 1024;
/// The largest `client.max_head_size`: a head is held whole in the connection's read buffer,
/// so this bounds the memory one connection can make waypost hold for a head.
pub const MAX_HEAD_SIZE: usize = 1024 * 1024;

/// `client:` — app connections on every forwarding listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// From accept (or the first byte of a later request) until the request head is complete;
    /// a connection that sent nothing closes silently, a partial head gets a 408 (default 10s).
    pub header_timeout: Dur,
    /// How long a kept-alive connection may wait for its next request (default 60s).
    pub idle_timeout: Dur,
    /// The longest wait for the next bytes of a request body (default 30s).
    pub body_timeout: Dur,
    /// The largest request head (request line and fields) accepted; larger is a 431
    /// (default 64 KiB).
    pub max_head_size: Size,
    /// The most fields a request head may carry; more is a 431 (default 100).
    pub max_headers: usize,
    /// Limits of the inbound HTTP/2 (h2c) server.
    pub http2: Http2Config,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            header_timeout: Dur::from_secs(10),
            idle_timeout: Dur::from_secs(60),
            body_timeout: Dur::from_secs(30),
            max_head_size: Size(64 * 1024),
            max_headers: 100,
            http2: Http2Config::default(),
        }
    }
}

/// `client.http2:` — what one inbound HTTP/2 connection may ask of waypost.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Http2Config {
    /// Streams open at once on one connection (default 256).
    pub max_concurrent_streams: u32,
    /// The largest header list (HPACK-decoded) of one request; default `client.max_head_size`.
    pub max_header_list_size: Option<Size>,
    /// Streams reset by the client before waypost accepted them that may be pending at once:
    /// the rapid-reset guard, CVE-2023-44487 (default 20).
    pub max_pending_accept_reset_streams: usize,
    /// Streams waypost may reset because of the client's protocol errors before it closes the
    /// connection (default 1024).
    pub max_local_error_reset_streams: usize,
    /// Interval of keep-alive PINGs; none (the default) sends none.
    pub keep_alive_interval: Option<Dur>,
    /// How long a keep-alive PING may go unanswered before the connection closes (default 20s;
    /// only with `keep_alive_interval`).
    pub keep_alive_timeout: Dur,
}

impl Default for Http2Config {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 256,
            max_header_list_size: None,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
            keep_alive_interval: None,
            keep_alive_timeout: Dur::from_secs(20),
        }
    }
}

impl ClientConfig {
    /// The largest HTTP/2 header list: its own setting, else `max_head_size`.
    pub fn http2_max_header_list_size(&self) -> usize {
        self.http2
            .max_header_list_size
            .unwrap_or(self.max_head_size)
            .0
    }

    /// The rules of `client:`; on failure the dotted key and the reason.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (key, value) in [
            ("client.header_timeout", self.header_timeout),
            ("client.idle_timeout", self.idle_timeout),
            ("client.body_timeout", self.body_timeout),
            (
                "client.http2.keep_alive_timeout",
                self.http2.keep_alive_timeout,
            ),
        ] {
            if value.0.is_zero() {
                return Err((key.into(), "must be greater than 0".into()));
            }
        }
        if self
            .http2
            .keep_alive_interval
            .is_some_and(|d| d.0.is_zero())
        {
            return Err((
                "client.http2.keep_alive_interval".into(),
                "must be greater than 0 (leave it out to send no pings)".into(),
            ));
        }
        let sizes = [
            ("client.max_head_size", Some(self.max_head_size)),
            (
                "client.http2.max_header_list_size",
                self.http2.max_header_list_size,
            ),
        ];
        for (key, size) in sizes {
            if let Some(Size(n)) = size {
                if !(MIN_HEAD_SIZE..=MAX_HEAD_SIZE).contains(&n) {
                    return Err((
                        key.into(),
                        format!(
                            "must be between {MIN_HEAD_SIZE} (1KiB) and {MAX_HEAD_SIZE} (1MiB)"
                        ),
                    ));
                }
            }
        }
        if !(1..=MAX_HEADERS_LIMIT).contains(&self.max_headers) {
            return Err((
                "client.max_headers".into(),
                format!("must be between 1 and {MAX_HEADERS_LIMIT}"),
            ));
        }
        let h2 = &self.http2;
        for (key, value) in [
            (
                "client.http2.max_concurrent_streams",
                h2.max_concurrent_streams as usize,
            ),
            (
                "client.http2.max_pending_accept_reset_streams",
                h2.max_pending_accept_reset_streams,
            ),
            (
                "client.http2.max_local_error_reset_streams",
                h2.max_local_error_reset_streams,
            ),
        ] {
            if value == 0 {
                return Err((key.into(), "must be at least 1".into()));
            }
        }
        Ok(())
    }
}

/// A size in bytes, written as a number (`65536`) or with a unit: `B`, `KiB`, `MiB`
/// (`64KiB`, `1MiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub usize);

impl Size {
    /// Parses `text`; the error says what was expected.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (number, unit) = t.split_at(digits);
        let scale: usize = match unit.trim_start() {
            "" | "B" => 1,
            "KiB" => 1024,
            "MiB" => 1024 * 1024,
            _ => return Err(bad_size(text)),
        };
        number
            .parse::<usize>()
            .ok()
            .and_then(|n| n.checked_mul(scale))
            .map(Size)
            .ok_or_else(|| bad_size(text))
    }
}

fn bad_size(text: &str) -> String {
    format!("invalid size {text:?}: expected bytes or a number with a unit (B, KiB, MiB), e.g. 65536 or \"64KiB\"")
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ParseVisitor {
            parse: Size::parse,
            expecting: "a size such as 65536 or \"64KiB\"",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(Size::parse("65536"), Ok(Size(65536)));
        assert_eq!(Size::parse("64KiB"), Ok(Size(65536)));
        assert_eq!(Size::parse("64 KiB"), Ok(Size(65536)));
        assert_eq!(Size::parse("1MiB"), Ok(Size(1 << 20)));
        assert_eq!(Size::parse("512B"), Ok(Size(512)));
        for bad in [
            "",
            "KiB",
            "64kb",
            "64k",
            "1.5MiB",
            "-1",
            "64 KiB x",
            "99999999999999999999",
        ] {
            assert!(Size::parse(bad).is_err(), "{bad:?} must be rejected");
        }
    }
}
