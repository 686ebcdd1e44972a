//! The admin server as an operator uses it: health and readiness, metrics, the JSON API with its
//! bearer token, the pause switch every worker honours, and the status page, loaded in headless
//! Chromium (the screenshot is kept at target/status-page.png).

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ecs_janitor::app::App;
use ecs_janitor::backoff::Backoff;
use ecs_janitor::context::Extras;
use ecs_janitor::ecs::Secret;
use ecs_janitor::metrics::Metrics;
use ecs_janitor::policy::{self};
use ecs_janitor::server::{self, AdminContext, Health};
use ecs_janitor::sim::{Faults, SimHandle};
use ecs_janitor::worker::WorkerConfig;
use tokio_util::sync::CancellationToken;

const POLICIES: &str = r#"
name: ci-now
schedule: "0 */5 * * * *"
regions: [cn-hangzhou]
select:
  tags: {purpose: ci}
  status: Stopped
  instance_ids: [i-0, i-1, i-2, i-3]
release:
  allow_security_locked: true
---
name: ci-later
schedule: "0 0 3 * * *"
regions: [cn-hangzhou]
select:
  tags: {purpose: ci}
  instance_ids: [i-4, i-5]
release:
  grace: 2h
"#;

struct Admin {
    base: String,
    app: App,
    health: Arc<Health>,
    h: SimHandle,
    _db: common::TestDb,
    _stop: CancellationToken,
}

/// A store with history (releases, a failure, releases waiting out their grace) and the admin
/// server over it on 127.0.0.1.
async fn admin(token: Option<&str>) -> Admin {
    admin_with(server::AdminTokens::new(token.map(Secret::new), Vec::new())).await
}

/// [`admin`] with these tokens.
async fn admin_with(tokens: server::AdminTokens) -> Admin {
    let mut fleet = common::ci_fleet(6);
    fleet[2].lock_reasons = vec!["security".into()];
    let h = common::start_sim(fleet, Faults::default(), 11).await;
    // ECS would release the locked one (with its disks); the failure is scripted: the batch of
    // 4, then the halves of 2 and 1 that name i-2.
    common::refuse_every_call_naming(&h, "i-2", 3);
    let db = common::sqlite().await;
    let metrics = Metrics::new();
    let client = common::client(&h).with_observer(metrics.call_observer());
    let policies = policy::load_str("p.yaml", POLICIES).unwrap().policies;
    let app = common::Pipeline {
        cfg: WorkerConfig {
            backoff: Backoff::new(Duration::from_millis(5), Duration::from_millis(50)),
            ..WorkerConfig::default()
        },
        extras: Extras {
            metrics: metrics.clone(),
            ..Extras::default()
        },
        ..common::Pipeline::new(&db.store, client, policies)
    }
    .build();
    app.apply(None, &Default::default(), CancellationToken::new())
        .await
        .unwrap();
    let health = Arc::new(Health::default());
    health.policies_loaded.store(true, Ordering::SeqCst);
    let router = server::router(AdminContext {
        ctx: app.ctx.clone(),
        health: health.clone(),
        admin_tokens: tokens,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await;
    });
    Admin {
        base,
        app,
        health,
        h,
        _db: db,
        _stop: stop,
    }
}

impl Admin {
    /// The id of the fixture's one failed release.
    async fn failed_release(&self) -> ecs_janitor::store::ReleaseId {
        let failed = self
            .app
            .ctx
            .store
            .list_releases(&ecs_janitor::store::ReleaseFilter {
                state: Some("failed".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        failed[0].id
    }
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn post(url: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new().post(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let a = admin(None).await;
    assert_eq!(get(&format!("{}/healthz", a.base)).await.0, 200);
    assert_eq!(get(&format!("{}/readyz", a.base)).await.0, 200);
    a.health.policies_loaded.store(false, Ordering::SeqCst);
    *a.health.last_load_error.lock().unwrap() = Some("p.yaml:3:1: bad".into());
    let (status, body) = get(&format!("{}/readyz", a.base)).await;
    assert_eq!(status, 503);
    assert!(
        body.contains("policies: not loaded") && body.contains("p.yaml:3:1"),
        "{body}"
    );

    let (status, m) = get(&format!("{}/metrics", a.base)).await;
    assert_eq!(status, 200);
    for line in [
        "janitor_releases{policy=\"ci-now\",state=\"succeeded\"} 3",
        "janitor_releases{policy=\"ci-now\",state=\"failed\"} 1",
        "janitor_releases{policy=\"ci-later\",state=\"pending\"} 2",
        "janitor_queue_depth 2",
        "janitor_oldest_due_release_age_seconds 0.0",
        "janitor_ecs_calls_total{action=\"DeleteInstances\",code=\"OK\"}",
        "janitor_ecs_calls_total{action=\"DeleteInstances\",code=\"InstanceLockedForSecurity\"}",
        "janitor_policy_last_success_timestamp_seconds{policy=\"ci-now\"}",
        "janitor_paused 0",
        "janitor_policy_load_errors_total 0",
        "janitor_release_retries_total 0",
    ] {
        assert!(m.contains(line), "{line} in\n{m}");
    }
    // The savings series carry what the store holds, per policy and currency.
    let by_policy = a.app.ctx.store.savings_by_policy().await.unwrap();
    let now_p = by_policy.iter().find(|p| p.policy == "ci-now").unwrap();
    let later = by_policy.iter().find(|p| p.policy == "ci-later").unwrap();
    assert!(
        now_p.released_minor > 0 && later.pending_minor > 0,
        "{by_policy:?}"
    );
    for line in [
        format!(
            "janitor_released_monthly_savings_total{{policy=\"ci-now\",currency=\"CNY\"}} {}",
            now_p.released_minor as f64 / 100.0
        ),
        format!(
            "janitor_pending_monthly_savings{{policy=\"ci-later\",currency=\"CNY\"}} {}",
            later.pending_minor as f64 / 100.0
        ),
    ] {
        assert!(m.contains(&line), "{line} in\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_lists_and_its_mutations_need_the_token() {
    let a = admin(Some("s3cret-admin")).await;
    let (status, body) = get(&format!("{}/api/v1/releases?state=failed", a.base)).await;
    assert_eq!(status, 200);
    let rows: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["last_code"], "InstanceLockedForSecurity");
    let failed_id = rows[0]["id"].as_i64().unwrap();

    let (_, body) = get(&format!("{}/api/v1/policies", a.base)).await;
    let ps: serde_json::Value = serde_json::from_str(&body).unwrap();
    let now_policy = ps
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "ci-now")
        .unwrap();
    assert!(now_policy["next_run"].is_string());
    assert_eq!(now_policy["last_run"]["outcome"], "ok");
    assert_eq!(now_policy["releases"]["succeeded"], 3);

    let retry = format!("{}/api/v1/releases/{failed_id}/retry", a.base);
    assert_eq!(post(&retry, None).await.0, 401);
    assert_eq!(post(&retry, Some("wrong")).await.0, 401);
    let (status, row) = post(&retry, Some("s3cret-admin")).await;
    assert_eq!((status, row["state"].as_str()), (200, Some("pending")));
    let (status, body) = post(&retry, Some("s3cret-admin")).await;
    assert_eq!(status, 409, "{body}");
    let (status, row) = post(
        &format!("{}/api/v1/releases/{failed_id}/cancel", a.base),
        Some("s3cret-admin"),
    )
    .await;
    assert_eq!((status, row["state"].as_str()), (200, Some("cancelled")));
    assert_eq!(
        post(
            &format!("{}/api/v1/releases/99999/retry", a.base),
            Some("s3cret-admin")
        )
        .await
        .0,
        404
    );

    let b = admin(None).await;
    let (status, body) = post(&format!("{}/api/v1/pause", b.base), Some("anything")).await;
    assert_eq!(status, 403, "no token configured: mutations are disabled");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("JANITOR_ADMIN_TOKEN"));
}

/// Every operator action through the API is recorded under the name of the token it came with
/// (which the caller cannot choose), with the `?by=` and the reason it gave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_actions_are_recorded_with_the_token_name_and_the_reason() {
    let named = server::tokens::parse("deploy-bot=bot-token-0123456789abcdef").unwrap();
    let a = admin_with(server::AdminTokens::new(
        Some(Secret::new("the-admin-token-0123")),
        named,
    ))
    .await;
    let bot = Some("bot-token-0123456789abcdef");
    let (status, _) = post(
        &format!("{}/api/v1/pause?by=alice&reason=change%20freeze", a.base),
        bot,
    )
    .await;
    assert_eq!(status, 200);
    let (status, state) = post(
        &format!("{}/api/v1/resume?reason=freeze%20over", a.base),
        Some("the-admin-token-0123"),
    )
    .await;
    assert_eq!((status, state["paused"].as_bool()), (200, Some(false)));
    let id = a.failed_release().await;
    let (status, _) = post(
        &format!("{}/api/v1/releases/{id}/retry?reason=lock%20lifted", a.base),
        bot,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = post(
        &format!(
            "{}/api/v1/releases/{id}/cancel?by=bob&reason=owner%20asked",
            a.base
        ),
        bot,
    )
    .await;
    assert_eq!(status, 200);

    let events = a.app.ctx.store.events(100).await.unwrap();
    let detail = |kind: &str| {
        events
            .iter()
            .find(|e| e.kind == kind)
            .map(|e| e.detail.clone())
            .unwrap_or_else(|| panic!("no {kind} event in {events:#?}"))
    };
    assert_eq!(
        detail("paused"),
        "by alice via token deploy-bot (admin API): change freeze"
    );
    assert_eq!(detail("resumed"), "by token admin (admin API): freeze over");
    assert_eq!(
        detail("retried"),
        "by token deploy-bot (admin API): lock lifted"
    );
    assert!(
        detail("cancelled")
            .starts_with("cancelled by bob via token deploy-bot (admin API): owner asked"),
        "{}",
        detail("cancelled")
    );
    // The tokens themselves are nowhere in the log.
    assert!(!format!("{events:?}").contains("0123456789abcdef"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_releases_until_resume() {
    let a = admin(Some("tok")).await;
    let (status, body) = post(&format!("{}/api/v1/pause", a.base), Some("tok")).await;
    assert_eq!((status, body["paused"].as_bool()), (200, Some(true)));
    // Work is due (i-4's release, cancelled with a hold that has already ended, queued again
    // with no grace left), but a paused worker claims nothing.
    let rows = a
        .app
        .ctx
        .store
        .list_releases(&Default::default())
        .await
        .unwrap();
    let now = chrono::Utc::now();
    for r in rows.iter().filter(|r| r.state == "pending") {
        a.app
            .ctx
            .store
            .cancel_release(r.id, "test", "test", Some(now), now)
            .await
            .unwrap();
    }
    a.app
        .ctx
        .store
        .enqueue(
            &[ecs_janitor::store::NewRelease {
                instance_id: "i-4".into(),
                instance_name: String::new(),
                account: String::new(),
                region: "cn-hangzhou".into(),
                policy: "ci-later".into(),
                force: false,
                terminate_subscription: false,
                not_before: chrono::Utc::now() - chrono::Duration::seconds(1),
                reasons: "test".into(),
                snapshot: None,
                saving: None,
            }],
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    let before = a.h.sim.releases().len();
    assert!(
        !a.app.workers.step().await.unwrap(),
        "paused: nothing claimed"
    );
    assert_eq!(a.h.sim.releases().len(), before);
    let (_, m) = get(&format!("{}/metrics", a.base)).await;
    assert!(m.contains("janitor_paused 1"));
    let (_, page) = get(&format!("{}/", a.base)).await;
    assert!(page.contains("id=\"paused\""));
    assert_eq!(
        post(&format!("{}/api/v1/resume", a.base), Some("tok"))
            .await
            .0,
        200
    );
    assert!(
        a.app.workers.step().await.unwrap(),
        "resumed: the due batch is worked"
    );
    assert!(a.h.sim.releases().len() > before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_policies_waiting_releases_and_failures_in_chromium() {
    let a = admin(None).await;
    let (status, html) = get(&format!("{}/", a.base)).await;
    assert_eq!(status, 200);
    for want in [
        "ci-now",
        "ci-later",
        "Waiting out their grace period",
        "i-4",
        "InstanceLockedForSecurity",
        "name=\"viewport\"",
    ] {
        assert!(html.contains(want), "{want} in the page");
    }
    assert!(!html.contains("<script"), "no JavaScript");
    // Savings: the figures the store holds, and the chart of 30 days drawn on the server.
    let sum = a
        .app
        .ctx
        .store
        .savings_summary(chrono::Utc::now())
        .await
        .unwrap();
    assert!(
        !sum.since_start.is_empty() && !sum.upcoming.is_empty(),
        "{sum:?}"
    );
    for (id, t) in [
        ("saved-month", &sum.this_month),
        ("saved-total", &sum.since_start),
        ("saved-upcoming", &sum.upcoming),
    ] {
        let want = format!("id=\"{id}\">≈ {}/month", t.display_whole("CNY"));
        assert!(html.contains(&want), "{want} in the page");
    }
    assert_eq!(html.matches("<rect class=\"releases\"").count(), 30);
    assert_eq!(html.matches("<rect class=\"saved\"").count(), 30);
    assert!(
        html.contains(": 3 released, ≈ ¥"),
        "today's bar names its figures"
    );
    let rid = a.h.sim.releases()[0].request_id.clone();
    assert!(html.contains(&rid), "RequestIds of recent releases");

    let chromium = ["chromium", "chromium-browser"].into_iter().find(|c| {
        std::process::Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(chromium) = chromium else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI installs chromium; it is missing"
        );
        eprintln!("chromium is not installed: skipping the browser check");
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    let url = format!("{}/", a.base);
    let flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ];
    let user_dir = format!("--user-data-dir={}", profile.path().display());
    let run = |extra: Vec<String>| {
        let mut c = std::process::Command::new(chromium);
        c.args(flags).arg(&user_dir).args(extra);
        async move {
            tokio::task::spawn_blocking(move || c.output().unwrap())
                .await
                .unwrap()
        }
    };
    let dom = run(vec!["--dump-dom".into(), url.clone()]).await;
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    assert!(
        dom.contains("ci-later") && dom.contains("InstanceLockedForSecurity"),
        "{dom}"
    );
    assert!(
        dom.contains("<svg id=\"savings-chart\"") && dom.contains("Saved since the start"),
        "the chart renders in the browser: {dom}"
    );
    // A phone-sized window.
    let out = run(vec![
        "--window-size=412,1600".into(),
        format!("--screenshot={}", shot.display()),
        url,
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 5_000,
        "a real screenshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_bad_input_with_json_errors() {
    let a = admin(Some("tok")).await;
    let (status, body) = post(
        &format!("{}/api/v1/releases/abc/retry", a.base),
        Some("tok"),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "bad_request");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not a release id"));
    let r = reqwest::get(format!("{}/api/v1/releases?state=bogus", a.base))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("vanished"),
        "{body}"
    );
    // A query that does not parse is the same JSON error (it was axum's plain text).
    let r = reqwest::get(format!("{}/api/v1/releases?limit=abc", a.base))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("limit"),
        "{body}"
    );
    // Out of the documented 1..=10000 is refused, not clamped (0 and -1 answered one release).
    for bad in ["0", "-1", "10001"] {
        let r = reqwest::get(format!("{}/api/v1/releases?limit={bad}", a.base))
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "limit={bad}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("between 1 and 10000"),
            "{body}"
        );
    }
    let r = reqwest::get(format!("{}/api/v1/pause", a.base))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["paused"], false);
    let r = reqwest::get(format!("{}/api/v1/nope", a.base))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    let r = reqwest::get(format!("{}/api/v1/resume", a.base))
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

/// One call checked against the OpenAPI document: its status must be documented for the
/// operation, its content type must be the documented one, and a JSON body must match the
/// documented schema (formats such as `date-time` included).
async fn call_documented(
    doc: &serde_json::Value,
    method: &str,
    template: &str,
    url: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new().request(method.parse().unwrap(), url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = r.text().await.unwrap();
    let op = &doc["paths"][template][method.to_lowercase()];
    assert!(op.is_object(), "{method} {template} is not in the document");
    let documented = &op["responses"][status.to_string()];
    assert!(
        documented.is_object(),
        "{method} {url} answered {status}, which the document does not list: {text}"
    );
    let (want_type, media) = documented["content"]
        .as_object()
        .and_then(|c| c.iter().next())
        .unwrap_or_else(|| panic!("{method} {template} {status} has no content"));
    assert!(
        ctype.starts_with(want_type.as_str()),
        "{method} {url}: content type {ctype:?}, documented {want_type}"
    );
    if want_type != "application/json" {
        return (status, serde_json::Value::String(text));
    }
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    let schema = serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc["components"],
        "allOf": [media["schema"]],
    });
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{method} {template} {status}: bad schema: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(&body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {url} {status}: the body does not match the document: {errors:#?}\n{body:#}"
    );
    (status, body)
}

/// The OpenAPI document served at /api/v1/openapi.json describes the routes the server really
/// has: the same paths, every method it takes (any other answers 405), and for each operation
/// called here, its status codes, content types and body schemas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_real_routes() {
    let token = "tok-0123456789abcdef";
    let a = admin(Some(token)).await;
    let (status, served) = get(&format!("{}/api/v1/openapi.json", a.base)).await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&served).unwrap();
    assert_eq!(
        doc,
        serde_json::from_str::<serde_json::Value>(server::OPENAPI).unwrap()
    );
    assert_eq!(doc["openapi"], "3.1.0");

    let mut documented: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut real = server::route_paths();
    documented.sort_unstable();
    real.sort_unstable();
    assert_eq!(documented, real, "documented paths against the router's");

    // Every path answers exactly its documented methods; the others get a JSON 405.
    let failed_id = a.failed_release().await;
    let concrete = |template: &str| template.replace("{id}", &failed_id.to_string());
    for template in &real {
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let op = &doc["paths"][template][method.to_lowercase()];
            let r = reqwest::Client::new()
                .request(
                    method.parse().unwrap(),
                    format!("{}{}", a.base, concrete(template)),
                )
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            if op.is_object() {
                assert_ne!(
                    status, 405,
                    "{method} {template} is documented but not routed"
                );
            } else {
                assert_eq!(
                    status, 405,
                    "{method} {template} is routed but not documented"
                );
                let body: serde_json::Value = r.json().await.unwrap();
                assert_eq!(body["error"]["code"], "method_not_allowed");
            }
        }
    }
    // The status enum is the store's.
    let states: Vec<&str> = doc["components"]["schemas"]["ReleaseState"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let ours: Vec<&str> = ecs_janitor::store::ReleaseState::ALL
        .iter()
        .map(|s| s.as_str())
        .collect();
    assert_eq!(states, ours);

    // Each operation, with its answers checked against the document.
    let b = &a.base;
    let t = Some(token);
    for (template, want) in [
        ("/", 200),
        ("/healthz", 200),
        ("/readyz", 200),
        ("/metrics", 200),
        ("/api/v1/openapi.json", 200),
        ("/api/v1/releases", 200),
        ("/api/v1/policies", 200),
        ("/api/v1/pause", 200),
    ] {
        let (status, _) =
            call_documented(&doc, "GET", template, &format!("{b}{template}"), None).await;
        assert_eq!(status, want, "GET {template}");
    }
    let rel = "/api/v1/releases";
    let (_, rows) = call_documented(
        &doc,
        "GET",
        rel,
        &format!("{b}{rel}?state=succeeded&limit=2"),
        None,
    )
    .await;
    assert_eq!(rows.as_array().unwrap().len(), 2);
    let (status, _) =
        call_documented(&doc, "GET", rel, &format!("{b}{rel}?state=bogus"), None).await;
    assert_eq!(status, 400);

    let pause = "/api/v1/pause";
    let (status, _) = call_documented(&doc, "POST", pause, &format!("{b}{pause}"), None).await;
    assert_eq!(status, 401);
    let (_, state) = call_documented(
        &doc,
        "POST",
        pause,
        &format!("{b}{pause}?by=carol&reason=audit"),
        t,
    )
    .await;
    assert_eq!(state["paused"], true);
    let (_, state) = call_documented(&doc, "GET", pause, &format!("{b}{pause}"), None).await;
    assert_eq!(state["reason"], "audit");
    let resume = "/api/v1/resume";
    let (_, state) = call_documented(&doc, "POST", resume, &format!("{b}{resume}"), t).await;
    assert_eq!(state["paused"], false);

    let retry = "/api/v1/releases/{id}/retry";
    let cancel = "/api/v1/releases/{id}/cancel";
    for (template, id, want) in [
        (retry, failed_id.to_string(), 200),
        (retry, failed_id.to_string(), 409),
        (retry, "i-abc".to_string(), 400),
        (retry, "99999".to_string(), 404),
        (cancel, failed_id.to_string(), 200),
        (cancel, failed_id.to_string(), 409),
    ] {
        let url = format!("{b}{}", template.replace("{id}", &id));
        let (status, body) = call_documented(&doc, "POST", template, &url, t).await;
        assert_eq!(status, want, "POST {url}: {body}");
    }

    // Exemptions: made, listed, shown on the page, removed; bad input is a documented 400.
    let ex = "/api/v1/exemptions/{instance}";
    let until = (chrono::Utc::now() + chrono::Duration::days(7)).format("%Y-%m-%d");
    let far = (chrono::Utc::now() + chrono::Duration::days(400)).format("%Y-%m-%d");
    for (url, want) in [
        (
            format!("{b}/api/v1/exemptions/i-5?until={until}&reason=legal%20hold&by=dave"),
            200,
        ),
        (
            format!("{b}/api/v1/exemptions/i-5?until={far}&reason=forever"),
            400,
        ),
        (format!("{b}/api/v1/exemptions/i-5?until={until}"), 400),
        (
            format!("{b}/api/v1/exemptions/web-1?until={until}&reason=x"),
            400,
        ),
        // An id no region of the policies lists is refused, as a likely typo, unless asked.
        (
            format!("{b}/api/v1/exemptions/i-55?until={until}&reason=x"),
            404,
        ),
        (
            format!("{b}/api/v1/exemptions/i-55?until={until}&reason=x&unchecked=true"),
            200,
        ),
    ] {
        let (status, body) = call_documented(&doc, "POST", ex, &url, t).await;
        assert_eq!(status, want, "POST {url}: {body}");
        if url.contains("i-5?") && status == 200 {
            // It says which machine it exempted.
            assert_eq!(body["found"][0]["instance_name"], "name-i-5", "{body}");
            assert_eq!(body["found"][0]["region"], "cn-hangzhou", "{body}");
            assert_eq!(body["unchecked"], serde_json::Value::Null, "{body}");
        }
        if status == 404 {
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|e| e.contains("not listed in any region the policies cover")),
                "{body}"
            );
        }
    }
    let list = "/api/v1/exemptions";
    let (_, rows) = call_documented(&doc, "GET", list, &format!("{b}{list}"), None).await;
    assert_eq!(rows[0]["instance_id"], "i-5");
    assert_eq!(rows[0]["by"], "dave via token admin (admin API)");
    assert_eq!(rows[1]["instance_id"], "i-55");
    let (_, page) = get(&format!("{b}/")).await;
    assert!(
        page.contains("<h2>Exemptions</h2>") && page.contains("legal hold"),
        "{page}"
    );
    let rm = "/api/v1/exemptions/{instance}/remove";
    for (id, want) in [("i-5", 200), ("i-5", 404)] {
        let url = format!("{b}/api/v1/exemptions/{id}/remove?reason=lifted");
        let (status, body) = call_documented(&doc, "POST", rm, &url, t).await;
        assert_eq!(status, want, "POST {url}: {body}");
    }

    let b2 = admin(None).await;
    let (status, _) =
        call_documented(&doc, "POST", resume, &format!("{}{resume}", b2.base), t).await;
    assert_eq!(status, 403);
}

/// While the operating window holds releases, the status page says so and until when (found in
/// a user trial: it said "Running: releases are carried out as scheduled" while four due
/// releases waited, and only a metric told why).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_says_when_the_window_holds_releases_and_a_policy_change_was_refused() {
    use chrono::Datelike;
    use ecs_janitor::window::{parse_days, OperatingWindow, WindowTimeZone};
    let a = admin(None).await;
    // Every day but today, 02:00-03:00 UTC: closed now, whatever the hour.
    let today = chrono::Utc::now().weekday();
    let days: Vec<&str> = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .into_iter()
        .enumerate()
        .filter(|(k, _)| *k as u32 != today.num_days_from_monday())
        .map(|(_, d)| d)
        .collect();
    let t = |h| chrono::NaiveTime::from_hms_opt(h, 0, 0).unwrap();
    let mut ctx = a.app.ctx.clone();
    ctx.window = Some(
        OperatingWindow::new(
            parse_days(&days.join(",")).unwrap(),
            t(2),
            t(3),
            WindowTimeZone::Utc,
        )
        .unwrap(),
    );
    let health = Arc::new(Health::default());
    health.policies_loaded.store(true, Ordering::SeqCst);
    // A policy change the daemon refused shows too (it showed only in /readyz).
    *health.last_load_error.lock().unwrap() =
        Some("policies/ci.yaml:4:9: `select.status`: unknown value \"Stoped\"".into());
    let router = server::router(AdminContext {
        ctx,
        health,
        admin_tokens: server::AdminTokens::new(None, Vec::new()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let (status, page) = get(&format!("{base}/")).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("id=\"window\"")
            && page.contains("Outside the operating window (")
            && page.contains("02:00-03:00 UTC): due releases wait until it opens at ")
            && !page.contains("id=\"running\""),
        "{page}"
    );
    assert!(
        page.contains("id=\"load-error\"")
            && page.contains(
                "policies&#x2F;ci.yaml:4:9: `select.status`: unknown value &quot;Stoped&quot;"
            ),
        "{page}"
    );
    // The page without a window or a refused change still says it runs.
    let (_, page) = get(&format!("{}/", a.base)).await;
    assert!(
        page.contains("id=\"running\"") && !page.contains("id=\"load-error\""),
        "{page}"
    );
}

/// Why a policy's last run failed is on the status page and in /api/v1/policies: its
/// `run_failed` event, only when it belongs to that run (found trying it: the page said
/// "error" and nothing else).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_and_the_api_say_why_a_policy_run_failed() {
    use ecs_janitor::store::{NewEvent, RunEnd};
    let a = admin(None).await;
    let store = &a.app.ctx.store;
    let tick = chrono::Utc::now() + chrono::Duration::minutes(1);
    assert!(store
        .begin_run("ci-now", tick, "test", tick, chrono::Duration::seconds(30))
        .await
        .unwrap());
    store
        .record_event(
            NewEvent {
                kind: "run_failed",
                policy: Some("ci-now".into()),
                detail: "cannot list the instances of xx-newregion-1: no such region".into(),
                ..NewEvent::default()
            },
            tick,
        )
        .await
        .unwrap();
    store
        .finish_run(&RunEnd::error("ci-now", tick), tick)
        .await
        .unwrap();
    let (_, page) = get(&format!("{}/", a.base)).await;
    assert!(
        page.contains("cannot list the instances of xx-newregion-1: no such region"),
        "{page}"
    );
    let (_, body) = get(&format!("{}/api/v1/policies", a.base)).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ci = v
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "ci-now")
        .unwrap();
    assert_eq!(ci["last_run"]["outcome"], "error", "{ci}");
    assert_eq!(
        ci["last_run"]["error"],
        "cannot list the instances of xx-newregion-1: no such region"
    );
    // A later run that failed without an event of its own is not given the older cause.
    let later = tick + chrono::Duration::minutes(1);
    assert!(store
        .begin_run(
            "ci-now",
            later,
            "test",
            later,
            chrono::Duration::seconds(30)
        )
        .await
        .unwrap());
    store
        .finish_run(&RunEnd::error("ci-now", later), later)
        .await
        .unwrap();
    let (_, body) = get(&format!("{}/api/v1/policies", a.base)).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ci = v
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "ci-now")
        .unwrap();
    assert_eq!(ci["last_run"]["error"], serde_json::Value::Null, "{ci}");
}
