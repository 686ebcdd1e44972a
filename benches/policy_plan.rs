//! Policy and plan speed: validating 1,000 policy files, and evaluating 100,000 instances against
//! 20 policies (a realistic mix, and the worst case where five policies select the same
//! instances), with the process's peak memory.
//!
//! `cargo bench --bench policy_plan` measures; under `cargo test` it runs a small smoke pass.

use std::time::Instant;

use ecs_janitor::plan;
use ecs_janitor::policy;

#[path = "support/harness.rs"]
mod harness;
#[path = "support/plan_case.rs"]
mod plan_case;
use plan_case::{bench_case, now};

/// Peak resident memory of this process so far, in MiB (Linux).
fn peak_mib() -> f64 {
    harness::status_mib(None, "VmHWM:")
}

/// Resident memory now, in MiB (Linux).
fn rss_mib() -> f64 {
    harness::status_mib(None, "VmRSS:")
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let (files, instances, runs) = if measuring {
        (1000, 100_000, 5)
    } else {
        (20, 2_000, 1)
    };

    // The realistic case first, so the peak memory it reports is its own.
    for overlap in [false, true] {
        let before = rss_mib();
        let (policies, inventory, ctx) = bench_case(overlap, instances);
        println!(
            "policy_plan: inventory of {instances} instances and context built: {:.0} MiB resident (+{:.0} MiB)",
            rss_mib(),
            rss_mib() - before
        );
        let mut best = f64::MAX;
        let mut summary = None;
        for _ in 0..runs {
            let start = Instant::now();
            let p = plan::evaluate(&policies, &inventory, &ctx, now());
            best = best.min(start.elapsed().as_secs_f64());
            summary = Some(p.summary());
        }
        println!(
            "policy_plan: evaluate {instances} instances x {} policies (overlap: {overlap}): best of {runs}: {:.1} ms; {:?}; peak memory of the process so far {:.0} MiB",
            policies.len(),
            best * 1000.0,
            summary.expect("ran"),
            peak_mib()
        );
    }
    // 1,000 policy files, each one policy, like a large policy repository.
    let dir = tempfile::tempdir().expect("temp dir");
    for n in 0..files {
        let yaml = format!(
            "name: policy-{n:04}\ndescription: Release stopped runners of team {n}.\n\
             schedule: \"0 */15 * * * *\"\nregions: [cn-hangzhou, cn-shanghai]\n\
             select:\n  charge_type: PostPaid\n  status: Stopped\n  tags: {{team: t{n}, purpose: ci}}\n\
             \x20 name: \"ci-*\"\n  stopped_for: 2h\nexclude:\n  tags: {{keep: \"true\"}}\n\
             release:\n  grace: 1h\nlimits:\n  max_releases_per_run: 50\n"
        );
        std::fs::write(dir.path().join(format!("p{n:04}.yaml")), yaml).expect("write");
    }
    let mut best = f64::MAX;
    for _ in 0..runs {
        let start = Instant::now();
        let set = policy::load_dir(dir.path()).unwrap_or_else(|d| panic!("{d}"));
        best = best.min(start.elapsed().as_secs_f64());
        assert_eq!(set.policies.len(), files);
    }
    println!(
        "policy_plan: validate {files} files: best of {runs}: {:.1} ms",
        best * 1000.0
    );
}
