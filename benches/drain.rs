//! Draining a queue of releases through the simulator: N releases already queued (100,000 when
//! measuring) are worked by the workers with 1, 2 and 4 batches in flight, on SQLite and (when
//! `JANITOR_TEST_POSTGRES_URL` is set) PostgreSQL. Each row is set beside the simulator's own
//! time for the same work: a bare client making exactly the minimal calls (one re-check
//! DescribeInstances and one DeleteInstances per 100 releases of a region) with the same
//! concurrency, against a fresh simulator with the same fleet. Also reports enqueueing the N
//! releases, the ECS calls per 100 releases, and how much the process's peak resident memory
//! grew during the drain (the process also holds the simulator and its fleet).
//!
//! `cargo bench --bench drain` measures (`-- sqlite 4` narrows it to one store and one worker
//! count, any count; `DRAIN_LATENCY_MS=30` has the simulator answer after a real API's round
//! trip); under `cargo test` it runs a small smoke pass.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use ecs_janitor::backoff::Backoff;
use ecs_janitor::clock::SystemClock;
use ecs_janitor::context::{Context, Extras};
use ecs_janitor::ecs::{Accounts, Instance};
use ecs_janitor::sim::SimHandle;
use ecs_janitor::store::{NewRelease, Store};
use ecs_janitor::worker::{WorkerConfig, Workers};
use tokio_util::sync::CancellationToken;

#[path = "support/harness.rs"]
mod harness;
use harness::{sim_client as client, status_mib};

/// The simulator answering at once, or after `DRAIN_LATENCY_MS` (a real API's round trip, to
/// see what more batches in flight do there).
async fn start(f: Vec<Instance>) -> SimHandle {
    let ms = std::env::var("DRAIN_LATENCY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    harness::start_sim(f, Duration::from_millis(ms)).await
}

/// `VmRSS:`/`VmHWM:` of this process, in MiB.
fn mib(field: &str) -> f64 {
    status_mib(None, field)
}

#[path = "../tests/common/fixtures.rs"]
mod fixtures;

const REGIONS: [&str; 4] = ["cn-hangzhou", "cn-shanghai", "cn-beijing", "ap-southeast-1"];

const POLICY: &str = "name: bench\nschedule: \"0 0 * * * *\"\n\
    regions: [cn-hangzhou, cn-shanghai, cn-beijing, ap-southeast-1]\n\
    select:\n  status: Stopped\n  tags: {bench: release}\n\
    limits:\n  max_releases_per_run: 1000000\n";

/// `n` stopped pay-as-you-go instances tagged `bench=release`, over four regions.
fn bench_fleet(n: usize) -> Vec<Instance> {
    fixtures::stopped_fleet(n, &REGIONS, "bench", "release")
}

/// The simulator's own time for the drain: the minimal calls, `concurrency` at a time.
/// Also returns the CPU seconds the process used meanwhile (the simulator's and the client's).
async fn baseline(f: &[Instance], concurrency: usize) -> (f64, f64) {
    let h = start(f.to_vec()).await;
    let c = client(&h);
    let (t, cpu) = (Instant::now(), harness::cpu_secs());
    harness::release_minimally(&c, harness::minimal_batches(f), concurrency).await;
    let secs = t.elapsed().as_secs_f64();
    let cpu = harness::cpu_secs() - cpu;
    h.shutdown().await;
    (secs, cpu)
}

/// Resets the process's peak resident size to its current one (Linux `clear_refs` 5), so the
/// next `VmHWM` is the peak of what follows.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

async fn drain(kind: &str, f: &[Instance], concurrency: usize) {
    let n = f.len();
    let h = start(f.to_vec()).await;
    let db = harness::fresh_db(kind).await;
    let store = Store::connect(&db.url).await.expect("store");
    let releases: Vec<NewRelease> = f
        .iter()
        .map(|i| NewRelease {
            instance_id: i.instance_id.clone(),
            instance_name: i.instance_name.clone(),
            account: String::new(),
            region: i.region_id.clone(),
            policy: "bench".into(),
            force: false,
            terminate_subscription: false,
            not_before: Utc::now(),
            reasons: "stopped, tagged bench=release".into(),
            snapshot: None,
            saving: None,
        })
        .collect();
    let t = Instant::now();
    store.enqueue(&releases, Utc::now()).await.expect("enqueue");
    let enqueue_secs = t.elapsed().as_secs_f64();
    let policies = fixtures::policies(POLICY);
    let (ctx, _reload) = Context::new(
        store.clone(),
        Accounts::single(client(&h)),
        policies,
        Arc::new(SystemClock),
        Extras::default(),
    );
    let workers = Workers::new(
        ctx,
        WorkerConfig {
            concurrency,
            backoff: Backoff::new(Duration::from_millis(10), Duration::from_millis(500)),
            ..WorkerConfig::default()
        },
    );
    reset_peak();
    let resident_before = mib("VmRSS:");
    let (t, cpu) = (Instant::now(), harness::cpu_secs());
    workers
        .drain(CancellationToken::new())
        .await
        .expect("drain");
    let secs = t.elapsed().as_secs_f64();
    let cpu = harness::cpu_secs() - cpu;
    let drain_growth = mib("VmHWM:") - resident_before;
    let counts = store.counts().await.expect("counts");
    assert_eq!(counts.succeeded as usize, n, "every release succeeded");
    assert_eq!(h.sim.releases().len(), n, "every instance released once");
    let calls = h.sim.calls().len();
    let minimum = 2 * harness::minimal_batches(f).len();
    h.shutdown().await;
    let (base, base_cpu) = baseline(f, concurrency).await;
    println!(
        "drain [{kind}, {concurrency} workers]: {n} releases in {secs:.2} s ({:.0}/s); simulator's own time {base:.2} s, ratio {:.2}x; CPU {cpu:.2} s against the simulator's own {base_cpu:.2} s; enqueue {enqueue_secs:.2} s; ECS calls {calls} (minimum {minimum}), {:.2} per 100 releases; peak memory added by the drain {drain_growth:.0} MiB (the process, simulator and fleet included, {resident_before:.0} MiB before it)",
        n as f64 / secs,
        secs / base,
        calls as f64 * 100.0 / n as f64,
    );
    drop(store);
    if let Some(name) = &db.pg_name {
        harness::drop_database(name).await;
    }
}

fn main() {
    // DRAIN_LOG=sqlx=debug (an EnvFilter) logs to stderr, for where a batch's time goes.
    if let Ok(filter) = std::env::var("DRAIN_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let measuring = std::env::args().any(|a| a == "--bench");
    let n = if measuring { 100_000 } else { 1_000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let f = bench_fleet(n);
        let mut kinds = vec!["sqlite"];
        if std::env::var("JANITOR_TEST_POSTGRES_URL").is_ok_and(|u| !u.is_empty()) {
            kinds.push("postgres");
        } else {
            println!("drain [postgres]: skipped (JANITOR_TEST_POSTGRES_URL is not set)");
        }
        // `cargo bench --bench drain -- sqlite 4` runs only the SQLite store with 4 workers.
        let args: Vec<String> = std::env::args().skip(1).collect();
        let want_kind = |k: &str| {
            !args.iter().any(|a| a == "sqlite" || a == "postgres") || args.iter().any(|a| a == k)
        };
        // `-- postgres 16` runs 16 workers (any count given; 1, 2 and 4 when none is).
        let mut counts: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
        if counts.is_empty() {
            counts = vec![1, 2, 4];
        }
        for kind in kinds.into_iter().filter(|k| want_kind(k)) {
            for &concurrency in &counts {
                drain(kind, &f, concurrency).await;
            }
        }
    });
}
