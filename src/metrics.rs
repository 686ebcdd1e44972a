//! Prometheus metrics: counters the service increments as it works (ECS calls, retries, policy
//! load errors), and gauges read from the store at scrape time (releases by policy and state,
//! queue depth, the age of the oldest due release, the last successful tick per policy), so every
//! replica reports the shared truth.

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::ecs::client::{CallObserver, CallRecord};
use crate::store::{Store, StoreError};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    action: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReleaseLabels {
    policy: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    policy: String,
}

/// The service's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    calls: Family<CallLabels, Counter>,
    retries: Counter,
    load_errors: Counter,
    releases: Family<ReleaseLabels, Gauge>,
    queue_depth: Gauge,
    oldest_due_age: Gauge<f64, AtomicU64>,
    last_success: Family<PolicyLabels, Gauge>,
    paused: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("janitor");
        let calls = Family::<CallLabels, Counter>::default();
        r.register(
            "ecs_calls",
            "ECS API calls (each HTTP attempt) by action and answer code (OK for success)",
            calls.clone(),
        );
        let retries = Counter::default();
        r.register(
            "release_retries",
            "DeleteInstances batches scheduled for another attempt with the same ClientToken",
            retries.clone(),
        );
        let load_errors = Counter::default();
        r.register(
            "policy_load_errors",
            "Policy (re)loads refused because a file had problems",
            load_errors.clone(),
        );
        let releases = Family::<ReleaseLabels, Gauge>::default();
        r.register(
            "releases",
            "Releases in the store by policy and state (pending, in_flight, succeeded, failed, cancelled)",
            releases.clone(),
        );
        let queue_depth = Gauge::default();
        r.register(
            "queue_depth",
            "Releases pending or in flight",
            queue_depth.clone(),
        );
        let oldest_due_age = Gauge::<f64, AtomicU64>::default();
        r.register(
            "oldest_due_release_age_seconds",
            "How long the oldest due release has been waiting to be sent (0 when none)",
            oldest_due_age.clone(),
        );
        let last_success = Family::<PolicyLabels, Gauge>::default();
        r.register(
            "policy_last_success_timestamp_seconds",
            "Scheduled time of each policy's last tick reconciled without error (Unix seconds)",
            last_success.clone(),
        );
        let paused = Gauge::default();
        r.register(
            "paused",
            "1 while releases are paused by the kill switch",
            paused.clone(),
        );
        Metrics {
            registry: Arc::new(r),
            calls,
            retries,
            load_errors,
            releases,
            queue_depth,
            oldest_due_age,
            last_success,
            paused,
        }
    }

    /// An observer for the ECS client that counts every attempt.
    pub fn call_observer(&self) -> CallObserver {
        let calls = self.calls.clone();
        Arc::new(move |r: &CallRecord| {
            calls
                .get_or_create(&CallLabels {
                    action: r.action.to_string(),
                    code: r.code.clone(),
                })
                .inc();
        })
    }

    pub fn retry_scheduled(&self) {
        self.retries.inc();
    }

    pub fn policy_load_failed(&self) {
        self.load_errors.inc();
    }

    /// Refreshes the store-derived gauges and renders everything in the Prometheus text format.
    pub async fn render(&self, store: &Store, now: DateTime<Utc>) -> Result<String, StoreError> {
        let snap = store.metrics_snapshot(now).await?;
        self.releases.clear();
        for (policy, state, n) in &snap.by_policy_state {
            self.releases
                .get_or_create(&ReleaseLabels {
                    policy: policy.clone(),
                    state: state.clone(),
                })
                .set(*n);
        }
        self.queue_depth.set(snap.queue_depth);
        self.oldest_due_age.set(snap.oldest_due_age_seconds);
        self.last_success.clear();
        for (policy, at) in &snap.last_success {
            self.last_success
                .get_or_create(&PolicyLabels {
                    policy: policy.clone(),
                })
                .set(at.timestamp());
        }
        self.paused.set(i64::from(snap.paused));
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            let _ = writeln!(out, "# encoding failed");
        }
        Ok(out)
    }
}
