//! One webhook's delivery task: it takes batches from the webhook's queue, renders each and
//! posts it, retrying transient failures (5xx, 408, 429, timeouts, DingTalk's "send too fast")
//! with capped backoff that honours `Retry-After`, and keeps secrets out of what it logs.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use url::Url;

use super::render::render;
use super::{Batch, Counters, NotifierOptions, WebhookConfig, WebhookFormat};

/// DingTalk's error code for more than 20 messages a minute to one robot.
const DINGTALK_TOO_FAST: i64 = 130101;

/// One webhook's delivery task.
pub(super) struct Delivery {
    pub(super) hook: WebhookConfig,
    pub(super) client: reqwest::Client,
    pub(super) options: Arc<NotifierOptions>,
    pub(super) counters: Arc<Counters>,
    /// Draws the backoff's jitter.
    pub(super) rng: StdRng,
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
    /// Delivers each batch from `rx` until the queue closes, counting every outcome.
    pub(super) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Batch>,
        pending: Arc<watch::Sender<usize>>,
    ) {
        while let Some(batch) = rx.recv().await {
            let body = render(self.hook.format, &batch, self.options.max_instances);
            let counter = if self.deliver(&body, &super::render::title(&batch)).await {
                &self.counters.delivered
            } else {
                &self.counters.gave_up
            };
            counter.fetch_add(1, Ordering::Relaxed);
            pending.send_modify(|n| *n = n.saturating_sub(1));
        }
    }

    /// True when the webhook accepted the message; `what` names it in the logs (its title), so
    /// a message given up on says what was lost.
    async fn deliver(&mut self, body: &Value, what: &str) -> bool {
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
                        "giving up on a notification ({what}): the webhook refused it \
                         ({reason}); check its URL, token and format"
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
                        "giving up on a notification ({what}) after {attempts} attempts; the \
                         last failed with: {reason}. The releases it told of are in `ecs-janitor history`"
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
