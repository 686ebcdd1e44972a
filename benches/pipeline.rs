//! Criterion benchmarks of the pipeline's pure and storage stages:
//!
//! * `plan/evaluate`: 100,000 instances × 20 policies (the realistic case of `policy_plan`);
//! * `policy/load_dir`: 1,000 policy files;
//! * `store/enqueue`: 100,000 releases into a fresh SQLite database and, when
//!   `JANITOR_TEST_POSTGRES_URL` is set, a fresh PostgreSQL database.
//!
//! `cargo bench --bench pipeline` measures at full size; under `cargo test` every benchmark runs
//! once at a small size.

use std::time::Duration;

use chrono::Utc;
use criterion::{criterion_group, BatchSize, Criterion};
use ecs_janitor::plan;
use ecs_janitor::policy;
use ecs_janitor::store::{NewRelease, Store};

#[path = "support/harness.rs"]
mod harness;
#[path = "support/plan_case.rs"]
mod plan_case;

fn measuring() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Full size when measuring, small under `cargo test`.
fn size(full: usize, smoke: usize) -> usize {
    if measuring() {
        full
    } else {
        smoke
    }
}

fn plan(c: &mut Criterion) {
    let n = size(100_000, 2_000);
    let (policies, inventory, ctx) = plan_case::bench_case(false, n);
    let mut g = c.benchmark_group("plan");
    g.sample_size(20);
    g.bench_function(format!("evaluate {n} instances x 20 policies"), |b| {
        b.iter(|| plan::evaluate(&policies, &inventory, &ctx, plan_case::now()))
    });
    g.finish();
}

fn load(c: &mut Criterion) {
    let files = size(1_000, 20);
    let dir = tempfile::tempdir().expect("temp dir");
    for n in 0..files {
        let yaml = format!(
            "name: policy-{n:04}\nschedule: \"0 */15 * * * *\"\nregions: [cn-hangzhou, cn-shanghai]\n\
             select:\n  charge_type: PostPaid\n  status: Stopped\n  tags: {{team: t{n}, purpose: ci}}\n\
             \x20 name: \"ci-*\"\n  stopped_for: 2h\nexclude:\n  tags: {{keep: \"true\"}}\n\
             release:\n  grace: 1h\n"
        );
        std::fs::write(dir.path().join(format!("p{n:04}.yaml")), yaml).expect("write");
    }
    let mut g = c.benchmark_group("policy");
    g.sample_size(20);
    g.bench_function(format!("load_dir {files} files"), |b| {
        b.iter(|| policy::load_dir(dir.path()).expect("valid"))
    });
    g.finish();
}

fn releases(n: usize) -> Vec<NewRelease> {
    let regions = ["cn-hangzhou", "cn-shanghai", "cn-beijing", "ap-southeast-1"];
    (0..n)
        .map(|i| NewRelease {
            instance_id: format!("i-{i:07}"),
            instance_name: format!("runner-{i}"),
            account: String::new(),
            region: regions[i % 4].into(),
            policy: format!("p{:02}", i % 20),
            force: false,
            terminate_subscription: false,
            not_before: Utc::now(),
            reasons: "stopped PostPaid tagged purpose=ci".into(),
            snapshot: None,
            saving: None,
        })
        .collect()
}

/// A fresh, migrated database; a PostgreSQL one's name is kept in `made` to drop afterwards.
async fn fresh(kind: &str, made: &std::sync::Mutex<Vec<String>>) -> (Store, harness::FreshDb) {
    let db = harness::fresh_db(kind).await;
    if let Some(name) = &db.pg_name {
        made.lock().expect("lock").push(name.clone());
    }
    (Store::connect(&db.url).await.expect("store"), db)
}

fn enqueue(c: &mut Criterion) {
    let n = size(100_000, 1_000);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let rs = releases(n);
    let made = std::sync::Mutex::new(Vec::new());
    let mut kinds = vec!["sqlite"];
    if harness::postgres_admin().is_some() {
        kinds.push("postgres");
    }
    let mut g = c.benchmark_group("store");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    for kind in kinds {
        g.bench_function(format!("enqueue {n} releases ({kind})"), |b| {
            b.iter_batched(
                || rt.block_on(fresh(kind, &made)),
                |(store, dir)| {
                    let created = rt
                        .block_on(store.enqueue(&rs, Utc::now()))
                        .expect("enqueue");
                    assert_eq!(created.len(), rs.len());
                    // Dropped after the timing: closing and deleting are not enqueueing.
                    (store, dir)
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
    rt.block_on(async {
        for name in made.into_inner().expect("lock") {
            harness::drop_database(&name).await;
        }
    });
}

criterion_group!(benches, plan, load, enqueue);

fn main() {
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
