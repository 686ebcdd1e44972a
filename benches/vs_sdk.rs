//! `ecs-janitor apply` at its defaults against the script a user would write instead
//! (benches/sdk_cleanup.py, on Alibaba's official Python SDK aliyun-python-sdk-ecs: server-side
//! filters, batches of 100, one call at a time), on the same fleet in the same run: 30,000
//! instances over three regions, three policies, about 3,200 releases, with the simulator
//! answering at once and after 30 ms (a real API's round trip). Reports wall times as ratios, and
//! the ECS calls of each against the minimum the server-side filters allow.
//!
//! `cargo bench --bench vs_sdk` measures; under `cargo test` it runs a small smoke pass. The
//! script needs `pip install aliyun-python-sdk-ecs`; without it the comparison is skipped.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::Utc;
use ecs_janitor::ecs::{ChargeType, Instance, InstanceStatus};
use ecs_janitor::sim::{self, SimHandle};

#[path = "../tests/common/fixtures.rs"]
mod fixtures;
#[path = "support/harness.rs"]
mod harness;

const BIN: &str = env!("CARGO_BIN_EXE_ecs-janitor");
const REGIONS: [&str; 3] = ["cn-hangzhou", "cn-shanghai", "cn-beijing"];

const POLICIES: &str = r#"
name: ci-runners
schedule: "0 */15 * * * *"
regions: [cn-hangzhou, cn-shanghai, cn-beijing]
select:
  status: Stopped
  charge_type: PostPaid
  tags: {purpose: ci}
limits:
  max_releases_per_run: 100000
---
name: expired-subscriptions
schedule: "0 0 3 * * *"
regions: [cn-hangzhou, cn-shanghai, cn-beijing]
select:
  charge_type: PrePaid
  expired_for: 3d
release:
  terminate_subscription: true
limits:
  max_releases_per_run: 100000
---
name: sandboxes
schedule: "0 0 * * * *"
regions: [cn-hangzhou, cn-shanghai, cn-beijing]
select:
  status: Stopped
  tags: {env: sandbox}
limits:
  max_releases_per_run: 100000
"#;

/// The same three policies for the script: the server-side filters, and the expiry it checks.
fn script_job() -> String {
    serde_json::json!([
        {"regions": REGIONS, "status": "Stopped", "charge_type": "PostPaid", "tags": {"purpose": "ci"}},
        {"regions": REGIONS, "charge_type": "PrePaid", "expired_days": 3},
        {"regions": REGIONS, "status": "Stopped", "tags": {"env": "sandbox"}},
    ])
    .to_string()
}

/// `n` instances over the three regions: mostly running or stopped machines no policy selects,
/// and one in 28 of each kind the policies release (stopped CI runners, subscriptions expired
/// ten days ago, stopped sandboxes). They were created one after another over the last two
/// years, as a fleet grows.
fn fleet(n: usize) -> Vec<Instance> {
    let now = Utc::now();
    let first = now - chrono::Duration::days(730);
    let every = chrono::Duration::days(730) / (n.max(1) as i32);
    (0..n)
        .map(|k| {
            let region = REGIONS[k % 3];
            let (status, charge) = match k % 28 {
                0 | 14 => (InstanceStatus::Stopped, ChargeType::PostPaid),
                7 => (InstanceStatus::Stopped, ChargeType::PrePaid),
                m if m % 3 == 0 => (InstanceStatus::Stopped, ChargeType::PostPaid),
                m if m % 5 == 0 => (InstanceStatus::Running, ChargeType::PrePaid),
                _ => (InstanceStatus::Running, ChargeType::PostPaid),
            };
            let mut i = fixtures::instance(&format!("i-{k:07}"), region, status, charge);
            i.creation_time = Some(first + every * (k as i32));
            match k % 28 {
                0 => {
                    i.tags.insert("purpose".into(), "ci".into());
                }
                7 => i.expired_time = Some(now - chrono::Duration::days(10)),
                14 => {
                    i.tags.insert("env".into(), "sandbox".into());
                }
                _ => {
                    i.tags.insert("team".into(), format!("t{}", k % 7));
                }
            }
            if charge == ChargeType::PrePaid && k % 28 != 7 {
                i.expired_time = Some(now + chrono::Duration::days(30));
            }
            i
        })
        .collect()
}

/// What the job must release, and the fewest ECS calls it can take: the listing pages the
/// server-side filters allow (per policy and region), plus one DeleteInstances per 100 releases
/// that can share a call (same region and flags: ecs-janitor batches the CI runners and the
/// sandboxes of a region together; the script, policy by policy) and, for ecs-janitor, one
/// re-check before each.
struct Minimum {
    releases: usize,
    pages: usize,
    /// Batches when releases of the same region and flags share calls.
    batches: usize,
    /// Batches when each policy's releases go on their own.
    batches_by_policy: usize,
    /// Releases by region.
    releases_in: std::collections::BTreeMap<&'static str, usize>,
}

fn minimum(f: &[Instance]) -> Minimum {
    let now = Utc::now();
    let mut pages = 0;
    let mut releases = 0;
    let mut batches_by_policy = 0;
    let mut by_flags: std::collections::BTreeMap<(&str, bool), usize> = Default::default();
    let mut releases_in: std::collections::BTreeMap<&'static str, usize> = Default::default();
    type Select = fn(&Instance, chrono::DateTime<Utc>) -> (bool, bool);
    // (selection, TerminateSubscription)
    let policies: [(Select, bool); 3] = [
        (
            |i, _| {
                let listed = i.status == InstanceStatus::Stopped
                    && i.charge_type == ChargeType::PostPaid
                    && i.tags.get("purpose").is_some_and(|v| v == "ci");
                (listed, listed)
            },
            false,
        ),
        (
            |i, now| {
                let listed = i.charge_type == ChargeType::PrePaid;
                let due = i
                    .expired_time
                    .is_some_and(|t| now - t >= chrono::Duration::days(3));
                (listed, listed && due)
            },
            true,
        ),
        (
            |i, _| {
                let listed = i.status == InstanceStatus::Stopped
                    && i.tags.get("env").is_some_and(|v| v == "sandbox");
                (listed, listed)
            },
            false,
        ),
    ];
    for (select, terminate) in policies {
        for region in REGIONS {
            let (listed, released) = f
                .iter()
                .filter(|i| i.region_id == region)
                .map(|i| select(i, now))
                .fold((0, 0), |(l, r), (a, b)| (l + a as usize, r + b as usize));
            pages += listed.div_ceil(100).max(1);
            batches_by_policy += released.div_ceil(100);
            *by_flags.entry((region, terminate)).or_default() += released;
            *releases_in.entry(region).or_default() += released;
            releases += released;
        }
    }
    Minimum {
        releases,
        pages,
        batches: by_flags.values().map(|n| n.div_ceil(100)).sum(),
        batches_by_policy,
        releases_in,
    }
}

/// `apply --auto-approve` at its defaults; its wall time and ECS calls. With `VS_SDK_LOG`, its
/// log is kept as `vs_sdk-apply-{label}.log` in the temp folder. `VS_SDK_BIN` names another
/// build of ecs-janitor to run (an earlier commit's, to compare in the same run).
async fn apply(h: &SimHandle, dir: &Path, label: &str) -> (f64, usize) {
    let db = format!("sqlite://{}", dir.join("bench.db").display());
    let started = Instant::now();
    let out = tokio::task::spawn_blocking({
        let endpoint = h.endpoint().to_string();
        let policies = dir.join("policies");
        move || {
            Command::new(std::env::var("VS_SDK_BIN").unwrap_or_else(|_| BIN.into()))
                .args(["apply", "--auto-approve"])
                .env("JANITOR_ECS_ENDPOINT", endpoint)
                .env("ALIBABA_CLOUD_ACCESS_KEY_ID", sim::DEFAULT_ACCESS_KEY_ID)
                .env(
                    "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
                    sim::DEFAULT_ACCESS_KEY_SECRET,
                )
                .env("JANITOR_POLICIES", policies)
                .env("JANITOR_DATABASE_URL", db)
                // VS_SDK_LOG=debug keeps apply's log, for a breakdown of where its time goes.
                .env(
                    "JANITOR_LOG",
                    std::env::var("VS_SDK_LOG").unwrap_or_else(|_| "error".into()),
                )
                .output()
                .expect("run apply")
        }
    })
    .await
    .expect("join");
    let secs = started.elapsed().as_secs_f64();
    if std::env::var_os("VS_SDK_LOG").is_some() {
        let path = std::env::temp_dir().join(format!("vs_sdk-apply-{label}.log"));
        std::fs::write(&path, &out.stderr).expect("write the log");
        eprintln!("apply's log: {}", path.display());
    }
    assert!(
        out.status.success(),
        "apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (secs, h.sim.calls().len())
}

/// The official-SDK script on the same job; `None` when the SDK is not installed.
async fn script(h: &SimHandle) -> Option<(f64, usize, usize)> {
    let endpoint = format!(
        "{}:{}",
        h.endpoint().host_str().unwrap_or("127.0.0.1"),
        h.endpoint().port().unwrap_or(80)
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/sdk_cleanup.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .args([
                endpoint.as_str(),
                sim::DEFAULT_ACCESS_KEY_ID,
                sim::DEFAULT_ACCESS_KEY_SECRET,
                &script_job(),
            ])
            .output()
    })
    .await
    .expect("join")
    .ok()?;
    if out.status.code() == Some(3) {
        return None;
    }
    assert!(
        out.status.success(),
        "the script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("script output");
    Some((
        v["seconds"].as_f64().unwrap_or(f64::NAN),
        v["calls"].as_u64().unwrap_or(0) as usize,
        v["released"].as_u64().unwrap_or(0) as usize,
    ))
}

async fn compare(n: usize, latency: Duration) {
    let f = fleet(n);
    let min = minimum(&f);
    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir(dir.path().join("policies")).expect("mkdir");
    std::fs::write(dir.path().join("policies/job.yaml"), POLICIES).expect("policies");
    let h = harness::start_sim(f.clone(), latency).await;
    // Pricing reads the releases' disks: per region, the fewer of one DescribeDisks per release
    // and the region's disks listed 500 a page.
    let disk_pages_min: usize = {
        let mut disks: std::collections::BTreeMap<String, usize> = Default::default();
        for d in h.sim.disks() {
            *disks.entry(d.region_id).or_default() += 1;
        }
        REGIONS
            .iter()
            .map(|r| {
                let pages = disks.get(*r).copied().unwrap_or(0).div_ceil(500).max(1);
                pages.min(min.releases_in.get(*r).copied().unwrap_or(0))
            })
            .sum()
    };
    let label = format!("{}ms", latency.as_millis());
    let (apply_secs, apply_calls) = apply(&h, dir.path(), &label).await;
    let count = |action: &str| h.sim.calls().iter().filter(|c| c.action == action).count();
    let (listing_release, disk_pages, price_calls) = (
        count("DescribeInstances") + count("DeleteInstances"),
        count("DescribeDisks"),
        count("DescribePrice") + count("DescribeRenewalPrice"),
    );
    // apply's calls by action: the listing and the releases, and pricing's (issue 14).
    let by_action = {
        let mut m: std::collections::BTreeMap<String, usize> = Default::default();
        for c in h.sim.calls() {
            *m.entry(c.action).or_default() += 1;
        }
        m.iter()
            .map(|(a, n)| format!("{n} {a}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    assert_eq!(
        h.sim.releases().len(),
        min.releases,
        "apply released the job"
    );
    h.shutdown().await;
    let apply_min = min.pages + 2 * min.batches;
    let ms = latency.as_millis();
    let h = harness::start_sim(f, latency).await;
    match script(&h).await {
        Some((script_secs, script_calls, released)) => {
            assert_eq!(released, min.releases, "the script released the job");
            println!(
                "vs_sdk [{n} instances, {ms} ms per call]: {} releases; apply {apply_secs:.2} s, {apply_calls} ECS calls ({by_action}); listing and releasing {listing_release} calls against a minimum of {apply_min} ({} listing pages + 2 x {} batches, {:.3}x); pricing {disk_pages} DescribeDisks pages against a minimum of {disk_pages_min} ({:.3}x) and {price_calls} price lookups, one per configuration; official-SDK script {script_secs:.2} s, {script_calls} calls (minimum {}); apply/script time ratio {:.2}",
                min.releases,
                min.pages,
                min.batches,
                listing_release as f64 / apply_min as f64,
                disk_pages as f64 / disk_pages_min.max(1) as f64,
                min.pages + min.batches_by_policy,
                apply_secs / script_secs,
            );
        }
        None => println!(
            "vs_sdk [{n} instances, {ms} ms per call]: apply {apply_secs:.2} s, {apply_calls} ECS calls ({by_action}; minimum without pricing {apply_min}); the script was skipped: pip install aliyun-python-sdk-ecs"
        ),
    }
    h.shutdown().await;
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let n = if measuring { 30_000 } else { 3_000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        compare(n, Duration::ZERO).await;
        compare(n, Duration::from_millis(30)).await;
    });
}
