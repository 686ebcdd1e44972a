//! `ecs-janitor apply` on a 100,000-instance simulated fleet of which 20,000 match, on SQLite and
//! (when `JANITOR_TEST_POSTGRES_URL` is set) PostgreSQL. Reports the ECS calls made against the
//! minimum (inventory pages + 2 × batches: one re-check and one release per batch), the wall time
//! beside the simulator's own (a bare client making exactly the minimal calls, with the same
//! concurrency, against the same fleet), and the apply process's peak memory.
//!
//! `cargo bench --bench apply_fleet` measures; under `cargo test` it runs a small smoke pass.

use std::time::{Duration, Instant};

use ecs_janitor::ecs::client::{DeleteRequest, DescribeFilter};
use ecs_janitor::ecs::{ChargeType, Instance, InstanceStatus};
use ecs_janitor::sim::{self, fleet, SimHandle};

#[path = "support/harness.rs"]
mod harness;

const BIN: &str = env!("CARGO_BIN_EXE_ecs-janitor");
const CONCURRENCY: usize = 4;

/// The fleet, with exactly `matching` eligible instances tagged `bench=release`.
fn bench_fleet(instances: usize, matching: usize) -> Vec<Instance> {
    let mut f = fleet::generate(instances, 7, chrono::Utc::now());
    let mut n = 0;
    for i in f.iter_mut() {
        let eligible = i.status == InstanceStatus::Stopped
            && i.charge_type == ChargeType::PostPaid
            && !i.deletion_protection
            && !i.security_locked()
            && !i.tags.contains_key("janitor:protect");
        if eligible && n < matching {
            i.tags.insert("bench".into(), "release".into());
            n += 1;
        }
    }
    assert_eq!(
        n, matching,
        "the generated fleet has enough eligible instances"
    );
    f
}

async fn start(f: Vec<Instance>) -> SimHandle {
    harness::start_sim(f, Duration::ZERO).await
}

/// The region's stopped instances tagged `bench=release`. Listed by status and filtered here:
/// ECS returns at most 1,000 instances to a query filtered by tags, so a tag filter would
/// list only part of the job.
async fn tagged(c: &ecs_janitor::ecs::EcsClient, region: &str) -> Vec<Instance> {
    let filter = DescribeFilter {
        status: Some(InstanceStatus::Stopped),
        ..DescribeFilter::default()
    };
    c.describe_instances(region, &filter)
        .await
        .expect("describe")
        .into_iter()
        .filter(|i| i.tags.get("bench").is_some_and(|v| v == "release"))
        .collect()
}

/// The simulator's own time: the minimal calls, made by a bare client.
async fn baseline(f: Vec<Instance>) -> (f64, usize) {
    let h = start(f).await;
    let c = harness::sim_client(&h);
    let start_t = Instant::now();
    let mut found = Vec::new();
    for region in fleet::REGIONS {
        found.extend(tagged(&c, region).await);
    }
    harness::release_minimally(&c, harness::minimal_batches(&found), CONCURRENCY).await;
    let secs = start_t.elapsed().as_secs_f64();
    let calls = h.sim.calls().len();
    h.shutdown().await;
    (secs, calls)
}

/// What a plain script would do: list the matching instances, then release them one at a time,
/// each DeleteInstances call waited for before the next. Returns (seconds, calls).
async fn naive(f: Vec<Instance>) -> (f64, usize) {
    naive_on(start(f).await).await
}

async fn naive_on(h: SimHandle) -> (f64, usize) {
    let c = harness::sim_client(&h);
    let start_t = Instant::now();
    for region in fleet::REGIONS {
        for i in tagged(&c, region).await {
            c.delete_instances(&DeleteRequest {
                region: region.to_string(),
                instance_ids: vec![i.instance_id],
                force: false,
                terminate_subscription: false,
                dry_run: false,
                client_token: uuid::Uuid::new_v4().simple().to_string(),
            })
            .await
            .expect("delete");
        }
    }
    let secs = start_t.elapsed().as_secs_f64();
    let calls = h.sim.calls().len();
    h.shutdown().await;
    (secs, calls)
}

/// Runs `apply` on `f` and returns its wall time in seconds and the ECS calls it made.
async fn run(
    store: &str,
    db_url: &str,
    f: Vec<Instance>,
    matching: usize,
    base_secs: f64,
    latency: Duration,
) -> (f64, usize) {
    let instances = f.len();
    // Batches hold one region each: the minimum is ceil(n/100) per region.
    let mut per_region = std::collections::BTreeMap::<String, usize>::new();
    for i in f.iter().filter(|i| i.tags.contains_key("bench")) {
        *per_region.entry(i.region_id.clone()).or_default() += 1;
    }
    let batches: usize = per_region.values().map(|n| n.div_ceil(100)).sum();
    let h = harness::start_sim(f, latency).await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir(dir.path().join("policies")).expect("mkdir");
    std::fs::write(
        dir.path().join("policies/bench.yaml"),
        "name: bench\nschedule: \"0 0 * * * *\"\n\
         regions: [cn-hangzhou, cn-shanghai, cn-beijing, ap-southeast-1]\n\
         select:\n  status: Stopped\n  tags: {bench: release}\n\
         limits:\n  max_releases_per_run: 1000000\n",
    )
    .expect("policy");
    let start_t = Instant::now();
    // APPLY_FLEET_HEAPTRACK=FILE runs apply under heaptrack, its record written to FILE.
    let mut command = match std::env::var("APPLY_FLEET_HEAPTRACK") {
        Ok(out) => {
            let mut c = std::process::Command::new("heaptrack");
            c.args(["-o", out.as_str(), BIN]);
            c
        }
        Err(_) => std::process::Command::new(BIN),
    };
    let mut child = command
        .args([
            "apply",
            "--calls-per-second",
            "100000",
            "--concurrency",
            &CONCURRENCY.to_string(),
        ])
        .env("JANITOR_ECS_ENDPOINT", h.endpoint().as_str())
        .env("ALIBABA_CLOUD_ACCESS_KEY_ID", sim::DEFAULT_ACCESS_KEY_ID)
        .env(
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
            sim::DEFAULT_ACCESS_KEY_SECRET,
        )
        .env("JANITOR_POLICIES", dir.path().join("policies"))
        .env("JANITOR_DATABASE_URL", db_url)
        // APPLY_FLEET_LOG=info keeps apply's log in the temp folder, beside a trace of its
        // resident memory, to see which phase holds what.
        .env(
            "JANITOR_LOG",
            std::env::var("APPLY_FLEET_LOG").unwrap_or_else(|_| "error".into()),
        )
        .stdout(std::process::Stdio::null())
        .stderr(match std::env::var_os("APPLY_FLEET_LOG") {
            Some(_) => std::fs::File::create(std::env::temp_dir().join("apply_fleet.log"))
                .expect("log file")
                .into(),
            None => std::process::Stdio::inherit(),
        })
        .spawn()
        .expect("spawn apply");
    let pid = child.id();
    let mut peak: f64 = 0.0;
    let status = loop {
        peak = f64::max(peak, harness::status_mib(Some(pid), "VmHWM:"));
        if std::env::var_os("APPLY_FLEET_LOG").is_some() {
            use std::io::Write;
            let mut trace = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(std::env::temp_dir().join("apply_fleet.rss"))
                .expect("trace file");
            let _ = writeln!(
                trace,
                "{} {:.0}",
                chrono::Utc::now().format("%H:%M:%S%.3f"),
                harness::status_mib(Some(pid), "VmRSS:")
            );
        }
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let secs = start_t.elapsed().as_secs_f64();
    assert!(status.success(), "apply failed: {status}");
    let calls = h.sim.calls();
    assert_eq!(h.sim.releases().len(), matching, "every match released");
    let inventory = calls
        .iter()
        .filter(|c| c.action == "DescribeInstances" && c.instance_ids.is_empty())
        .count();
    let minimum = inventory + 2 * batches;
    // The bare client is not measured for every row (NaN): the row says so instead of NaN.
    let beside = if base_secs.is_nan() {
        String::from("bare client not measured for this row")
    } else {
        format!(
            "bare client (the simulator's own time) {base_secs:.2} s, so {:.2} s beyond it ({:.2}x)",
            secs - base_secs,
            secs / base_secs
        )
    };
    println!(
        "apply_fleet [{store}]: {instances} instances, {matching} released in {secs:.2} s; {beside}; ECS calls {} vs minimum {minimum} ({inventory} inventory pages + 2 x {batches}); peak memory of apply {:.0} MiB",
        calls.len(),
        peak,
    );
    let made = calls.len();
    h.shutdown().await;
    (secs, made)
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let (instances, matching) = if measuring {
        (100_000, 20_000)
    } else {
        (4_000, 500)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // `cargo bench --bench apply_fleet -- all` runs only the all-matching job.
    let only_all = std::env::args().any(|a| a == "all");
    rt.block_on(async move {
        if only_all {
            return every_instance_job(instances).await;
        }
        let f = bench_fleet(instances, matching);
        let base = baseline(f.clone()).await;
        let dir = tempfile::tempdir().expect("dir");
        let sqlite = format!("sqlite://{}", dir.path().join("bench.db").display());
        let (secs, calls) = run(
            "sqlite",
            &sqlite,
            f.clone(),
            matching,
            base.0,
            Duration::ZERO,
        )
        .await;
        let (naive_secs, naive_calls) = naive(f.clone()).await;
        println!(
            "apply_fleet [naive script]: the same {matching} releases one instance at a time took {naive_secs:.2} s and {naive_calls} ECS calls; against apply on SQLite ({secs:.2} s, {calls} calls): time ratio naive/apply {:.2}, calls ratio {:.1}",
            naive_secs / secs,
            naive_calls as f64 / calls as f64,
        );
        match harness::postgres_admin() {
            Some(_) => {
                let db = harness::fresh_db("postgres").await;
                run("postgres", &db.url, f, matching, base.0, Duration::ZERO).await;
                harness::drop_database(db.pg_name.as_deref().unwrap_or_default()).await;
            }
            None => {
                println!("apply_fleet [postgres]: skipped (JANITOR_TEST_POSTGRES_URL is not set)")
            }
        }
        every_instance_job(instances).await;
        // The same comparison with a round trip like a real API's on every call, on a fleet a
        // tenth the size (the script would otherwise take minutes).
        let latency = Duration::from_millis(20);
        let small = bench_fleet(instances / 10, matching / 10);
        let dir = tempfile::tempdir().expect("dir");
        let sqlite = format!("sqlite://{}", dir.path().join("small.db").display());
        let (secs, calls) = run(
            "sqlite, 20 ms per call",
            &sqlite,
            small.clone(),
            matching / 10,
            f64::NAN,
            latency,
        )
        .await;
        let (naive_secs, naive_calls) = naive_on(harness::start_sim(small, latency).await).await;
        println!(
            "apply_fleet [naive script, 20 ms per call]: {} releases one instance at a time took {naive_secs:.2} s and {naive_calls} ECS calls; against apply ({secs:.2} s, {calls} calls): time ratio naive/apply {:.1}, calls ratio {:.1}",
            matching / 10,
            naive_secs / secs,
            naive_calls as f64 / calls as f64,
        );
    });
}

/// `n` stopped pay-as-you-go instances, all tagged `bench=release`.
/// The largest job: every instance of the fleet matches, so apply lists, plans, queues and
/// releases all of them (peak memory at full scale).
async fn every_instance_job(instances: usize) {
    let all = every_instance_matches(instances);
    let base = baseline(all.clone()).await;
    let dir = tempfile::tempdir().expect("dir");
    let sqlite = format!("sqlite://{}", dir.path().join("all.db").display());
    run(
        "sqlite, every instance matches",
        &sqlite,
        all,
        instances,
        base.0,
        Duration::ZERO,
    )
    .await;
}

fn every_instance_matches(n: usize) -> Vec<Instance> {
    let mut f = fleet::generate(n, 8, chrono::Utc::now());
    for i in f.iter_mut() {
        i.status = InstanceStatus::Stopped;
        i.charge_type = ChargeType::PostPaid;
        i.deletion_protection = false;
        i.lock_reasons.clear();
        i.tags.remove("janitor:protect");
        i.tags.insert("bench".into(), "release".into());
    }
    f
}
