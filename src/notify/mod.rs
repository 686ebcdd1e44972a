//! Webhook notifications: tells people when releases are scheduled, done or failed, when a policy is
//! refused for its blast radius, and when policy files fail to load.
//!
//! The caller hands over all events of one policy run at once ([`Notifier::send_batch`]); each
//! webhook gets one message per batch, in its own format (generic JSON, DingTalk markdown, Slack).
//! Delivery happens on a background task per webhook, behind a bounded queue, so a slow or broken
//! webhook never delays a release: `send_batch` only enqueues. A failed delivery (5xx, 408, 429,
//! timeout, connection error, DingTalk's "send too fast") is retried with capped exponential
//! backoff and jitter, up to [`NotifierOptions::max_attempts`], then dropped with a warning. Other
//! 4xx answers and DingTalk error codes are permanent and dropped at once.
//!
//! When a webhook's queue is full, the newest batch is dropped with a warning: a full queue means
//! the webhook has been failing for many runs, the batches already waiting are older news that
//! was never told, and the release history stays the durable record either way.
//!
//! Webhook URLs carry secrets (DingTalk's `access_token`, Slack's path). Logs, errors and `Debug`
//! show only the scheme, host and port, plus the webhook's configured name.
//!
//! This file holds the model (what a notification says) and the [`Notifier`]'s public face;
//! [`config`] reads a webhook's settings, [`delivery`] sends one webhook's batches with retries,
//! and [`render`] writes a batch in each webhook format.

mod config;
mod delivery;
mod render;

pub use config::{
    dingtalk_sign, parse_webhook, redacted_url, WebhookConfig, WebhookConfigError, WebhookFault,
    WebhookFormat,
};
pub use render::render;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::{mpsc, watch};

use crate::backoff::Backoff;
use delivery::Delivery;

/// How many instances a message lists per event before "and N more".
pub const DEFAULT_MAX_INSTANCES: usize = 50;

/// An instance as a person recognises it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRef {
    pub instance_id: String,
    /// May be empty.
    pub instance_name: String,
    pub region: String,
}

/// An instance that was released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleasedInstance {
    pub instance: InstanceRef,
    /// The DeleteInstances call's RequestId; `None` when the release was settled without a call
    /// (for example the instance was already gone).
    pub request_id: Option<String>,
    pub at: DateTime<Utc>,
    /// What it saves per month, the figure it was queued with (`None`: it was not priced).
    pub saving: Option<crate::store::ReleaseSaving>,
}

/// What scheduled releases will save per month (list prices), and how long until they go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledSaving {
    pub monthly: crate::money::Totals,
    /// Releases whose saving is unknown (not in `monthly`).
    pub unknown: usize,
    pub within: chrono::Duration,
}

/// A release that failed for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRelease {
    pub instance: InstanceRef,
    /// The ECS error `Code`, or a local one for errors without a response.
    pub code: String,
    pub message: String,
    /// `None` when ECS never answered.
    pub request_id: Option<String>,
    pub at: DateTime<Utc>,
}

/// A release that was announced and will not happen after all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelledRelease {
    pub instance: InstanceRef,
    pub reason: String,
}

/// Something people should hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// A policy run queued releases; their grace period starts now and they go at `at`.
    Scheduled {
        policy: String,
        releases: Vec<InstanceRef>,
        at: DateTime<Utc>,
        /// What releasing them will save, and in how long (`None` when the plan was not priced).
        saving: Option<ScheduledSaving>,
        /// Releases are paused as this is sent (who paused, when, why): they go at `at` only
        /// if someone resumes by then.
        paused: Option<String>,
    },
    /// Releases that completed.
    Released {
        policy: String,
        releases: Vec<ReleasedInstance>,
    },
    /// Releases that failed for good.
    Failed {
        policy: String,
        releases: Vec<FailedRelease>,
    },
    /// Releases announced as scheduled, cancelled before their time: each with why.
    Cancelled {
        policy: String,
        releases: Vec<CancelledRelease>,
    },
    /// A policy run was refused for its blast radius: `count` releases over `limit`.
    Refused {
        policy: String,
        count: usize,
        limit: u32,
    },
    /// Policy files failed to load; `problems` is the diagnostics text.
    PolicyLoadFailed { problems: String },
}

impl Notification {
    fn policy(&self) -> Option<&str> {
        match self {
            Notification::Scheduled { policy, .. }
            | Notification::Released { policy, .. }
            | Notification::Failed { policy, .. }
            | Notification::Cancelled { policy, .. }
            | Notification::Refused { policy, .. } => Some(policy),
            Notification::PolicyLoadFailed { .. } => None,
        }
    }
}

/// Tuning for [`Notifier`].
#[derive(Debug, Clone)]
pub struct NotifierOptions {
    /// Batches waiting per webhook before new ones are dropped.
    pub queue_capacity: usize,
    /// Delivery attempts per batch and webhook, the first included.
    pub max_attempts: u32,
    /// The wait between attempts.
    pub backoff: Backoff,
    /// Per request, connecting and reading the answer included.
    pub request_timeout: Duration,
    /// Instances listed per event before "and N more".
    pub max_instances: usize,
    /// Seeds the jitter, so a run can be replayed.
    pub seed: u64,
}

impl Default for NotifierOptions {
    fn default() -> Self {
        NotifierOptions {
            queue_capacity: 100,
            // About ten minutes of retries in all (waits doubling from 1 s, at most 2 min, with
            // jitter): a receiver restarting or redeployed meanwhile still gets the message
            // (with 6 attempts and a 60 s cap, one down for 10 s lost it).
            max_attempts: 12,
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(120)),
            request_timeout: Duration::from_secs(10),
            max_instances: DEFAULT_MAX_INSTANCES,
            seed: rand::random(),
        }
    }
}

/// Counters since start, summed over webhooks; one delivery is one batch to one webhook.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotifierStats {
    /// Deliveries a webhook accepted.
    pub delivered: u64,
    /// Deliveries abandoned after a permanent error or the last attempt.
    pub gave_up: u64,
    /// Deliveries dropped because the webhook's queue was full.
    pub dropped: u64,
    /// HTTP requests made, retries included.
    pub attempts: u64,
    /// Deliveries queued or in progress.
    pub pending: usize,
}

/// Could not start the notifier.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("cannot build the HTTP client for webhooks: {0}")]
    Client(#[source] reqwest::Error),
}

/// One policy run's events, shared by every webhook's queue.
type Batch = Arc<Vec<Notification>>;

/// What the delivery tasks count, read by [`Notifier::stats`].
#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    gave_up: AtomicU64,
    dropped: AtomicU64,
    attempts: AtomicU64,
}

struct Shared {
    queues: Vec<(WebhookConfig, mpsc::Sender<Batch>)>,
    counters: Arc<Counters>,
    pending: Arc<watch::Sender<usize>>,
    capacity: usize,
}

/// Sends notifications to the configured webhooks in the background. Cheap to clone; the
/// delivery tasks end when the last clone is dropped and their queues are empty.
#[derive(Clone)]
pub struct Notifier {
    shared: Arc<Shared>,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hooks: Vec<&WebhookConfig> = self.shared.queues.iter().map(|(h, _)| h).collect();
        f.debug_struct("Notifier")
            .field("webhooks", &hooks)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Notifier {
    /// Starts one delivery task per webhook. Call inside a tokio runtime. With no webhooks,
    /// every call is a no-op.
    pub fn start(
        webhooks: Vec<WebhookConfig>,
        options: NotifierOptions,
    ) -> Result<Notifier, NotifyError> {
        let client = reqwest::Client::builder()
            .timeout(options.request_timeout)
            // A webhook that redirects is misconfigured, and following would turn a POST into
            // a GET; report it instead.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ecs-janitor/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(NotifyError::Client)?;
        let counters = Arc::new(Counters::default());
        let pending = Arc::new(watch::Sender::new(0usize));
        let capacity = options.queue_capacity.max(1);
        let options = Arc::new(options);
        let mut queues = Vec::with_capacity(webhooks.len());
        for (i, hook) in webhooks.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel(capacity);
            let rng = StdRng::seed_from_u64(options.seed.wrapping_add(i as u64));
            let delivery = Delivery {
                hook: hook.clone(),
                client: client.clone(),
                options: options.clone(),
                counters: counters.clone(),
                rng,
            };
            tokio::spawn(delivery.run(rx, pending.clone()));
            queues.push((hook, tx));
        }
        Ok(Notifier {
            shared: Arc::new(Shared {
                queues,
                counters,
                pending,
                capacity,
            }),
        })
    }

    /// Queues one policy run's events for every webhook and returns at once. Never blocks or
    /// waits; when a webhook's queue is full this batch is dropped for it, with a warning.
    pub fn send_batch(&self, batch: Vec<Notification>) {
        if batch.is_empty() {
            return;
        }
        let batch: Batch = Arc::new(batch);
        for (hook, tx) in &self.shared.queues {
            // Count before sending, so `flush` cannot see zero while a batch is in the queue.
            self.shared.pending.send_modify(|n| *n += 1);
            if let Err(e) = tx.try_send(batch.clone()) {
                self.shared.pending.send_modify(|n| *n -= 1);
                self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => "its queue is full",
                    mpsc::error::TrySendError::Closed(_) => "its delivery task has stopped",
                };
                tracing::warn!(
                    webhook = %hook.label(),
                    capacity = self.shared.capacity,
                    "dropping a notification batch for this webhook because {why}; earlier \
                     batches are still being retried, check that the webhook is reachable"
                );
            }
        }
    }

    /// Waits until every queued batch was delivered or given up, for at most `deadline`.
    /// Returns true when nothing is pending.
    pub async fn flush(&self, deadline: Duration) -> bool {
        let mut rx = self.shared.pending.subscribe();
        tokio::time::timeout(deadline, rx.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Counters since start.
    pub fn stats(&self) -> NotifierStats {
        let c = &self.shared.counters;
        NotifierStats {
            delivered: c.delivered.load(Ordering::Relaxed),
            gave_up: c.gave_up.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            attempts: c.attempts.load(Ordering::Relaxed),
            pending: *self.shared.pending.borrow(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message is retried for minutes, not seconds, so a receiver that restarts or is
    /// redeployed meanwhile still gets it (a user trial lost "12 released" to a 10 s outage).
    #[test]
    fn the_default_retries_outlast_a_receiver_restart() {
        let o = NotifierOptions::default();
        let waits: Duration = (0..o.max_attempts - 1).map(|k| o.backoff.ceiling(k)).sum();
        // Full jitter waits half the ceilings on average.
        assert!(waits / 2 >= Duration::from_secs(5 * 60), "{waits:?}");
        assert!(waits <= Duration::from_secs(15 * 60), "{waits:?}");
    }
}
