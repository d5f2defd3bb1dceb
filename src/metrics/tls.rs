//! TLS families (`waypost_tls_*`): handshakes that failed, by direction (`upstream`,
//! `listener`) and reason class (`unknown_ca`, `expired`, `bad_name`, `no_client_cert`,
//! `protocol`, `other`). Both labels are fixed sets handed in as `&'static str`.

use prometheus::{IntCounterVec, Opts, Registry};

use super::register;

/// The TLS families.
#[derive(Clone)]
pub struct TlsMetrics {
    /// `waypost_tls_handshake_failures_total{direction,reason}`.
    pub handshake_failures: IntCounterVec,
}

impl TlsMetrics {
    /// Registers the families in `r`.
    pub(super) fn new(r: &Registry) -> Self {
        Self {
            handshake_failures: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "waypost_tls_handshake_failures_total",
                        "TLS handshakes that failed, by direction (upstream, listener) and reason (unknown_ca, expired, bad_name, no_client_cert, protocol, other).",
                    ),
                    &["direction", "reason"],
                )
                .expect("valid"),
            ),
        }
    }

    /// Counts one failed handshake.
    pub fn failure(&self, direction: &'static str, reason: &'static str) {
        self.handshake_failures
            .with_label_values(&[direction, reason])
            .inc();
    }
}
