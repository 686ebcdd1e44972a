//! Shared test fixtures: fresh stores (SQLite in a temp dir, PostgreSQL in a fresh database),
//! the in-process simulator and a client for it.
#![allow(dead_code)]

pub mod fixtures;

use std::sync::Arc;

use ecs_janitor::ecs::client::{ClientConfig, EcsClient};
use ecs_janitor::ecs::credentials::{Credentials, StaticProvider};
use ecs_janitor::ecs::{ChargeType, Instance, InstanceStatus};
use ecs_janitor::sim::{self, Faults, SimConfig, SimHandle, Simulator};
use ecs_janitor::store::Store;

/// A store plus whatever keeps it alive (the temp dir, the database name to drop).
pub struct TestDb {
    pub store: Store,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_admin: Option<(String, String)>,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.pg_admin.take() {
            // Best effort, on a thread of its own: Drop cannot await.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(rt) = rt {
                    rt.block_on(async move {
                        use sqlx::Connection;
                        if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                            let _ = sqlx::query(&format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            ))
                            .execute(&mut c)
                            .await;
                        }
                    });
                }
            })
            .join();
        }
    }
}

pub async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("janitor.db").display());
    let store = Store::connect(&url).await.unwrap();
    TestDb {
        store,
        url,
        _dir: Some(dir),
        pg_admin: None,
    }
}

/// The PostgreSQL admin URL, or None (with a note) when the tests should skip PostgreSQL.
pub fn pg_url() -> Option<String> {
    match std::env::var("JANITOR_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!("JANITOR_TEST_POSTGRES_URL is not set: skipping the PostgreSQL variant");
            None
        }
    }
}

/// A fresh database next to the one `JANITOR_TEST_POSTGRES_URL` names.
pub async fn postgres() -> Option<TestDb> {
    use sqlx::Connection;
    let admin = pg_url()?;
    let name = format!("janitor_test_{}", uuid::Uuid::new_v4().simple());
    let mut c = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to JANITOR_TEST_POSTGRES_URL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut c)
        .await
        .unwrap();
    let mut u = url::Url::parse(&admin).unwrap();
    u.set_path(&format!("/{name}"));
    let url = u.to_string();
    let store = Store::connect(&url).await.unwrap();
    Some(TestDb {
        store,
        url,
        _dir: None,
        pg_admin: Some((admin, name)),
    })
}

pub fn inst(id: &str, region: &str, status: InstanceStatus, charge: ChargeType) -> Instance {
    fixtures::instance(id, region, status, charge)
}

pub async fn start_sim(fleet: Vec<Instance>, faults: Faults, seed: u64) -> SimHandle {
    let cfg = SimConfig {
        faults,
        seed,
        ..SimConfig::default()
    };
    Simulator::new(cfg, fleet)
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// A client for the simulator with short read retries, paced generously (1,000 calls per second
/// per region and API) so tests are not slowed by it.
pub fn client(h: &SimHandle) -> EcsClient {
    client_paced(
        h,
        ecs_janitor::ecs::pace::PaceConfig {
            start_per_second: 1000.0,
            ..Default::default()
        },
    )
}

/// A client for the simulator paced by `pace`.
pub fn client_paced(h: &SimHandle, pace: ecs_janitor::ecs::pace::PaceConfig) -> EcsClient {
    let cfg = ClientConfig {
        pace,
        endpoint: Some(h.endpoint()),
        read_backoff: ecs_janitor::backoff::Backoff::new(
            std::time::Duration::from_millis(1),
            std::time::Duration::from_millis(20),
        ),
        read_attempts: 8,
        ..ClientConfig::default()
    };
    let creds = Credentials::new(sim::DEFAULT_ACCESS_KEY_ID, sim::DEFAULT_ACCESS_KEY_SECRET);
    EcsClient::new(cfg, Arc::new(StaticProvider(creds))).unwrap()
}

/// Waits for `cond` with a deadline, polling; panics with `what` when the deadline passes.
pub async fn wait_for<F, Fut>(what: &str, deadline: std::time::Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() > end {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// Every ClientToken the simulator saw was always sent with the same instances, and no instance
/// was released twice.
pub fn assert_tokens_consistent(h: &SimHandle) {
    let mut by_token: std::collections::HashMap<String, Vec<String>> = Default::default();
    for c in h
        .sim
        .calls()
        .into_iter()
        .filter(|c| c.action == "DeleteInstances")
    {
        let t = c
            .client_token
            .clone()
            .expect("every release carries a ClientToken");
        let ids = by_token
            .entry(t.clone())
            .or_insert_with(|| c.instance_ids.clone());
        assert_eq!(
            ids, &c.instance_ids,
            "token {t} was resent with other members"
        );
    }
    let recs = h.sim.releases();
    let once: std::collections::BTreeSet<_> = recs.iter().map(|r| &r.instance_id).collect();
    assert_eq!(once.len(), recs.len(), "an instance was released twice");
}

#[allow(unused_imports)]
pub use fixtures::{ci_fleet, policies, CI_STOPPED};

/// The environment of an `ecs-janitor` child run against the simulator `h` and the database
/// `db_url`, with the policies in `dir/policies`, short backoffs and leases, and warnings only.
pub fn janitor_env(
    h: &SimHandle,
    dir: &std::path::Path,
    db_url: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("JANITOR_ECS_ENDPOINT", h.endpoint().to_string()),
        (
            "ALIBABA_CLOUD_ACCESS_KEY_ID",
            sim::DEFAULT_ACCESS_KEY_ID.into(),
        ),
        (
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
            sim::DEFAULT_ACCESS_KEY_SECRET.into(),
        ),
        (
            "JANITOR_POLICIES",
            dir.join("policies").display().to_string(),
        ),
        ("JANITOR_DATABASE_URL", db_url.into()),
        ("JANITOR_BACKOFF_BASE_MS", "20".into()),
        ("JANITOR_BACKOFF_CAP_MS", "200".into()),
        ("JANITOR_MAX_ATTEMPTS", "40".into()),
        ("JANITOR_LOG", "warn".into()),
        ("JANITOR_LEASE_SECS", "3".into()),
    ]
}

/// Scripts the simulator to refuse the next `times` DeleteInstances naming `id` with 403
/// InstanceLockedForSecurity (a code ECS lists, though a security lock alone does not refuse).
pub fn refuse_every_call_naming(h: &SimHandle, id: &str, times: usize) {
    for _ in 0..times {
        h.sim.script(sim::ScriptStep {
            action: "DeleteInstances".into(),
            answer: sim::Scripted::Error {
                status: 403,
                code: "InstanceLockedForSecurity".into(),
            },
            instance_id: Some(id.into()),
        });
    }
}

/// The pipeline (reconciler and workers over one context) as a test builds it: a store, a
/// client for the simulator, the policies; every other part at its default unless set.
pub struct Pipeline {
    pub store: Store,
    pub accounts: ecs_janitor::ecs::Accounts,
    pub policies: Vec<ecs_janitor::policy::Policy>,
    pub cfg: ecs_janitor::worker::WorkerConfig,
    pub clock: ecs_janitor::clock::SharedClock,
    pub dry_run: bool,
    pub extras: ecs_janitor::context::Extras,
}

impl Pipeline {
    pub fn new(
        store: &Store,
        client: EcsClient,
        policies: Vec<ecs_janitor::policy::Policy>,
    ) -> Pipeline {
        Pipeline {
            store: store.clone(),
            accounts: ecs_janitor::ecs::Accounts::single(client),
            policies,
            cfg: ecs_janitor::worker::WorkerConfig::default(),
            clock: Arc::new(ecs_janitor::clock::SystemClock),
            dry_run: false,
            extras: Default::default(),
        }
    }

    pub fn build(self) -> ecs_janitor::app::App {
        let (ctx, reload) = ecs_janitor::context::Context::new(
            self.store,
            self.accounts,
            self.policies,
            self.clock,
            self.extras,
        );
        ecs_janitor::app::App::new(ctx, reload, self.cfg, self.dry_run)
    }
}

/// A webhook receiver on 127.0.0.1 that keeps every body it is sent.
pub async fn receiver() -> (url::Url, Arc<std::sync::Mutex<Vec<serde_json::Value>>>) {
    let got: Arc<std::sync::Mutex<Vec<serde_json::Value>>> = Default::default();
    let g = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let g = g.clone();
            async move {
                g.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = url::Url::parse(&format!("http://{}/hook", l.local_addr().unwrap())).unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (url, got)
}

/// A notifier that sends generic JSON to a [`receiver`], with its random source seeded.
pub fn generic_notifier(url: url::Url) -> ecs_janitor::notify::Notifier {
    use ecs_janitor::notify::{Notifier, NotifierOptions, WebhookConfig, WebhookFormat};
    Notifier::start(
        vec![WebhookConfig::new(url, WebhookFormat::Generic, Some("test".into())).unwrap()],
        NotifierOptions {
            seed: 1,
            ..NotifierOptions::default()
        },
    )
    .unwrap()
}

/// Sends SIGTERM to `child`, as an operator or an orchestrator stops it.
pub fn sigterm(child: &std::process::Child) {
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -TERM {}", child.id());
}

/// Collects everything a log subscriber writes.
#[derive(Clone, Default)]
pub struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Every log line written on this thread (all of a current-thread runtime's) while the guard
/// lives.
pub fn capture_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}
