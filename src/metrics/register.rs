//! Registration families: where each `register:` entry stands, its health checks, the registry
//! operations that failed, re-registrations after a lost lease, and how long shutdown took from
//! the start of deregistration.
//!
//! Every per-entry family carries `service` and `address` (bounded: they come from the config's
//! `register:` list) and, where the registry matters, `registry`. The label values the register
//! stage uses (states, operations, error kinds) are handed in as `&'static str` lists, so this
//! module imports nothing from the stage; every series of an entry is created up front at 0, so
//! `rate()` and alerts see it before the first event.

use std::time::Duration;

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// Health-check latency buckets (seconds): a local app answers in well under a millisecond;
/// the top buckets catch checks that run into their timeout.
const CHECK_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The registration families.
#[derive(Clone)]
pub struct RegisterMetrics {
    state: IntGaugeVec,
    checks: IntCounterVec,
    check_duration: HistogramVec,
    failures: IntCounterVec,
    reregistrations: IntCounterVec,
    /// `waypost_register_deregister_duration_seconds`: how long removing every registration
    /// took at shutdown; set by `app.rs` when that step ends.
    pub deregister_duration: Gauge,
    /// `waypost_register_shutdown_duration_seconds`: from the start of deregistration to the
    /// last shutdown step finished; `app.rs` sets it after each step, the last time just before
    /// exit.
    pub shutdown_duration: Gauge,
}

/// Which entry a set of series belongs to.
#[derive(Debug, Clone, Copy)]
pub struct EntryLabels<'a> {
    /// The registered service.
    pub service: &'a str,
    /// The registered address.
    pub address: &'a str,
    /// The registry's name (`file`, `etcd`).
    pub registry: &'a str,
}

/// The label values of the stage: every state an entry can be in, every registry operation and
/// every error kind, so all of an entry's series exist from the start.
#[derive(Debug, Clone, Copy)]
pub struct Vocabulary {
    /// Values of `state`.
    pub states: &'static [&'static str],
    /// Values of `op`.
    pub ops: &'static [&'static str],
    /// Values of `kind`.
    pub kinds: &'static [&'static str],
}

/// One entry's series, resolved once.
pub struct EntrySeries {
    states: Vec<(&'static str, IntGauge)>,
    good: IntCounter,
    bad: IntCounter,
    check_duration: Histogram,
    failures: Vec<(&'static str, &'static str, IntCounter)>,
    reregistrations: IntCounter,
}

impl EntrySeries {
    /// Sets the state gauge: 1 for `state`, 0 for every other.
    pub fn set_state(&self, state: &str) {
        for (name, gauge) in &self.states {
            gauge.set(i64::from(*name == state));
        }
    }

    /// Counts one health check and its latency.
    pub fn check(&self, ok: bool, latency: Duration) {
        if ok { &self.good } else { &self.bad }.inc();
        self.check_duration.observe(latency.as_secs_f64());
    }

    /// Counts one failed registry operation `op` with error kind `kind`.
    pub fn failure(&self, op: &str, kind: &str) {
        if let Some((_, _, c)) = self
            .failures
            .iter()
            .find(|(o, k, _)| *o == op && *k == kind)
        {
            c.inc();
        }
    }

    /// Counts one re-registration after a lost lease, session or entry.
    pub fn reregistered(&self) {
        self.reregistrations.inc();
    }
}

impl RegisterMetrics {
    /// Registers the families in `r`.
    pub fn new(r: &Registry) -> Self {
        let add = |c: Box<dyn prometheus::core::Collector>| {
            r.register(c)
                .expect("metric families are registered once, with unique names");
        };
        let state = IntGaugeVec::new(
            Opts::new(
                "waypost_register_state",
                "1 for the state each registration entry is in (checking, registered, withdrawn, failing, deregistered), 0 for the others.",
            ),
            &["service", "address", "registry", "state"],
        )
        .expect("valid");
        let checks = IntCounterVec::new(
            Opts::new(
                "waypost_register_health_checks_total",
                "Health checks of the local app per registration entry, by result (good, bad).",
            ),
            &["service", "address", "result"],
        )
        .expect("valid");
        let check_duration = HistogramVec::new(
            HistogramOpts::new(
                "waypost_register_health_check_duration_seconds",
                "Time taken by one health check, per registration entry.",
            )
            .buckets(CHECK_BUCKETS.to_vec()),
            &["service", "address"],
        )
        .expect("valid");
        let failures = IntCounterVec::new(
            Opts::new(
                "waypost_register_failures_total",
                "Failed registry operations per entry, by op (register, renew, deregister) and error kind.",
            ),
            &["service", "address", "registry", "op", "kind"],
        )
        .expect("valid");
        let reregistrations = IntCounterVec::new(
            Opts::new(
                "waypost_register_reregistrations_total",
                "Entries registered again after the registry lost them (lease, session or entry gone).",
            ),
            &["service", "address", "registry"],
        )
        .expect("valid");
        let deregister_duration = Gauge::with_opts(Opts::new(
            "waypost_register_deregister_duration_seconds",
            "Seconds taken at shutdown to remove every registration.",
        ))
        .expect("valid");
        let shutdown_duration = Gauge::with_opts(Opts::new(
            "waypost_register_shutdown_duration_seconds",
            "Seconds from the start of deregistration at shutdown to the last shutdown step finished (exit, at the end).",
        ))
        .expect("valid");
        add(Box::new(state.clone()));
        add(Box::new(checks.clone()));
        add(Box::new(check_duration.clone()));
        add(Box::new(failures.clone()));
        add(Box::new(reregistrations.clone()));
        add(Box::new(deregister_duration.clone()));
        add(Box::new(shutdown_duration.clone()));
        Self {
            state,
            checks,
            check_duration,
            failures,
            reregistrations,
            deregister_duration,
            shutdown_duration,
        }
    }

    /// Every series of the entry `labels`, created at 0, using the stage's `vocabulary`.
    pub fn entry(&self, labels: EntryLabels<'_>, vocabulary: Vocabulary) -> EntrySeries {
        let EntryLabels {
            service,
            address,
            registry,
        } = labels;
        let mut failures = Vec::new();
        for op in vocabulary.ops {
            for kind in vocabulary.kinds {
                failures.push((
                    *op,
                    *kind,
                    self.failures
                        .with_label_values(&[service, address, registry, op, kind]),
                ));
            }
        }
        EntrySeries {
            states: vocabulary
                .states
                .iter()
                .map(|s| {
                    (
                        *s,
                        self.state
                            .with_label_values(&[service, address, registry, s]),
                    )
                })
                .collect(),
            good: self.checks.with_label_values(&[service, address, "good"]),
            bad: self.checks.with_label_values(&[service, address, "bad"]),
            check_duration: self.check_duration.with_label_values(&[service, address]),
            failures,
            reregistrations: self
                .reregistrations
                .with_label_values(&[service, address, registry]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_has_every_series_from_the_start_and_one_state_at_a_time() {
        let r = Registry::new();
        let m = RegisterMetrics::new(&r);
        let series = m.entry(
            EntryLabels {
                service: "shop",
                address: "10.0.0.7:8080",
                registry: "file",
            },
            Vocabulary {
                states: &["checking", "registered"],
                ops: &["register", "renew"],
                kinds: &["io", "lost"],
            },
        );
        series.set_state("registered");
        series.failure("renew", "lost");
        series.failure("nope", "io"); // unknown values are ignored, never a new series
        let families = r.gather();
        let count = |name: &str| {
            families
                .iter()
                .find(|f| f.name() == name)
                .map_or(0, |f| f.get_metric().len())
        };
        assert_eq!(count("waypost_register_state"), 2);
        assert_eq!(count("waypost_register_failures_total"), 4);
        assert_eq!(count("waypost_register_health_checks_total"), 2);
        let state = |s: &str| {
            m.state
                .with_label_values(&["shop", "10.0.0.7:8080", "file", s])
                .get()
        };
        assert_eq!((state("checking"), state("registered")), (0, 1));
        let failed = m
            .failures
            .with_label_values(&["shop", "10.0.0.7:8080", "file", "renew", "lost"])
            .get();
        assert_eq!(failed, 1);
    }
}
