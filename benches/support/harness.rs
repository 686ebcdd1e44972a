//! What the benchmarks share: a simulator on 127.0.0.1 and a client for it, fresh databases, and
//! memory readings from /proc. Each benchmark uses a part of it.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use ecs_janitor::ecs::client::{ClientConfig, EcsClient};
use ecs_janitor::ecs::credentials::{Credentials, StaticProvider};
use ecs_janitor::ecs::Instance;
use ecs_janitor::sim::{self, Faults, SimConfig, SimHandle, Simulator};

/// A simulator serving `fleet`, waiting `latency` before each answer (zero: at once).
pub async fn start_sim(fleet: Vec<Instance>, latency: Duration) -> SimHandle {
    let cfg = SimConfig {
        faults: Faults {
            latency,
            ..Faults::default()
        },
        ..SimConfig::default()
    };
    Simulator::new(cfg, fleet)
        .serve("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("serve")
}

/// A client of `h` with the simulator's default key, unpaced: what these benchmarks measure is
/// the work around the calls (the queue, the simulator), not the pace kept against ECS's quotas.
pub fn sim_client(h: &SimHandle) -> EcsClient {
    EcsClient::new(
        ClientConfig {
            endpoint: Some(h.endpoint()),
            pace: ecs_janitor::ecs::pace::PaceConfig {
                start_per_second: 1e9,
                ..Default::default()
            },
            ..ClientConfig::default()
        },
        Arc::new(StaticProvider(Credentials::new(
            sim::DEFAULT_ACCESS_KEY_ID,
            sim::DEFAULT_ACCESS_KEY_SECRET,
        ))),
    )
    .expect("client")
}

/// The PostgreSQL server to benchmark against, when `JANITOR_TEST_POSTGRES_URL` names one.
pub fn postgres_admin() -> Option<String> {
    std::env::var("JANITOR_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// A fresh database: a SQLite file in a temporary directory, or a new PostgreSQL database.
pub struct FreshDb {
    pub url: String,
    /// The PostgreSQL database's name, to drop afterwards.
    pub pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

/// A fresh database of `kind` (`sqlite` or `postgres`).
pub async fn fresh_db(kind: &str) -> FreshDb {
    if kind == "sqlite" {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        return FreshDb {
            url,
            pg_name: None,
            _dir: Some(dir),
        };
    }
    use sqlx::Connection;
    let admin = postgres_admin().expect("JANITOR_TEST_POSTGRES_URL");
    let name = format!("janitor_bench_{}", uuid::Uuid::new_v4().simple());
    let mut c = sqlx::PgConnection::connect(&admin).await.expect("postgres");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut c)
        .await
        .expect("create");
    let mut u = url::Url::parse(&admin).expect("url");
    u.set_path(&format!("/{name}"));
    FreshDb {
        url: u.to_string(),
        pg_name: Some(name),
        _dir: None,
    }
}

/// Drops a database made by [`fresh_db`].
pub async fn drop_database(name: &str) {
    use sqlx::Connection;
    let Some(admin) = postgres_admin() else {
        return;
    };
    if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut c)
            .await;
    }
}

/// A field of /proc/PID/status (this process when `pid` is `None`) in MiB, e.g. `VmHWM:`.
pub fn status_mib(pid: Option<u32>, field: &str) -> f64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_string(),
    };
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU seconds this process has used so far, user and system (`/proc/self/stat`, in the
/// kernel's clock ticks of 1/100 s): set beside a phase's wall time, it says how much of the
/// machine's two cores the phase kept busy.
#[allow(dead_code)]
pub fn cpu_secs() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // The fields after the command name, which is in parentheses and may hold spaces.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| f.get(i)?.parse::<f64>().ok();
            Some((ticks(11)? + ticks(12)?) / 100.0)
        })
        .unwrap_or(0.0)
}

/// The fewest DeleteInstances batches for `instances`: up to 100 of one region each, as
/// (region, ids).
pub fn minimal_batches(instances: &[Instance]) -> Vec<(String, Vec<String>)> {
    let mut by_region: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for i in instances {
        by_region
            .entry(i.region_id.as_str())
            .or_default()
            .push(i.instance_id.clone());
    }
    let mut out = Vec::new();
    for (region, ids) in by_region {
        for c in ids.chunks(100) {
            out.push((region.to_string(), c.to_vec()));
        }
    }
    out
}

/// What the simulator's own time for releasing `batches` is measured with: a bare client making
/// exactly the minimal calls, one re-check DescribeInstances and one DeleteInstances per batch,
/// `concurrency` batches at a time.
pub async fn release_minimally(
    c: &EcsClient,
    batches: Vec<(String, Vec<String>)>,
    concurrency: usize,
) {
    use ecs_janitor::ecs::client::{DeleteRequest, DescribeFilter};
    let queue = Arc::new(std::sync::Mutex::new(batches));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (c, q) = (c.clone(), queue.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let next = q.lock().expect("lock").pop();
                let Some((region, ids)) = next else { break };
                let f = DescribeFilter {
                    instance_ids: Some(ids.clone()),
                    ..DescribeFilter::default()
                };
                c.describe_instances(&region, &f).await.expect("re-check");
                c.delete_instances(&DeleteRequest {
                    region,
                    instance_ids: ids,
                    force: false,
                    terminate_subscription: false,
                    dry_run: false,
                    client_token: uuid::Uuid::new_v4().simple().to_string(),
                })
                .await
                .expect("delete");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
}
