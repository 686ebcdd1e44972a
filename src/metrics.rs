//! Prometheus metrics: counters the service increments as it works (ECS calls, retries, policy
//! load errors), and gauges read from the store at scrape time (releases by policy and state,
//! queue depth, the age of the oldest due release, the last successful tick per policy), so every
//! replica reports the shared truth. What only this process knows is reported per process: the
//! loaded policies with their schedule's interval (a deleted policy's last success stays in the
//! store, its interval does not), whether the operating window is open, webhook deliveries.

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};

use crate::ecs::client::{CallObserver, CallRecord};
use crate::notify::Notifier;
use crate::policy::Policy;
use crate::store::{Store, StoreError};
use crate::window::OperatingWindow;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SavingLabels {
    policy: String,
    currency: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

/// What the daemon tells the metrics about itself: the window and the notifier.
#[derive(Default)]
struct Process {
    window: Option<OperatingWindow>,
    notifier: Option<Notifier>,
}

/// A registry that remembers the exported name of each series it registers.
struct Names {
    registry: Registry,
    series: Vec<String>,
}

impl Names {
    fn counter(&mut self, name: &str, help: &str, metric: impl Metric) {
        self.series.push(format!("janitor_{name}_total"));
        self.registry.register(name, help, metric);
    }

    fn gauge(&mut self, name: &str, help: &str, metric: impl Metric) {
        self.series.push(format!("janitor_{name}"));
        self.registry.register(name, help, metric);
    }
}

/// The service's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// The name of every series, as exported.
    series: Arc<Vec<String>>,
    calls: Family<CallLabels, Counter>,
    /// DescribeInstances pages answered, for `apply`'s progress bar.
    pages: Arc<std::sync::atomic::AtomicU64>,
    retries: Counter,
    load_errors: Counter,
    releases: Family<ReleaseLabels, Gauge>,
    queue_depth: Gauge,
    oldest_due_age: Gauge<f64, AtomicU64>,
    last_success: Family<PolicyLabels, Gauge>,
    paused: Gauge,
    /// No label set while not paused (or paused without a recorded time), one while paused.
    paused_since: Family<Vec<(String, String)>, Gauge>,
    policy_interval: Family<PolicyLabels, Gauge<f64, AtomicU64>>,
    /// When this process first loaded each policy now loaded, by name (Unix seconds).
    policy_loaded: Family<PolicyLabels, Gauge>,
    first_loaded: Arc<Mutex<std::collections::HashMap<String, i64>>>,
    window_open: Gauge,
    webhook_deliveries: Family<OutcomeLabels, Counter>,
    /// Monthly run-rate released (list prices, currency units), caught up from the store.
    savings_released: Family<SavingLabels, Counter<f64, AtomicU64>>,
    savings_pending: Family<SavingLabels, Gauge<f64, AtomicU64>>,
    process: Arc<RwLock<Process>>,
    /// The policies this process runs, once it has loaded them: only their
    /// `policy_last_success_timestamp_seconds` is exported, so a deleted policy's series goes.
    loaded: Arc<RwLock<Option<std::collections::HashSet<String>>>>,
    /// Serialises the catch-up of the webhook counters from the notifier's totals.
    webhook_sync: Arc<Mutex<()>>,
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
        let mut r = Names {
            registry: Registry::with_prefix("janitor"),
            series: Vec::new(),
        };
        let calls = Family::<CallLabels, Counter>::default();
        r.counter(
            "ecs_calls",
            "ECS API calls (each HTTP attempt) by action and answer code (OK for success)",
            calls.clone(),
        );
        let retries = Counter::default();
        r.counter(
            "release_retries",
            "DeleteInstances batches scheduled for another attempt with the same ClientToken",
            retries.clone(),
        );
        let load_errors = Counter::default();
        r.counter(
            "policy_load_errors",
            "Policy (re)loads refused because a file had problems",
            load_errors.clone(),
        );
        let releases = Family::<ReleaseLabels, Gauge>::default();
        r.gauge(
            "releases",
            "Releases in the store by policy and state (pending, in_flight, succeeded, failed, cancelled)",
            releases.clone(),
        );
        let queue_depth = Gauge::default();
        r.gauge(
            "queue_depth",
            "Releases pending or in flight",
            queue_depth.clone(),
        );
        let oldest_due_age = Gauge::<f64, AtomicU64>::default();
        r.gauge(
            "oldest_due_release_age_seconds",
            "How long the oldest due release has been waiting to be sent (0 when none)",
            oldest_due_age.clone(),
        );
        let last_success = Family::<PolicyLabels, Gauge>::default();
        r.gauge(
            "policy_last_success_timestamp_seconds",
            "Scheduled time of each loaded policy's last tick reconciled without error (Unix seconds)",
            last_success.clone(),
        );
        let paused = Gauge::default();
        r.gauge(
            "paused",
            "1 while releases are paused by the kill switch",
            paused.clone(),
        );
        let paused_since = Family::<Vec<(String, String)>, Gauge>::default();
        r.gauge(
            "paused_since_timestamp_seconds",
            "When releases were paused (Unix seconds); absent while not paused",
            paused_since.clone(),
        );
        let policy_interval = Family::<PolicyLabels, Gauge<f64, AtomicU64>>::default();
        r.gauge(
            "policy_interval_seconds",
            "Each loaded policy's longest gap between two ticks of its schedule over a week; only policies this process has loaded",
            policy_interval.clone(),
        );
        let policy_loaded = Family::<PolicyLabels, Gauge>::default();
        r.gauge(
            "policy_loaded_timestamp_seconds",
            "When each policy now loaded was first tried (its first tick in the store, by any process) or first loaded by this process, whichever is earlier (Unix seconds): the alert on a policy not succeeding counts from it while the policy has no success yet",
            policy_loaded.clone(),
        );
        let window_open = Gauge::default();
        r.gauge(
            "release_window_open",
            "1 while the operating window lets releases execute (always 1 with no window)",
            window_open.clone(),
        );
        let webhook_deliveries = Family::<OutcomeLabels, Counter>::default();
        r.counter(
            "webhook_deliveries",
            "Notification batches per webhook by outcome (delivered, gave_up after a permanent error or the last attempt, dropped with a full queue)",
            webhook_deliveries.clone(),
        );
        let savings_released = Family::<SavingLabels, Counter<f64, AtomicU64>>::default();
        r.counter(
            "released_monthly_savings",
            "Monthly run-rate released by policy and currency (list prices for 730 hours, in currency units): what the releases done save each month",
            savings_released.clone(),
        );
        let savings_pending = Family::<SavingLabels, Gauge<f64, AtomicU64>>::default();
        r.gauge(
            "pending_monthly_savings",
            "Monthly run-rate of releases queued and not yet done (waiting out their grace, due or in flight), by policy and currency",
            savings_pending.clone(),
        );
        for outcome in ["delivered", "gave_up", "dropped"] {
            let _ = webhook_deliveries.get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            });
        }
        let mut series = r.series;
        series.sort();
        Metrics {
            registry: Arc::new(r.registry),
            series: Arc::new(series),
            calls,
            pages: Arc::default(),
            retries,
            load_errors,
            releases,
            queue_depth,
            oldest_due_age,
            last_success,
            paused,
            paused_since,
            policy_interval,
            policy_loaded,
            first_loaded: Arc::default(),
            window_open,
            webhook_deliveries,
            savings_released,
            savings_pending,
            process: Arc::default(),
            loaded: Arc::default(),
            webhook_sync: Arc::default(),
        }
    }

    /// The operating window and the notifier of the daemon, read at every scrape.
    pub fn observe(&self, window: Option<OperatingWindow>, notifier: Option<Notifier>) {
        *self.process.write().unwrap_or_else(|e| e.into_inner()) = Process { window, notifier };
    }

    /// The policy set now running: replaces the `policy_interval_seconds` series, so a policy
    /// deleted from the folder has none.
    pub fn policies_loaded(&self, policies: &[Policy], now: DateTime<Utc>) {
        *self.loaded.write().unwrap_or_else(|e| e.into_inner()) =
            Some(policies.iter().map(|p| p.name.clone()).collect());
        self.policy_interval.clear();
        self.policy_loaded.clear();
        {
            let mut first = self.first_loaded.lock().unwrap_or_else(|e| e.into_inner());
            first.retain(|name, _| policies.iter().any(|p| &p.name == name));
            for p in policies {
                let at = *first.entry(p.name.clone()).or_insert(now.timestamp());
                self.policy_loaded
                    .get_or_create(&PolicyLabels {
                        policy: p.name.clone(),
                    })
                    .set(at);
            }
        }
        for p in policies {
            if let Some(gap) = longest_gap(&p.schedule, now) {
                self.policy_interval
                    .get_or_create(&PolicyLabels {
                        policy: p.name.clone(),
                    })
                    .set(gap.num_seconds() as f64);
            }
        }
    }

    /// The name of every series the binary exports (counters with their `_total`), whether or
    /// not it has samples yet, for checking the alert rules and the dashboard.
    pub fn series_names(&self) -> Vec<String> {
        self.series.to_vec()
    }

    /// An observer for the ECS client that counts every attempt.
    pub fn call_observer(&self) -> CallObserver {
        let calls = self.calls.clone();
        let pages = self.pages.clone();
        Arc::new(move |r: &CallRecord| {
            if r.action == "DescribeInstances" && r.code == "OK" {
                pages.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            calls
                .get_or_create(&CallLabels {
                    action: r.action.to_string(),
                    code: r.code.clone(),
                })
                .inc();
        })
    }

    /// DescribeInstances pages answered so far by this process.
    pub fn listing_pages(&self) -> u64 {
        self.pages.load(std::sync::atomic::Ordering::Relaxed)
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
                    state: state.to_string(),
                })
                .set(*n);
        }
        self.queue_depth.set(snap.queue_depth);
        self.oldest_due_age.set(snap.oldest_due_age_seconds);
        self.last_success.clear();
        let loaded = self
            .loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let running = |p: &String| loaded.as_ref().is_none_or(|l| l.contains(p));
        for (policy, at) in snap.last_success.iter().filter(|(p, _)| running(p)) {
            self.last_success
                .get_or_create(&PolicyLabels {
                    policy: policy.clone(),
                })
                .set(at.timestamp());
        }
        // A policy counts from its first try in the store when that is earlier than this
        // process's load: a restart does not set the never-succeeded alert's clock back.
        for (policy, loaded_at) in self
            .first_loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let at = snap
                .first_run
                .get(policy)
                .map_or(*loaded_at, |t| t.timestamp().min(*loaded_at));
            self.policy_loaded
                .get_or_create(&PolicyLabels {
                    policy: policy.clone(),
                })
                .set(at);
        }
        self.paused.set(i64::from(snap.paused));
        self.paused_since.clear();
        if snap.paused {
            if let Some(at) = store.pause_state().await?.and_then(|p| p.at) {
                self.paused_since
                    .get_or_create(&Vec::new())
                    .set(at.timestamp());
            }
        }
        self.savings_pending.clear();
        for p in store.savings_by_policy().await? {
            let labels = SavingLabels {
                policy: p.policy,
                currency: p.currency,
            };
            let released = self.savings_released.get_or_create(&labels);
            let total = p.released_minor as f64 / 100.0;
            let behind = total - released.get();
            if behind > 0.0 {
                released.inc_by(behind);
            }
            if p.pending_minor > 0 {
                self.savings_pending
                    .get_or_create(&labels)
                    .set(p.pending_minor as f64 / 100.0);
            }
        }
        self.render_process(now);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            let _ = writeln!(out, "# encoding failed");
        }
        Ok(out)
    }

    fn render_process(&self, now: DateTime<Utc>) {
        let process = self.process.read().unwrap_or_else(|e| e.into_inner());
        let open = process.window.as_ref().is_none_or(|w| w.is_open(now));
        self.window_open.set(i64::from(open));
        if let Some(n) = &process.notifier {
            let stats = n.stats();
            let _one = self.webhook_sync.lock().unwrap_or_else(|e| e.into_inner());
            for (outcome, total) in [
                ("delivered", stats.delivered),
                ("gave_up", stats.gave_up),
                ("dropped", stats.dropped),
            ] {
                let c = self.webhook_deliveries.get_or_create(&OutcomeLabels {
                    outcome: outcome.to_string(),
                });
                c.inc_by(total.saturating_sub(c.get()));
            }
        }
    }
}

/// The longest gap between consecutive ticks of `schedule` from `now` over a week (and at least
/// two ticks, so a monthly schedule has its month), looking at no more than 10,080 ticks (a
/// week of minutes). `None` when fewer than two ticks remain.
fn longest_gap(schedule: &cron::Schedule, now: DateTime<Utc>) -> Option<chrono::Duration> {
    let horizon = now + chrono::Duration::days(7);
    let mut ticks = schedule.after(&now).take(10_081);
    let mut prev = ticks.next()?;
    let mut longest: Option<chrono::Duration> = None;
    for t in ticks {
        longest = Some(longest.map_or(t - prev, |l| l.max(t - prev)));
        if t > horizon {
            break;
        }
        prev = t;
    }
    longest
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_schedules_interval_is_its_longest_gap_over_a_week() {
        let gap = |cron: &str| {
            longest_gap(
                &cron::Schedule::from_str(cron).unwrap(),
                at("2026-03-04T12:00:00Z"),
            )
            .map(|d| d.num_seconds())
        };
        assert_eq!(gap("0 */15 * * * *"), Some(900));
        assert_eq!(gap("0 0 3 * * *"), Some(86_400));
        // Weekdays only: the weekend is the longest gap.
        assert_eq!(gap("0 0 3 * * Mon-Fri"), Some(3 * 86_400));
        // Monthly: the two next ticks, a month apart.
        assert_eq!(gap("0 0 3 1 * *"), Some(30 * 86_400));
        assert_eq!(gap("0 0 3 1 1 * 2020"), None);
    }

    #[test]
    fn the_exported_series_names_include_counters_with_their_total() {
        let names = Metrics::new().series_names();
        for n in [
            "janitor_ecs_calls_total",
            "janitor_releases",
            "janitor_policy_last_success_timestamp_seconds",
            "janitor_policy_interval_seconds",
            "janitor_policy_loaded_timestamp_seconds",
            "janitor_paused_since_timestamp_seconds",
            "janitor_release_window_open",
            "janitor_webhook_deliveries_total",
            "janitor_released_monthly_savings_total",
            "janitor_pending_monthly_savings",
        ] {
            assert!(names.contains(&n.to_string()), "{n} in {names:?}");
        }
        assert!(!names.contains(&"janitor_ecs_calls".to_string()));
    }

    #[test]
    fn listing_pages_count_answered_describe_instances_only() {
        let m = Metrics::new();
        let observe = m.call_observer();
        for (action, code) in [
            ("DescribeInstances", "OK"),
            ("DescribeInstances", "Throttling"),
            ("DeleteInstances", "OK"),
            ("DescribeInstances", "OK"),
        ] {
            observe(&CallRecord {
                action,
                code: code.into(),
                attempt: 1,
            });
        }
        assert_eq!(m.listing_pages(), 2);
    }

    #[test]
    fn the_series_names_are_those_the_encoder_writes() {
        let m = Metrics::new();
        (m.call_observer())(&CallRecord {
            action: "DeleteInstances",
            code: "OK".into(),
            attempt: 1,
        });
        let _ = m.releases.get_or_create(&ReleaseLabels {
            policy: "p".into(),
            state: "failed".into(),
        });
        let _ = m
            .last_success
            .get_or_create(&PolicyLabels { policy: "p".into() });
        m.paused_since.get_or_create(&Vec::new()).set(1);
        let _ = m
            .policy_interval
            .get_or_create(&PolicyLabels { policy: "p".into() });
        let _ = m
            .policy_loaded
            .get_or_create(&PolicyLabels { policy: "p".into() });
        let saving = SavingLabels {
            policy: "p".into(),
            currency: "CNY".into(),
        };
        m.savings_released.get_or_create(&saving).inc_by(390.4);
        m.savings_pending.get_or_create(&saving).set(40.0);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap();
        let written: Vec<&str> = out
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let mut written: Vec<String> = written.into_iter().map(String::from).collect();
        written.sort();
        written.dedup();
        assert_eq!(written, m.series_names(), "{out}");
        assert!(
            out.contains("\njanitor_paused_since_timestamp_seconds 1\n"),
            "{out}"
        );
    }
}
