//! The families of resilient forwarding: retries (by reason) and the budget that bounds them,
//! requests in flight per service, ejections, and per-instance requests and errors. Instance
//! labels are bounded: only instances of declared services get series, and an instance's series
//! are removed when it leaves its service's table.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::register;

/// Every `reason` label of `waypost_forward_retries_total`.
pub const RETRY_REASONS: [&str; 4] = ["connect", "reset", "timeout", "status"];

/// The resilience families.
#[derive(Clone)]
pub struct ResilienceMetrics {
    /// `waypost_forward_retries_total{service,reason}`.
    pub retries: IntCounterVec,
    /// `waypost_forward_retry_budget_exhausted_total{service}`: retries refused by the budget.
    pub budget_exhausted: IntCounterVec,
    /// `waypost_forward_in_flight_requests{service}`.
    pub in_flight: IntGaugeVec,
    /// `waypost_balance_ejected_instances{service}`: instances ejected now.
    pub ejected: IntGaugeVec,
    /// `waypost_balance_ejections_total{service}`.
    pub ejections: IntCounterVec,
    /// `waypost_balance_instance_requests_total{service,instance}`: attempts sent.
    pub instance_requests: IntCounterVec,
    /// `waypost_balance_instance_errors_total{service,instance}`: attempts that failed
    /// (no response, or a 5xx).
    pub instance_errors: IntCounterVec,
}

/// One instance's series, resolved once when it joins its table.
#[derive(Debug, Clone)]
pub struct InstanceSeries {
    /// Attempts sent to it.
    pub requests: IntCounter,
    /// Attempts that failed.
    pub errors: IntCounter,
}

/// One service's handles.
#[derive(Clone)]
pub struct ServiceResilience {
    /// Retries, indexed as [`RETRY_REASONS`].
    pub retries: [IntCounter; 4],
    /// Retries refused by the budget.
    pub budget_exhausted: IntCounter,
    /// Instances ejected now.
    pub ejected: IntGauge,
    /// Ejections.
    pub ejections: IntCounter,
}

impl ResilienceMetrics {
    /// Registers the families in `r`.
    pub(super) fn new(r: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid"),
            )
        };
        let gauge = |name: &str, help: &str| {
            register(
                r,
                IntGaugeVec::new(Opts::new(name, help), &["service"]).expect("valid"),
            )
        };
        Self {
            retries: counter(
                "waypost_forward_retries_total",
                "Requests sent again, per service and reason (connect, reset, timeout, status).",
                &["service", "reason"],
            ),
            budget_exhausted: counter(
                "waypost_forward_retry_budget_exhausted_total",
                "Retries refused because the service's retry budget was spent.",
                &["service"],
            ),
            in_flight: gauge(
                "waypost_forward_in_flight_requests",
                "Requests in flight, per service.",
            ),
            ejected: gauge(
                "waypost_balance_ejected_instances",
                "Instances ejected now for failing, per service.",
            ),
            ejections: counter(
                "waypost_balance_ejections_total",
                "Instances ejected for failing, per service.",
                &["service"],
            ),
            instance_requests: counter(
                "waypost_balance_instance_requests_total",
                "Attempts sent, per instance of a declared service.",
                &["service", "instance"],
            ),
            instance_errors: counter(
                "waypost_balance_instance_errors_total",
                "Attempts that got no response or a 5xx, per instance of a declared service.",
                &["service", "instance"],
            ),
        }
    }

    /// Handles for `service`.
    pub fn service(&self, service: &str) -> ServiceResilience {
        ServiceResilience {
            retries: RETRY_REASONS.map(|r| self.retries.with_label_values(&[service, r])),
            budget_exhausted: self.budget_exhausted.with_label_values(&[service]),
            ejected: self.ejected.with_label_values(&[service]),
            ejections: self.ejections.with_label_values(&[service]),
        }
    }

    /// Series for `instance` of `service`.
    pub fn instance(&self, service: &str, instance: &str) -> InstanceSeries {
        InstanceSeries {
            requests: self
                .instance_requests
                .with_label_values(&[service, instance]),
            errors: self.instance_errors.with_label_values(&[service, instance]),
        }
    }

    /// Removes `instance`'s series (it left its service's table).
    pub fn remove_instance(&self, service: &str, instance: &str) {
        let _ = self
            .instance_requests
            .remove_label_values(&[service, instance]);
        let _ = self
            .instance_errors
            .remove_label_values(&[service, instance]);
    }

    /// Removes every series of `service` (its on-demand target expired).
    pub fn remove(&self, service: &str) {
        for r in RETRY_REASONS {
            let _ = self.retries.remove_label_values(&[service, r]);
        }
        let _ = self.budget_exhausted.remove_label_values(&[service]);
        let _ = self.in_flight.remove_label_values(&[service]);
        let _ = self.ejected.remove_label_values(&[service]);
        let _ = self.ejections.remove_label_values(&[service]);
    }
}
