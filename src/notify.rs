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

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use url::Url;

use crate::backoff::Backoff;

/// How many instances a message lists per event before "and N more".
pub const DEFAULT_MAX_INSTANCES: usize = 50;

/// The longest `problems` text a message carries; the rest is cut with a pointer to `validate`.
const MAX_PROBLEMS_CHARS: usize = 3000;

/// DingTalk's error code for more than 20 messages a minute to one robot.
const DINGTALK_TOO_FAST: i64 = 130101;

/// The message format a webhook expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// `{source, title, text, events: [...]}`, for programs.
    #[default]
    Generic,
    /// A DingTalk custom robot: `{msgtype: "markdown", markdown: {title, text}}`.
    DingTalk,
    /// A Slack incoming webhook: `{text}` in Slack's mrkdwn.
    Slack,
}

/// One webhook. From YAML: `{url: https://…, format: generic|dingtalk|slack, name: ops}`;
/// `format` defaults to `generic`. `Debug` hides everything after the host.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawWebhook")]
pub struct WebhookConfig {
    /// The full URL, secrets included; never log it, use [`WebhookConfig::label`].
    pub url: Url,
    pub format: WebhookFormat,
    /// A name for logs, such as `ops-dingtalk`.
    pub name: Option<String>,
    /// A DingTalk robot's signing secret (`SEC…`, the robot's "additional signature" security
    /// setting): each message then carries `timestamp` and `sign`.
    pub secret: Option<crate::ecs::Secret>,
}

impl WebhookConfig {
    /// Checks that `url` is an absolute http(s) URL with a host.
    pub fn new(
        url: Url,
        format: WebhookFormat,
        name: Option<String>,
    ) -> Result<Self, WebhookConfigError> {
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(WebhookConfigError::Scheme(url.scheme().to_string()));
        }
        if url.host_str().is_none() {
            return Err(WebhookConfigError::NoHost);
        }
        Ok(WebhookConfig {
            url,
            format,
            name,
            secret: None,
        })
    }

    /// Signs every message with a DingTalk robot's secret.
    pub fn with_secret(mut self, secret: crate::ecs::Secret) -> Self {
        self.secret = Some(secret);
        self
    }

    /// Where a message goes at `now_ms`: the URL, plus for a DingTalk robot with a secret
    /// `timestamp=now_ms` and `sign=base64(HMAC-SHA256(secret, "now_ms\nsecret"))`, as
    /// DingTalk's signed robots require (the timestamp must be within an hour of DingTalk's).
    pub fn url_at(&self, now_ms: i64) -> Url {
        let mut url = self.url.clone();
        if let (WebhookFormat::DingTalk, Some(secret)) = (self.format, &self.secret) {
            url.query_pairs_mut()
                .append_pair("timestamp", &now_ms.to_string())
                .append_pair("sign", &dingtalk_sign(secret.expose(), now_ms));
        }
        url
    }

    /// What logs call this webhook: its name and its origin, such as
    /// `ops (https://oapi.dingtalk.com)`, or only the origin when it has no name.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("{n} ({})", redacted_url(&self.url)),
            None => redacted_url(&self.url),
        }
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &redacted_url(&self.url))
            .field("format", &self.format)
            .field("name", &self.name)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// DingTalk's robot signature of `timestamp_ms`.
pub fn dingtalk_sign(secret: &str, timestamp_ms: i64) -> String {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(format!("{timestamp_ms}\n{secret}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// `scheme://host[:port]`, with `/…` when the URL has anything after the host. User info, path,
/// query and fragment, where webhook secrets live, are left out.
pub fn redacted_url(url: &Url) -> String {
    let mut s = format!("{}://{}", url.scheme(), url.host_str().unwrap_or("?"));
    if let Some(port) = url.port() {
        s.push_str(&format!(":{port}"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        s.push_str("/…");
    }
    s
}

/// Why a webhook's configuration was rejected. The URL itself is never repeated, since it
/// usually holds a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookConfigError {
    #[error("webhook `url` is not a valid URL ({0}); write the full address, such as https://oapi.dingtalk.com/robot/send?access_token=…")]
    Url(String),
    #[error("webhook `url` uses the scheme {0:?}; only http and https webhooks are supported")]
    Scheme(String),
    #[error("webhook `url` has no host; write the full address, such as https://hooks.slack.com/services/…")]
    NoHost,
    #[error("webhook `secret` signs DingTalk robots only; remove it, or set `format: dingtalk`")]
    Secret,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: String,
    #[serde(default)]
    format: WebhookFormat,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    secret: Option<String>,
}

impl TryFrom<RawWebhook> for WebhookConfig {
    type Error = WebhookConfigError;

    fn try_from(raw: RawWebhook) -> Result<Self, WebhookConfigError> {
        let url = Url::parse(raw.url.trim()).map_err(|e| WebhookConfigError::Url(e.to_string()))?;
        let hook = WebhookConfig::new(url, raw.format, raw.name)?;
        match raw.secret {
            None => Ok(hook),
            Some(_) if raw.format != WebhookFormat::DingTalk => Err(WebhookConfigError::Secret),
            Some(s) => Ok(hook.with_secret(crate::ecs::Secret::new(s.trim()))),
        }
    }
}

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

/// Something people should hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// A policy run queued releases; their grace period starts now and they go at `at`.
    Scheduled {
        policy: String,
        releases: Vec<InstanceRef>,
        at: DateTime<Utc>,
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
            max_attempts: 6,
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
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

type Batch = Arc<Vec<Notification>>;

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

/// One webhook's delivery task.
struct Delivery {
    hook: WebhookConfig,
    client: reqwest::Client,
    options: Arc<NotifierOptions>,
    counters: Arc<Counters>,
    rng: StdRng,
}

/// Why one attempt failed.
enum AttemptError {
    /// Worth another try, no sooner than the floor (a `Retry-After`).
    Retry {
        reason: String,
        floor: Option<Duration>,
    },
    /// Retrying will not help.
    Permanent(String),
}

impl Delivery {
    async fn run(mut self, mut rx: mpsc::Receiver<Batch>, pending: Arc<watch::Sender<usize>>) {
        while let Some(batch) = rx.recv().await {
            let body = render(self.hook.format, &batch, self.options.max_instances);
            let counter = if self.deliver(&body).await {
                &self.counters.delivered
            } else {
                &self.counters.gave_up
            };
            counter.fetch_add(1, Ordering::Relaxed);
            pending.send_modify(|n| *n = n.saturating_sub(1));
        }
    }

    /// True when the webhook accepted the message.
    async fn deliver(&mut self, body: &Value) -> bool {
        let attempts = self.options.max_attempts.max(1);
        for attempt in 1..=attempts {
            self.counters.attempts.fetch_add(1, Ordering::Relaxed);
            match self.attempt(body).await {
                Ok(()) => {
                    tracing::debug!(webhook = %self.hook.label(), attempt, "notification delivered");
                    return true;
                }
                Err(AttemptError::Permanent(reason)) => {
                    tracing::warn!(
                        webhook = %self.hook.label(),
                        attempt,
                        "dropping a notification: the webhook refused it ({reason}); \
                         check its URL, token and format"
                    );
                    return false;
                }
                Err(AttemptError::Retry { reason, floor }) if attempt < attempts => {
                    let floor = floor.map(|f| f.min(self.options.backoff.cap));
                    let wait = self
                        .options
                        .backoff
                        .delay(attempt - 1, floor, &mut self.rng);
                    tracing::info!(
                        webhook = %self.hook.label(),
                        attempt,
                        retry_in_ms = wait.as_millis() as u64,
                        "notification not delivered ({reason}); will retry"
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(AttemptError::Retry { reason, .. }) => {
                    tracing::warn!(
                        webhook = %self.hook.label(),
                        attempts,
                        "dropping a notification after {attempts} attempts; the last failed \
                         with: {reason}"
                    );
                }
            }
        }
        false
    }

    async fn attempt(&self, body: &Value) -> Result<(), AttemptError> {
        let response = self
            .client
            .post(self.hook.url_at(chrono::Utc::now().timestamp_millis()))
            .json(body)
            .send()
            .await
            .map_err(|e| AttemptError::Retry {
                reason: describe_reqwest(e, self.options.request_timeout),
                floor: None,
            })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.text().await.map_err(|e| AttemptError::Retry {
            reason: describe_reqwest(e, self.options.request_timeout),
            floor: None,
        })?;
        let mut snippet = scrub(&text, &self.hook.url);
        if let Some(secret) = self.hook.secret.as_ref().filter(|s| !s.expose().is_empty()) {
            snippet = snippet.replace(secret.expose(), "…");
        }
        if !status.is_success() {
            let reason = format!("HTTP {status}: {snippet}");
            let transient =
                status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429;
            return Err(if transient {
                AttemptError::Retry {
                    reason,
                    floor: retry_after,
                }
            } else {
                AttemptError::Permanent(reason)
            });
        }
        if self.hook.format == WebhookFormat::DingTalk {
            // DingTalk answers 200 with an error code in the body.
            let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let code = answer.get("errcode").and_then(Value::as_i64).unwrap_or(0);
            if code != 0 {
                let reason = format!("DingTalk errcode {code}: {snippet}");
                return Err(if code == DINGTALK_TOO_FAST {
                    AttemptError::Retry {
                        reason,
                        floor: None,
                    }
                } else {
                    AttemptError::Permanent(reason)
                });
            }
        }
        Ok(())
    }
}

/// A reqwest error in words, without the URL it carries.
fn describe_reqwest(e: reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {} ms", timeout.as_millis());
    }
    let e = e.without_url();
    let mut s = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// A response body fit for a log line: at most 200 characters, with the URL's path and query
/// values blanked in case the webhook echoes them.
fn scrub(text: &str, url: &Url) -> String {
    let mut s: String = text.trim().chars().take(200).collect();
    let mut secrets: Vec<String> = url.query_pairs().map(|(_, v)| v.into_owned()).collect();
    secrets.extend(url.query().map(str::to_string));
    secrets.extend(
        url.path_segments()
            .into_iter()
            .flatten()
            .map(str::to_string),
    );
    if url.path() != "/" {
        secrets.push(url.path().to_string());
    }
    // Longest first, so a whole path is blanked before its segments.
    secrets.sort_by_key(|x| std::cmp::Reverse(x.len()));
    for secret in secrets.iter().filter(|x| x.len() >= 4) {
        s = s.replace(secret.as_str(), "…");
    }
    if s.is_empty() {
        s.push_str("(empty body)");
    }
    s
}

/// The message body a webhook of `format` receives for `batch`, listing at most `max_instances`
/// instances per event.
pub fn render(format: WebhookFormat, batch: &[Notification], max_instances: usize) -> Value {
    let title = title(batch);
    match format {
        WebhookFormat::Generic => json!({
            "source": "ecs-janitor",
            "title": title,
            "text": text(Flavor::Plain, &title, batch, max_instances),
            "events": batch.iter().map(|n| event_json(n, max_instances)).collect::<Vec<_>>(),
        }),
        WebhookFormat::DingTalk => json!({
            "msgtype": "markdown",
            "markdown": {
                "title": title,
                "text": text(Flavor::DingTalk, &title, batch, max_instances),
            },
        }),
        WebhookFormat::Slack => json!({
            "text": text(Flavor::Slack, &title, batch, max_instances),
        }),
    }
}

/// `ecs-janitor: stale-dev: 3 scheduled, 1 failed`.
fn title(batch: &[Notification]) -> String {
    let mut policies: Vec<&str> = Vec::new();
    for p in batch.iter().filter_map(Notification::policy) {
        if !policies.contains(&p) {
            policies.push(p);
        }
    }
    let (mut scheduled, mut released, mut failed) = (0, 0, 0);
    let (mut refused, mut load_failed) = (false, false);
    for n in batch {
        match n {
            Notification::Scheduled { releases, .. } => scheduled += releases.len(),
            Notification::Released { releases, .. } => released += releases.len(),
            Notification::Failed { releases, .. } => failed += releases.len(),
            Notification::Refused { .. } => refused = true,
            Notification::PolicyLoadFailed { .. } => load_failed = true,
        }
    }
    let mut parts = Vec::new();
    if scheduled > 0 {
        parts.push(format!("{scheduled} scheduled"));
    }
    if released > 0 {
        parts.push(format!("{released} released"));
    }
    if failed > 0 {
        parts.push(format!("{failed} failed"));
    }
    if refused {
        parts.push("refused".to_string());
    }
    if load_failed {
        parts.push("policy files failed to load".to_string());
    }
    if parts.is_empty() {
        parts.push("nothing to report".to_string());
    }
    if policies.is_empty() {
        format!("ecs-janitor: {}", parts.join(", "))
    } else {
        format!("ecs-janitor: {}: {}", policies.join(", "), parts.join(", "))
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn human_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn instance_json(i: &InstanceRef) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("instance_id".into(), json!(i.instance_id));
    m.insert("instance_name".into(), json!(i.instance_name));
    m.insert("region".into(), json!(i.region));
    m
}

/// `{count, instances: [first max], omitted}` for an event's list.
fn capped_list<T>(
    items: &[T],
    max: usize,
    item: impl Fn(&T) -> serde_json::Map<String, Value>,
) -> (usize, Vec<Value>, usize) {
    let shown: Vec<Value> = items
        .iter()
        .take(max)
        .map(|x| Value::Object(item(x)))
        .collect();
    (items.len(), shown, items.len().saturating_sub(max))
}

fn event_json(n: &Notification, max: usize) -> Value {
    match n {
        Notification::Scheduled {
            policy,
            releases,
            at,
        } => {
            let (count, instances, omitted) = capped_list(releases, max, instance_json);
            json!({"kind": "scheduled", "policy": policy, "at": rfc3339(*at), "count": count,
                   "instances": instances, "omitted": omitted})
        }
        Notification::Released { policy, releases } => {
            let (count, instances, omitted) = capped_list(releases, max, |r| {
                let mut m = instance_json(&r.instance);
                m.insert("request_id".into(), json!(r.request_id));
                m.insert("at".into(), json!(rfc3339(r.at)));
                m
            });
            json!({"kind": "released", "policy": policy, "count": count,
                   "instances": instances, "omitted": omitted})
        }
        Notification::Failed { policy, releases } => {
            let (count, instances, omitted) = capped_list(releases, max, |r| {
                let mut m = instance_json(&r.instance);
                m.insert("code".into(), json!(r.code));
                m.insert("message".into(), json!(r.message));
                m.insert("request_id".into(), json!(r.request_id));
                m.insert("at".into(), json!(rfc3339(r.at)));
                m
            });
            json!({"kind": "failed", "policy": policy, "count": count,
                   "instances": instances, "omitted": omitted})
        }
        Notification::Refused {
            policy,
            count,
            limit,
        } => json!({"kind": "refused", "policy": policy, "count": count, "limit": limit}),
        Notification::PolicyLoadFailed { problems } => {
            json!({"kind": "policy_load_failed", "problems": cap_problems(problems)})
        }
    }
}

fn cap_problems(problems: &str) -> String {
    let problems = problems.trim_end();
    if problems.chars().count() <= MAX_PROBLEMS_CHARS {
        return problems.to_string();
    }
    let mut s: String = problems.chars().take(MAX_PROBLEMS_CHARS).collect();
    s.push_str("\n… (cut; run `ecs-janitor validate` for the full list)");
    s
}

/// The markup a human-readable body is written in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Plain,
    DingTalk,
    Slack,
}

impl Flavor {
    fn heading(self, s: &str) -> String {
        match self {
            Flavor::Plain => s.to_string(),
            Flavor::DingTalk => format!("### {s}"),
            Flavor::Slack => format!("*{}*", self.escape(s)),
        }
    }

    fn bold(self, s: &str) -> String {
        match self {
            Flavor::Plain => s.to_string(),
            Flavor::DingTalk => format!("**{s}**"),
            Flavor::Slack => format!("*{}*", self.escape(s)),
        }
    }

    fn code(self, s: &str) -> String {
        match self {
            Flavor::Plain => s.to_string(),
            Flavor::DingTalk | Flavor::Slack => format!("`{}`", self.escape(s)),
        }
    }

    /// Slack reads `&`, `<` and `>` as markup; the other flavours take text as it is.
    fn escape(self, s: &str) -> String {
        match self {
            Flavor::Slack => s
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;"),
            Flavor::Plain | Flavor::DingTalk => s.to_string(),
        }
    }

    fn bullet(self) -> &'static str {
        match self {
            Flavor::Slack => "• ",
            Flavor::Plain | Flavor::DingTalk => "- ",
        }
    }

    /// A block of diagnostics, kept as written.
    fn preformatted(self, s: &str) -> String {
        match self {
            Flavor::Plain => s.to_string(),
            Flavor::Slack => format!("```\n{}\n```", self.escape(s)),
            // DingTalk's markdown has no code blocks; a quote keeps the lines apart.
            Flavor::DingTalk => s
                .lines()
                .map(|l| format!("> {l}"))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The human-readable body: a heading, then one paragraph per event.
fn text(flavor: Flavor, title: &str, batch: &[Notification], max: usize) -> String {
    let mut paragraphs = vec![flavor.heading(title)];
    for n in batch {
        paragraphs.push(event_text(flavor, n, max));
    }
    paragraphs.join("\n\n")
}

fn instance_words(flavor: Flavor, i: &InstanceRef) -> String {
    let id = flavor.escape(&i.instance_id);
    let region = flavor.escape(&i.region);
    if i.instance_name.is_empty() {
        format!("{id} in {region}")
    } else {
        format!("{id} ({}) in {region}", flavor.escape(&i.instance_name))
    }
}

fn list<T>(flavor: Flavor, items: &[T], max: usize, line: impl Fn(&T) -> String) -> String {
    let mut lines: Vec<String> = items
        .iter()
        .take(max)
        .map(|x| format!("{}{}", flavor.bullet(), line(x)))
        .collect();
    if items.len() > max {
        lines.push(format!("{}and {} more", flavor.bullet(), items.len() - max));
    }
    lines.join("\n")
}

fn event_text(flavor: Flavor, n: &Notification, max: usize) -> String {
    match n {
        Notification::Scheduled {
            policy,
            releases,
            at,
        } => format!(
            "{}: {} will be released at {} (grace period started)\n\n{}",
            flavor.bold(policy),
            plural(releases.len(), "instance", "instances"),
            human_time(*at),
            list(flavor, releases, max, |i| instance_words(flavor, i)),
        ),
        Notification::Released { policy, releases } => format!(
            "{}: {} released\n\n{}",
            flavor.bold(policy),
            plural(releases.len(), "instance", "instances"),
            list(flavor, releases, max, |r| {
                let mut s = format!(
                    "{} at {}",
                    instance_words(flavor, &r.instance),
                    human_time(r.at)
                );
                if let Some(id) = &r.request_id {
                    s.push_str(&format!(", RequestId {}", flavor.escape(id)));
                }
                s
            }),
        ),
        Notification::Failed { policy, releases } => format!(
            "{}: {} failed\n\n{}",
            flavor.bold(policy),
            plural(releases.len(), "release", "releases"),
            list(flavor, releases, max, |r| {
                let mut s = format!(
                    "{} at {}: {} {}",
                    instance_words(flavor, &r.instance),
                    human_time(r.at),
                    flavor.code(&r.code),
                    flavor.escape(&r.message)
                );
                if let Some(id) = &r.request_id {
                    s.push_str(&format!(" (RequestId {})", flavor.escape(id)));
                }
                s
            }),
        ),
        Notification::Refused {
            policy,
            count,
            limit,
        } => format!(
            "{}: refused, {} would exceed limits.max_releases_per_run {limit}; nothing was \
             released. Raise the limit if this is intended, or narrow the policy.",
            flavor.bold(policy),
            plural(*count, "release", "releases"),
        ),
        Notification::PolicyLoadFailed { problems } => format!(
            "{}\n\n{}",
            flavor.bold("Policy files failed to load:"),
            flavor.preformatted(&cap_problems(problems)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_only_the_origin() {
        let cases = [
            (
                "https://oapi.dingtalk.com/robot/send?access_token=abc123",
                "https://oapi.dingtalk.com/…",
            ),
            (
                "https://hooks.slack.com/services/T0/B0/XYZ",
                "https://hooks.slack.com/…",
            ),
            (
                "http://user:pw@127.0.0.1:8080/hook#frag",
                "http://127.0.0.1:8080/…",
            ),
            ("https://example.com/", "https://example.com"),
            ("https://example.com?k=v", "https://example.com/…"),
        ];
        for (url, want) in cases {
            assert_eq!(redacted_url(&Url::parse(url).unwrap()), want);
        }
    }

    #[test]
    fn scrub_blanks_echoed_secrets() {
        let url =
            Url::parse("https://h.example/services/T0/B0/SECRETPATH?access_token=SECRETTOKEN")
                .unwrap();
        let body =
            "bad request for /services/T0/B0/SECRETPATH?access_token=SECRETTOKEN and SECRETTOKEN";
        let s = scrub(body, &url);
        assert!(!s.contains("SECRET"), "{s}");
        assert_eq!(scrub("   ", &url), "(empty body)");
        assert_eq!(scrub(&"x".repeat(500), &url).chars().count(), 200);
    }

    #[test]
    fn long_problems_are_cut() {
        let p = "e\n".repeat(MAX_PROBLEMS_CHARS);
        let s = cap_problems(&p);
        assert!(s.ends_with("run `ecs-janitor validate` for the full list)"));
        assert!(s.chars().count() < MAX_PROBLEMS_CHARS + 80);
    }

    #[test]
    fn slack_escapes_markup_in_names() {
        let batch = vec![Notification::Scheduled {
            policy: "p<&>".into(),
            releases: vec![InstanceRef {
                instance_id: "i-1".into(),
                instance_name: "<!channel>".into(),
                region: "cn-hangzhou".into(),
            }],
            at: DateTime::from_timestamp(0, 0).unwrap(),
        }];
        let v = render(WebhookFormat::Slack, &batch, 50);
        let text = v["text"].as_str().unwrap();
        assert!(
            !text.contains("<!channel>") && text.contains("&lt;!channel&gt;"),
            "{text}"
        );
        assert!(text.contains("*p&lt;&amp;&gt;*"), "{text}");
    }
}
