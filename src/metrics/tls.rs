//! TLS families (`waypost_tls_*`): handshakes that failed, by direction (`upstream`,
//! `listener`) and reason class (`unknown_ca`, `expired`, `bad_name`, `no_client_cert`,
//! `protocol`, `other`), both fixed sets handed in as `&'static str`; certificate reloads by
//! result; and each configured certificate file's expiry, labelled by its config key (bounded
//! by the config).

use prometheus::{GaugeVec, IntCounterVec, Opts, Registry};

use super::register;

/// The TLS families.
#[derive(Clone)]
pub struct TlsMetrics {
    /// `waypost_tls_handshake_failures_total{direction,reason}`.
    pub handshake_failures: IntCounterVec,
    /// `waypost_tls_reloads_total{result}`: files changed and the material rebuilt (`ok`) or
    /// kept (`error`).
    pub reloads: IntCounterVec,
    /// `waypost_tls_certificate_expiry_timestamp_seconds{certificate}`.
    pub expiry: GaugeVec,
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
            reloads: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "waypost_tls_reloads_total",
                        "TLS files that changed, by result: ok (new material in use) or error (the previous material kept).",
                    ),
                    &["result"],
                )
                .expect("valid"),
            ),
            expiry: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        "waypost_tls_certificate_expiry_timestamp_seconds",
                        "When each configured certificate file's earliest certificate expires (notAfter), in seconds since the epoch; labelled by its config key.",
                    ),
                    &["certificate"],
                )
                .expect("valid"),
            ),
        }
    }

    /// Counts one reload with `result` (`ok`, `error`).
    pub fn reloaded(&self, result: &'static str) {
        self.reloads.with_label_values(&[result]).inc();
    }

    /// Sets the expiry of the certificate file at config key `key`.
    pub fn expires(&self, key: &str, at: i64) {
        self.expiry.with_label_values(&[key]).set(at as f64);
    }

    /// Counts one failed handshake.
    pub fn failure(&self, direction: &'static str, reason: &'static str) {
        self.handshake_failures
            .with_label_values(&[direction, reason])
            .inc();
    }
}
