//! Webhook notifications against a real HTTP receiver on 127.0.0.1:0: the exact message of each
//! format for each event, one message per batch, retries (waiting out a `Retry-After`), DingTalk
//! signing, giving up without blocking, dropping when a queue is full, and URL secrets kept out
//! of logs and `Debug`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use chrono::{DateTime, Utc};
use common::capture_logs;
use ecs_janitor::backoff::Backoff;
use ecs_janitor::money::Money;
use ecs_janitor::notify::{
    CancelledRelease, FailedRelease, InstanceRef, Notification, Notifier, NotifierOptions,
    ReleasedInstance, WebhookConfig, WebhookFormat,
};
use ecs_janitor::store::ReleaseSaving;
use serde_json::{json, Value};
use tokio::sync::watch;

const DEADLINE: Duration = Duration::from_secs(20);

/// How the receiver answers.
#[derive(Clone, Copy)]
enum Mode {
    /// These answers in order, then 200 with DingTalk's `{"errcode":0}`.
    Script(&'static [(u16, &'static str)]),
    /// This status, forever.
    Always(u16),
    /// Never answers.
    Hang,
}

#[derive(Debug, Clone)]
struct Hit {
    path: String,
    body: Value,
}

struct ReceiverState {
    mode: Mode,
    requests: AtomicUsize,
    hits: Mutex<Vec<Hit>>,
    seen: watch::Sender<usize>,
}

/// A webhook receiver that records every request.
#[derive(Clone)]
struct Receiver {
    base: String,
    state: Arc<ReceiverState>,
}

impl Receiver {
    async fn start(mode: Mode) -> Receiver {
        let state = Arc::new(ReceiverState {
            mode,
            requests: AtomicUsize::new(0),
            hits: Mutex::new(Vec::new()),
            seen: watch::Sender::new(0),
        });
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { base, state }
    }

    fn hook(&self, path_and_query: &str, format: WebhookFormat, name: &str) -> WebhookConfig {
        let url = format!("{}{path_and_query}", self.base).parse().unwrap();
        WebhookConfig::new(url, format, Some(name.to_string())).unwrap()
    }

    fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().unwrap().clone()
    }

    fn bodies(&self, path: &str) -> Vec<Value> {
        self.hits()
            .into_iter()
            .filter(|h| h.path == path)
            .map(|h| h.body)
            .collect()
    }

    /// Waits until at least `n` requests arrived.
    async fn wait_for(&self, n: usize) {
        let mut rx = self.state.seen.subscribe();
        tokio::time::timeout(DEADLINE, rx.wait_for(|&k| k >= n))
            .await
            .unwrap_or_else(|_| panic!("{n} requests did not arrive in time"))
            .unwrap();
    }
}

async fn handle(State(st): State<Arc<ReceiverState>>, uri: Uri, body: Bytes) -> Response {
    let n = st.requests.fetch_add(1, Ordering::SeqCst);
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    st.hits.lock().unwrap().push(Hit {
        path: uri.path().to_string(),
        body,
    });
    st.seen.send_modify(|k| *k += 1);
    match st.mode {
        Mode::Script(answers) => match answers.get(n) {
            Some(&(status, body)) => (StatusCode::from_u16(status).unwrap(), body).into_response(),
            None => (StatusCode::OK, r#"{"errcode":0,"errmsg":"ok"}"#).into_response(),
        },
        Mode::Always(status) => (StatusCode::from_u16(status).unwrap(), "broken").into_response(),
        Mode::Hang => std::future::pending().await,
    }
}

fn fast() -> NotifierOptions {
    NotifierOptions {
        queue_capacity: 16,
        max_attempts: 3,
        backoff: Backoff::new(Duration::from_millis(10), Duration::from_millis(40)),
        request_timeout: Duration::from_millis(500),
        max_instances: 50,
        seed: 7,
    }
}

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn web1() -> InstanceRef {
    InstanceRef {
        instance_id: "i-bp1aaaa".into(),
        instance_name: "web-1".into(),
        region: "cn-hangzhou".into(),
    }
}

fn unnamed() -> InstanceRef {
    InstanceRef {
        instance_id: "i-bp1bbbb".into(),
        instance_name: String::new(),
        region: "cn-shanghai".into(),
    }
}

/// Each event kind, with the exact generic, DingTalk and Slack bodies it must produce.
fn cases() -> Vec<(Notification, Value, Value, Value)> {
    let scheduled = Notification::Scheduled {
        policy: "stale-dev".into(),
        releases: vec![web1(), unnamed()],
        at: t("2024-05-07T02:00:00Z"),
        saving: None,
        paused: None,
    };
    let released = Notification::Released {
        policy: "stale-dev".into(),
        releases: vec![
            ReleasedInstance {
                instance: web1(),
                request_id: Some("RID-1".into()),
                at: t("2024-05-07T02:00:05Z"),
                saving: None,
            },
            ReleasedInstance {
                instance: unnamed(),
                request_id: None,
                at: t("2024-05-07T02:00:06Z"),
                saving: None,
            },
        ],
    };
    let failed = Notification::Failed {
        policy: "stale-dev".into(),
        releases: vec![FailedRelease {
            instance: web1(),
            code: "IncorrectInstanceStatus".into(),
            message: "The current status of the resource does not support this operation.".into(),
            request_id: Some("RID-2".into()),
            at: t("2024-05-07T02:00:07Z"),
        }],
    };
    let cancelled = Notification::Cancelled {
        policy: "stale-dev".into(),
        releases: vec![CancelledRelease {
            instance: web1(),
            reason: "the policy is now dry_run: it releases nothing".into(),
        }],
    };
    let refused = Notification::Refused {
        policy: "stale-dev".into(),
        count: 120,
        limit: 50,
    };
    let load_failed = Notification::PolicyLoadFailed {
        problems: "policies/dev.yaml:3:5: unknown key `gracee`\npolicies/qa.yaml:1:1: empty file\n"
            .into(),
    };
    vec![
        (
            scheduled,
            json!({
                "source": "ecs-janitor",
                "title": "ecs-janitor: stale-dev: 2 scheduled",
                "text": "ecs-janitor: stale-dev: 2 scheduled\n\nstale-dev: 2 instances will be released at 2024-05-07 02:00:00 UTC (grace period started)\n\n- i-bp1aaaa (web-1) in cn-hangzhou\n- i-bp1bbbb in cn-shanghai",
                "events": [{
                    "kind": "scheduled", "policy": "stale-dev", "at": "2024-05-07T02:00:00.000Z",
                    "count": 2, "omitted": 0,
                    "instances": [
                        {"instance_id": "i-bp1aaaa", "instance_name": "web-1", "region": "cn-hangzhou"},
                        {"instance_id": "i-bp1bbbb", "instance_name": "", "region": "cn-shanghai"},
                    ],
                }],
            }),
            json!({
                "msgtype": "markdown",
                "markdown": {
                    "title": "ecs-janitor: stale-dev: 2 scheduled",
                    "text": "### ecs-janitor: stale-dev: 2 scheduled\n\n**stale-dev**: 2 instances will be released at 2024-05-07 02:00:00 UTC (grace period started)\n\n- i-bp1aaaa (web-1) in cn-hangzhou\n- i-bp1bbbb in cn-shanghai",
                },
            }),
            json!({
                "text": "*ecs-janitor: stale-dev: 2 scheduled*\n\n*stale-dev*: 2 instances will be released at 2024-05-07 02:00:00 UTC (grace period started)\n\n• i-bp1aaaa (web-1) in cn-hangzhou\n• i-bp1bbbb in cn-shanghai",
            }),
        ),
        (
            released,
            json!({
                "source": "ecs-janitor",
                "title": "ecs-janitor: stale-dev: 2 released",
                "text": "ecs-janitor: stale-dev: 2 released\n\nstale-dev: 2 instances released\n\n- i-bp1aaaa (web-1) in cn-hangzhou at 2024-05-07 02:00:05 UTC, RequestId RID-1\n- i-bp1bbbb in cn-shanghai at 2024-05-07 02:00:06 UTC",
                "events": [{
                    "kind": "released", "policy": "stale-dev", "count": 2, "omitted": 0,
                    "instances": [
                        {"instance_id": "i-bp1aaaa", "instance_name": "web-1", "region": "cn-hangzhou",
                         "request_id": "RID-1", "at": "2024-05-07T02:00:05.000Z"},
                        {"instance_id": "i-bp1bbbb", "instance_name": "", "region": "cn-shanghai",
                         "request_id": null, "at": "2024-05-07T02:00:06.000Z"},
                    ],
                }],
            }),
            json!({
                "msgtype": "markdown",
                "markdown": {
                    "title": "ecs-janitor: stale-dev: 2 released",
                    "text": "### ecs-janitor: stale-dev: 2 released\n\n**stale-dev**: 2 instances released\n\n- i-bp1aaaa (web-1) in cn-hangzhou at 2024-05-07 02:00:05 UTC, RequestId RID-1\n- i-bp1bbbb in cn-shanghai at 2024-05-07 02:00:06 UTC",
                },
            }),
            json!({
                "text": "*ecs-janitor: stale-dev: 2 released*\n\n*stale-dev*: 2 instances released\n\n• i-bp1aaaa (web-1) in cn-hangzhou at 2024-05-07 02:00:05 UTC, RequestId RID-1\n• i-bp1bbbb in cn-shanghai at 2024-05-07 02:00:06 UTC",
            }),
        ),
        (
            failed,
            json!({
                "source": "ecs-janitor",
                "title": "ecs-janitor: stale-dev: 1 failed",
                "text": "ecs-janitor: stale-dev: 1 failed\n\nstale-dev: 1 release failed\n\n- i-bp1aaaa (web-1) in cn-hangzhou at 2024-05-07 02:00:07 UTC: IncorrectInstanceStatus The current status of the resource does not support this operation. (RequestId RID-2)",
                "events": [{
                    "kind": "failed", "policy": "stale-dev", "count": 1, "omitted": 0,
                    "instances": [
                        {"instance_id": "i-bp1aaaa", "instance_name": "web-1", "region": "cn-hangzhou",
                         "code": "IncorrectInstanceStatus",
                         "message": "The current status of the resource does not support this operation.",
                         "request_id": "RID-2", "at": "2024-05-07T02:00:07.000Z"},
                    ],
                }],
            }),
            json!({
                "msgtype": "markdown",
                "markdown": {
                    "title": "ecs-janitor: stale-dev: 1 failed",
                    "text": "### ecs-janitor: stale-dev: 1 failed\n\n**stale-dev**: 1 release failed\n\n- i-bp1aaaa (web-1) in cn-hangzhou at 2024-05-07 02:00:07 UTC: `IncorrectInstanceStatus` The current status of the resource does not support this operation. (RequestId RID-2)",
                },
            }),
            json!({
                "text": "*ecs-janitor: stale-dev: 1 failed*\n\n*stale-dev*: 1 release failed\n\n• i-bp1aaaa (web-1) in cn-hangzhou at 2024-05-07 02:00:07 UTC: `IncorrectInstanceStatus` The current status of the resource does not support this operation. (RequestId RID-2)",
            }),
        ),
        (
            cancelled,
            json!({
                "source": "ecs-janitor",
                "title": "ecs-janitor: stale-dev: 1 no longer scheduled",
                "text": "ecs-janitor: stale-dev: 1 no longer scheduled\n\nstale-dev: 1 instance no longer to be released (announced before, now cancelled)\n\n- i-bp1aaaa (web-1) in cn-hangzhou: the policy is now dry_run: it releases nothing",
                "events": [{
                    "kind": "cancelled", "policy": "stale-dev", "count": 1, "omitted": 0,
                    "instances": [
                        {"instance_id": "i-bp1aaaa", "instance_name": "web-1", "region": "cn-hangzhou",
                         "reason": "the policy is now dry_run: it releases nothing"},
                    ],
                }],
            }),
            json!({
                "msgtype": "markdown",
                "markdown": {
                    "title": "ecs-janitor: stale-dev: 1 no longer scheduled",
                    "text": "### ecs-janitor: stale-dev: 1 no longer scheduled\n\n**stale-dev**: 1 instance no longer to be released (announced before, now cancelled)\n\n- i-bp1aaaa (web-1) in cn-hangzhou: the policy is now dry_run: it releases nothing",
                },
            }),
            json!({
                "text": "*ecs-janitor: stale-dev: 1 no longer scheduled*\n\n*stale-dev*: 1 instance no longer to be released (announced before, now cancelled)\n\n• i-bp1aaaa (web-1) in cn-hangzhou: the policy is now dry_run: it releases nothing",
            }),
        ),
        (
            refused,
            json!({
                "source": "ecs-janitor",
                "title": "ecs-janitor: stale-dev: refused",
                "text": "ecs-janitor: stale-dev: refused\n\nstale-dev: refused, 120 releases would exceed limits.max_releases_per_run 50; nothing was released. Raise the limit if this is intended, or narrow the policy.",
                "events": [{"kind": "refused", "policy": "stale-dev", "count": 120, "limit": 50}],
            }),
            json!({
                "msgtype": "markdown",
                "markdown": {
                    "title": "ecs-janitor: stale-dev: refused",
                    "text": "### ecs-janitor: stale-dev: refused\n\n**stale-dev**: refused, 120 releases would exceed limits.max_releases_per_run 50; nothing was released. Raise the limit if this is intended, or narrow the policy.",
                },
            }),
            json!({
                "text": "*ecs-janitor: stale-dev: refused*\n\n*stale-dev*: refused, 120 releases would exceed limits.max_releases_per_run 50; nothing was released. Raise the limit if this is intended, or narrow the policy.",
            }),
        ),
        (
            load_failed,
            json!({
                "source": "ecs-janitor",
                "title": "ecs-janitor: policy files failed to load",
                "text": "ecs-janitor: policy files failed to load\n\nPolicy files failed to load:\n\npolicies/dev.yaml:3:5: unknown key `gracee`\npolicies/qa.yaml:1:1: empty file",
                "events": [{
                    "kind": "policy_load_failed",
                    "problems": "policies/dev.yaml:3:5: unknown key `gracee`\npolicies/qa.yaml:1:1: empty file",
                }],
            }),
            json!({
                "msgtype": "markdown",
                "markdown": {
                    "title": "ecs-janitor: policy files failed to load",
                    "text": "### ecs-janitor: policy files failed to load\n\n**Policy files failed to load:**\n\n> policies/dev.yaml:3:5: unknown key `gracee`\n> policies/qa.yaml:1:1: empty file",
                },
            }),
            json!({
                "text": "*ecs-janitor: policy files failed to load*\n\n*Policy files failed to load:*\n\n```\npolicies/dev.yaml:3:5: unknown key `gracee`\npolicies/qa.yaml:1:1: empty file\n```",
            }),
        ),
    ]
}

#[tokio::test]
async fn each_format_sends_the_exact_message_for_each_event() {
    let rx = Receiver::start(Mode::Script(&[])).await;
    let notifier = Notifier::start(
        vec![
            rx.hook("/generic", WebhookFormat::Generic, "programs"),
            rx.hook(
                "/robot/send?access_token=T0KEN",
                WebhookFormat::DingTalk,
                "ops",
            ),
            rx.hook("/services/T0/B0/XYZ", WebhookFormat::Slack, "slack"),
        ],
        fast(),
    )
    .unwrap();
    let cases = cases();
    for (event, ..) in &cases {
        notifier.send_batch(vec![event.clone()]);
    }
    assert!(notifier.flush(DEADLINE).await);
    let (generic, dingtalk, slack) = (
        rx.bodies("/generic"),
        rx.bodies("/robot/send"),
        rx.bodies("/services/T0/B0/XYZ"),
    );
    assert_eq!(generic.len(), cases.len());
    for (i, (event, g, d, s)) in cases.iter().enumerate() {
        assert_eq!(generic[i], *g, "generic body for {event:?}");
        assert_eq!(dingtalk[i], *d, "DingTalk body for {event:?}");
        assert_eq!(slack[i], *s, "Slack body for {event:?}");
    }
    let stats = notifier.stats();
    let sent = 3 * cases.len() as u64;
    assert_eq!(
        (stats.delivered, stats.gave_up, stats.attempts),
        (sent, 0, sent)
    );
}

fn many(n: usize) -> Vec<InstanceRef> {
    (0..n)
        .map(|i| InstanceRef {
            instance_id: format!("i-{i:04}"),
            instance_name: format!("node-{i}"),
            region: "cn-beijing".into(),
        })
        .collect()
}

#[tokio::test]
async fn a_batch_is_one_message_and_long_lists_are_capped() {
    let rx = Receiver::start(Mode::Script(&[])).await;
    let notifier = Notifier::start(
        vec![
            rx.hook("/generic", WebhookFormat::Generic, "g"),
            rx.hook("/slack", WebhookFormat::Slack, "s"),
        ],
        fast(),
    )
    .unwrap();
    let at = t("2024-05-07T02:00:00Z");
    notifier.send_batch(vec![
        Notification::Scheduled {
            policy: "stale-dev".into(),
            releases: many(120),
            at,
            saving: None,
            paused: None,
        },
        Notification::Released {
            policy: "stale-dev".into(),
            releases: many(3)
                .into_iter()
                .map(|instance| ReleasedInstance {
                    instance,
                    request_id: Some("RID".into()),
                    at,
                    saving: None,
                })
                .collect(),
        },
    ]);
    assert!(notifier.flush(DEADLINE).await);
    assert_eq!(
        rx.hits().len(),
        2,
        "one request per webhook for the whole batch"
    );

    let g = &rx.bodies("/generic")[0];
    assert_eq!(
        g["title"],
        "ecs-janitor: stale-dev: 120 scheduled, 3 released"
    );
    let scheduled = &g["events"][0];
    assert_eq!(scheduled["count"], 120);
    assert_eq!(scheduled["omitted"], 70);
    assert_eq!(scheduled["instances"].as_array().unwrap().len(), 50);
    assert_eq!(scheduled["instances"][49]["instance_id"], "i-0049");
    assert_eq!(g["events"][1]["count"], 3);

    let text = rx.bodies("/slack")[0]["text"].as_str().unwrap().to_string();
    assert!(
        text.contains(
            "• i-0049 (node-49) in cn-beijing\n• and 70 more\n\n*stale-dev*: 3 instances released"
        ),
        "{text}"
    );
    assert!(!text.contains("i-0050"), "{text}");
}

#[tokio::test]
async fn failures_are_retried_until_delivered() {
    let rx = Receiver::start(Mode::Script(&[(500, "oops"), (503, "busy")])).await;
    let notifier =
        Notifier::start(vec![rx.hook("/h", WebhookFormat::Generic, "g")], fast()).unwrap();
    notifier.send_batch(vec![Notification::Refused {
        policy: "p".into(),
        count: 9,
        limit: 3,
    }]);
    assert!(notifier.flush(DEADLINE).await);
    let hits = rx.hits();
    assert_eq!(hits.len(), 3);
    assert!(
        hits.iter().all(|h| h.body == hits[0].body),
        "retries send the same message"
    );
    let stats = notifier.stats();
    assert_eq!(
        (
            stats.delivered,
            stats.gave_up,
            stats.attempts,
            stats.pending
        ),
        (1, 0, 3, 0)
    );
}

#[tokio::test]
async fn permanent_errors_are_not_retried_and_dingtalk_codes_count() {
    let forbidden = Receiver::start(Mode::Always(403)).await;
    let keyword = Receiver::start(Mode::Script(&[(
        200,
        r#"{"errcode":310000,"errmsg":"keywords not in content"}"#,
    )]))
    .await;
    let too_fast = Receiver::start(Mode::Script(&[(
        200,
        r#"{"errcode":130101,"errmsg":"send too fast"}"#,
    )]))
    .await;
    let notifier = Notifier::start(
        vec![
            forbidden.hook("/h", WebhookFormat::Slack, "forbidden"),
            keyword.hook(
                "/robot/send?access_token=x",
                WebhookFormat::DingTalk,
                "keyword",
            ),
            too_fast.hook(
                "/robot/send?access_token=y",
                WebhookFormat::DingTalk,
                "too-fast",
            ),
        ],
        fast(),
    )
    .unwrap();
    notifier.send_batch(vec![Notification::PolicyLoadFailed {
        problems: "x".into(),
    }]);
    assert!(notifier.flush(DEADLINE).await);
    assert_eq!(forbidden.hits().len(), 1, "403 is not retried");
    assert_eq!(
        keyword.hits().len(),
        1,
        "a DingTalk error code other than 'too fast' is final"
    );
    assert_eq!(too_fast.hits().len(), 2, "'send too fast' is retried");
    let stats = notifier.stats();
    assert_eq!((stats.delivered, stats.gave_up), (1, 2));
}

#[tokio::test]
async fn a_hung_or_broken_webhook_never_blocks_and_gives_up() {
    let hung = Receiver::start(Mode::Hang).await;
    let broken = Receiver::start(Mode::Always(500)).await;
    let healthy = Receiver::start(Mode::Script(&[])).await;
    let options = NotifierOptions {
        request_timeout: Duration::from_millis(150),
        ..fast()
    };
    let notifier = Notifier::start(
        vec![
            hung.hook("/h", WebhookFormat::Generic, "hung"),
            broken.hook("/h", WebhookFormat::Generic, "broken"),
            healthy.hook("/h", WebhookFormat::Generic, "healthy"),
        ],
        options,
    )
    .unwrap();
    let event = Notification::Refused {
        policy: "p".into(),
        count: 9,
        limit: 3,
    };
    let started = Instant::now();
    for _ in 0..5 {
        notifier.send_batch(vec![event.clone()]);
    }
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "send_batch waited {:?}",
        started.elapsed()
    );
    // The healthy webhook hears every batch while the others are still stuck on the first.
    healthy.wait_for(5).await;
    assert!(notifier.stats().pending > 0);

    assert!(notifier.flush(DEADLINE).await);
    assert_eq!(
        hung.hits().len(),
        15,
        "5 batches x 3 attempts, each timed out"
    );
    assert_eq!(broken.hits().len(), 15);
    let stats = notifier.stats();
    assert_eq!((stats.delivered, stats.gave_up, stats.dropped), (5, 10, 0));
}

#[tokio::test]
async fn a_full_queue_drops_the_newest_batch_with_a_warning() {
    let (logs, _guard) = capture_logs();
    let hung = Receiver::start(Mode::Hang).await;
    let options = NotifierOptions {
        queue_capacity: 1,
        max_attempts: 1,
        request_timeout: Duration::from_millis(300),
        ..fast()
    };
    let notifier = Notifier::start(
        vec![hung.hook("/h", WebhookFormat::Generic, "hung")],
        options,
    )
    .unwrap();
    let batch = |count| {
        vec![Notification::Refused {
            policy: "p".into(),
            count,
            limit: 1,
        }]
    };
    // This test runs on one thread, so the delivery task cannot take the first batch off the
    // queue before the next two arrive: one fits, two are dropped.
    notifier.send_batch(batch(1));
    notifier.send_batch(batch(2));
    notifier.send_batch(batch(3));
    assert_eq!(notifier.stats().dropped, 2);
    assert!(notifier.flush(DEADLINE).await);
    let hits = hung.hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(
        hits[0].body["events"][0]["count"], 1,
        "the oldest batch is the one kept"
    );
    let logs = logs.text();
    assert_eq!(
        logs.matches("dropping a notification batch").count(),
        2,
        "{logs}"
    );
}

#[tokio::test]
async fn url_secrets_stay_out_of_logs_errors_and_debug() {
    let (logs, _guard) = capture_logs();
    let broken = Receiver::start(Mode::Always(500)).await;
    // Echoes the request's URL back, as some error pages do.
    let echo = Receiver::start(Mode::Script(&[(
        400,
        "no such hook: /services/T0/B0/SECRETPATH?access_token=SECRETTOKEN",
    )]))
    .await;
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let refused: WebhookConfig = serde_saphyr::from_str(&format!(
        "url: http://127.0.0.1:{closed_port}/robot/send?access_token=SECRETTOKEN\nformat: dingtalk\nname: refused\n"
    ))
    .unwrap();
    let hooks = vec![
        broken.hook(
            "/robot/send?access_token=SECRETTOKEN",
            WebhookFormat::DingTalk,
            "broken",
        ),
        echo.hook(
            "/services/T0/B0/SECRETPATH?access_token=SECRETTOKEN",
            WebhookFormat::Slack,
            "echo",
        ),
        refused,
    ];
    for hook in &hooks {
        let debug = format!("{hook:?}");
        assert!(
            !debug.contains("SECRET") && debug.contains("127.0.0.1"),
            "{debug}"
        );
    }
    let notifier = Notifier::start(hooks, fast()).unwrap();
    assert!(!format!("{notifier:?}").contains("SECRET"));
    notifier.send_batch(vec![Notification::PolicyLoadFailed {
        problems: "x".into(),
    }]);
    assert!(notifier.flush(DEADLINE).await);
    assert_eq!(notifier.stats().gave_up, 3);

    let logs = logs.text();
    assert!(!logs.contains("SECRET"), "a secret was logged:\n{logs}");
    for expected in [
        "broken (http://127.0.0.1:",
        "HTTP 500",
        "echo (http://127.0.0.1:",
        "HTTP 400 Bad Request: no such hook: …",
        &format!("refused (http://127.0.0.1:{closed_port}/…)"),
        "after 3 attempts",
    ] {
        assert!(logs.contains(expected), "logs lack {expected:?}:\n{logs}");
    }
}

#[test]
fn webhooks_come_from_yaml() {
    let hooks: Vec<WebhookConfig> = serde_saphyr::from_str(
        "- url: https://oapi.dingtalk.com/robot/send?access_token=SECRET1\n  format: dingtalk\n  name: ops\n\
         - url: https://hooks.slack.com/services/T0/B0/SECRET2\n  format: slack\n\
         - url: https://example.com/\n",
    )
    .unwrap();
    assert_eq!(
        hooks.iter().map(|h| h.format).collect::<Vec<_>>(),
        [
            WebhookFormat::DingTalk,
            WebhookFormat::Slack,
            WebhookFormat::Generic
        ]
    );
    assert_eq!(hooks[0].url.query(), Some("access_token=SECRET1"));
    assert_eq!(hooks[0].label(), "ops (https://oapi.dingtalk.com/…)");
    assert_eq!(hooks[2].label(), "https://example.com");
    let debug = format!("{hooks:?}");
    assert!(!debug.contains("SECRET"), "{debug}");
    assert!(debug.contains("https://hooks.slack.com/…"), "{debug}");

    let err = |yaml: &str| {
        serde_saphyr::from_str::<WebhookConfig>(yaml)
            .unwrap_err()
            .to_string()
    };
    let e = err("url: https://example.com/\nformat: teams\n");
    assert!(e.contains("teams") && e.contains("dingtalk"), "{e}");
    let e = err("url: ftp://example.com/SECRET\n");
    assert!(e.contains("only http and https"), "{e}");
    let e = err("url: SECRET-not-a-url\n");
    assert!(e.contains("not a valid URL"), "{e}");
    let e = err("url: https://example.com/\nfromat: slack\n");
    assert!(e.contains("fromat"), "{e}");
}

/// Answers 429 with `Retry-After: 1` once, then 200, recording when each request came.
#[tokio::test]
async fn a_retry_after_is_waited_out_before_the_next_attempt() {
    let times: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let t = times.clone();
    let app = Router::new().fallback(move || {
        let t = t.clone();
        async move {
            let mut v = t.lock().unwrap();
            v.push(Instant::now());
            if v.len() == 1 {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "1")],
                    "slow down",
                )
                    .into_response()
            } else {
                (StatusCode::OK, "ok").into_response()
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/h", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let hook = WebhookConfig::new(url.parse().unwrap(), WebhookFormat::Generic, None).unwrap();
    // The backoff alone would retry within 10 ms; its cap leaves room for the server's 1 s.
    let options = NotifierOptions {
        backoff: Backoff::new(Duration::from_millis(1), Duration::from_secs(5)),
        ..fast()
    };
    let notifier = Notifier::start(vec![hook], options).unwrap();
    notifier.send_batch(vec![Notification::Refused {
        policy: "p".into(),
        count: 9,
        limit: 3,
    }]);
    assert!(notifier.flush(DEADLINE).await);
    let v = times.lock().unwrap().clone();
    assert_eq!(v.len(), 2, "one refusal, one delivery");
    assert!(
        v[1] - v[0] >= Duration::from_secs(1),
        "retried after {:?}, before the Retry-After of 1 s",
        v[1] - v[0]
    );
}

/// A signed DingTalk robot gets `timestamp` and `sign` computed from its secret; the secret
/// itself never travels and never shows in Debug output.
#[tokio::test]
async fn a_dingtalk_robot_with_a_secret_gets_signed_messages() {
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let g = got.clone();
    let app = Router::new().fallback(move |uri: Uri| {
        let g = g.clone();
        async move {
            g.lock()
                .unwrap()
                .push(uri.query().unwrap_or_default().to_string());
            (StatusCode::OK, r#"{"errcode":0,"errmsg":"ok"}"#)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/robot/send?access_token=tok123",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let secret = "SECsigning-secret-0123456789";
    let hooks: Vec<WebhookConfig> = serde_saphyr::from_str::<Vec<serde_json::Value>>(&format!(
        "- {{url: \"{url}\", format: dingtalk, secret: {secret}}}\n"
    ))
    .unwrap()
    .into_iter()
    .map(|v| serde_json::from_value(v).unwrap())
    .collect();
    assert!(!format!("{:?}", hooks[0]).contains(secret));
    let before = Utc::now().timestamp_millis();
    let notifier = Notifier::start(hooks, fast()).unwrap();
    notifier.send_batch(vec![Notification::Refused {
        policy: "p".into(),
        count: 9,
        limit: 3,
    }]);
    assert!(notifier.flush(DEADLINE).await);
    let after = Utc::now().timestamp_millis();
    let query = got.lock().unwrap()[0].clone();
    assert!(!query.contains(secret), "{query}");
    let pairs: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
    assert_eq!(pairs["access_token"], "tok123");
    let ts: i64 = pairs["timestamp"].parse().unwrap();
    assert!(
        (before..=after).contains(&ts),
        "{ts} not in [{before}, {after}]"
    );
    // The signature, computed here from DingTalk's description of it.
    use base64::Engine;
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{ts}\n{secret}").as_bytes());
    let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(pairs["sign"], want);

    // A secret on a format that has no signing is a configuration error, not silently ignored.
    let e = serde_json::from_value::<WebhookConfig>(serde_json::json!({
        "url": "https://hooks.slack.com/services/T/B/X", "format": "slack", "secret": "SECx"
    }))
    .unwrap_err()
    .to_string();
    assert!(e.contains("secret"), "{e}");
}

fn saving(basis: &str, monthly: Option<i64>, renewal: Option<i64>) -> Option<ReleaseSaving> {
    Some(ReleaseSaving {
        basis: basis.into(),
        monthly: monthly.map(|v| Money::new(v, "CNY")),
        renewal_avoided: renewal.map(|v| Money::new(v, "CNY")),
    })
}

#[tokio::test]
async fn a_completed_release_says_what_it_saves_and_the_batch_its_total() {
    let rx = Receiver::start(Mode::Script(&[])).await;
    let notifier = Notifier::start(
        vec![
            rx.hook("/generic", WebhookFormat::Generic, "g"),
            rx.hook("/slack", WebhookFormat::Slack, "s"),
        ],
        fast(),
    )
    .unwrap();
    let at = t("2024-05-07T02:00:05Z");
    let released = |instance: InstanceRef, saving| ReleasedInstance {
        instance,
        request_id: Some("RID-1".into()),
        at,
        saving,
    };
    let mut sub = unnamed();
    sub.instance_id = "i-bp1sub".into();
    let mut odd = unnamed();
    odd.instance_id = "i-bp1odd".into();
    notifier.send_batch(vec![Notification::Released {
        policy: "stale-dev".into(),
        releases: vec![
            released(web1(), saving("compute_and_disks", Some(39_040), None)),
            released(unnamed(), saving("disks_only", Some(4_000), None)),
            released(sub, saving("renewal_avoided", Some(0), Some(50_282))),
            released(odd, saving("compute_and_disks", None, None)),
        ],
    }]);
    assert!(notifier.flush(DEADLINE).await);

    let g = &rx.bodies("/generic")[0];
    let text = g["text"].as_str().unwrap();
    for want in [
        "stale-dev: 4 instances released, saving ≈ ¥430/month at list prices (1 unknown); renewal avoided ≈ ¥503/month",
        "- i-bp1aaaa (web-1) in cn-hangzhou at 2024-05-07 02:00:05 UTC, RequestId RID-1; saves ≈ ¥390.40/month",
        "- i-bp1bbbb in cn-shanghai at 2024-05-07 02:00:05 UTC, RequestId RID-1; saves ≈ ¥40.00/month",
        "- i-bp1sub in cn-shanghai at 2024-05-07 02:00:05 UTC, RequestId RID-1; saves ≈ ¥0.00/month, renewal avoided ≈ ¥502.82/month",
        "- i-bp1odd in cn-shanghai at 2024-05-07 02:00:05 UTC, RequestId RID-1; saving unknown",
    ] {
        assert!(text.contains(want), "{want:?} in:\n{text}");
    }
    let event = &g["events"][0];
    assert_eq!(
        event["saves"],
        json!({
            "monthly": [{"amount": "430.40", "currency": "CNY"}],
            "renewal_avoided": [{"amount": "502.82", "currency": "CNY"}],
            "unknown": 1,
            "list_price": true,
        })
    );
    assert_eq!(
        event["instances"][0]["saving"],
        json!({"basis": "compute_and_disks", "monthly": {"amount": "390.40", "currency": "CNY"}, "renewal_avoided": null})
    );
    assert!(
        event["instances"][3]["saving"]["monthly"].is_null(),
        "unknown is null, never 0"
    );

    let slack = rx.bodies("/slack")[0]["text"].as_str().unwrap().to_string();
    assert!(
        slack.contains(
            "*stale-dev*: 4 instances released, saving ≈ ¥430/month at list prices (1 unknown)"
        ),
        "{slack}"
    );
}
