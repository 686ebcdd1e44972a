//! Pacing against ECS's quotas: the simulator refuses calls past a quota per (account, region,
//! API) in each window with `Throttling.User` and the time left, as ECS does per minute; `apply`
//! slows each key down to what the quota allows, so every release happens with only a couple of
//! throttled answers per key and window. A region's listings share one bound on pages in
//! flight, so a long one is not held back while the short ones are done.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use ecs_janitor::backoff::Backoff;
use ecs_janitor::sim::{Faults, SimConfig, Simulator};
use ecs_janitor::worker::WorkerConfig;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_under_a_tight_quota_releases_everything_with_few_throttles() {
    let fleet =
        common::fixtures::stopped_fleet(1200, &["cn-hangzhou", "cn-shanghai"], "purpose", "ci");
    let window = Duration::from_millis(500);
    let cfg = SimConfig {
        faults: Faults::default(),
        seed: 5,
        release_delay: Duration::ZERO,
        quotas: BTreeMap::from([
            ("DeleteInstances".to_string(), 3),
            ("DescribeInstances".to_string(), 5),
        ]),
        quota_window: window,
        ..SimConfig::default()
    };
    let h = Simulator::new(cfg, fleet)
        .serve(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let db = common::sqlite().await;
    let policy = "name: ci\nschedule: \"0 0 * * * *\"\nregions: [cn-hangzhou, cn-shanghai]\n\
                  select:\n  tags: {purpose: ci}\n  status: Stopped\n\
                  limits:\n  max_releases_per_run: 10000\n";
    // The client's pace at its default: 50 calls per second per key, far above the quota.
    let client = common::client_paced(&h, Default::default());
    let app = common::Pipeline {
        cfg: WorkerConfig {
            backoff: Backoff::new(Duration::from_millis(10), Duration::from_millis(200)),
            ..WorkerConfig::default()
        },
        ..common::Pipeline::new(&db.store, client, common::policies(policy))
    }
    .build();
    let report = app
        .apply(None, &Default::default(), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        report
            .in_state(ecs_janitor::store::ReleaseState::Succeeded)
            .count(),
        1200,
        "{}",
        report.render(chrono::Utc::now())
    );
    assert_eq!(h.sim.releases().len(), 1200);
    // Throttled answers per (region, API, window): the calls are logged in order, and a
    // throttle holds its key until the window ends, so each window sees at most a couple.
    let calls = h.sim.calls();
    let throttled: Vec<_> = calls
        .iter()
        .filter(|c| c.outcome == "Throttling.User")
        .collect();
    assert!(
        !throttled.is_empty(),
        "the quota was reached: the test means something"
    );
    let per_key_windows = {
        let mut m: BTreeMap<(String, String), usize> = BTreeMap::new();
        for c in &throttled {
            *m.entry((c.region.clone(), c.action.clone())).or_default() += 1;
        }
        m
    };
    let ok_calls = calls.iter().filter(|c| c.outcome == "OK").count();
    eprintln!("throttled answers by key: {per_key_windows:?}; {ok_calls} calls answered OK");
    // At most two throttles for each window a key was busy in: the busy windows of a key are at
    // least its calls over its quota.
    for ((region, action), n) in &per_key_windows {
        let quota = if action == "DeleteInstances" { 3 } else { 5 };
        let busy = calls
            .iter()
            .filter(|c| &c.region == region && &c.action == action && c.outcome == "OK")
            .count()
            .div_ceil(quota);
        assert!(
            *n <= 2 * busy,
            "{region} {action}: {n} throttled answers over {busy} windows ({ok_calls} calls OK)"
        );
    }
    h.shutdown().await;
}

#[tokio::test]
async fn a_regions_listings_share_one_bound_on_pages_in_flight() {
    // Three policies of one region, three queries: two of twenty pages, one of a single page.
    // After their first pages, the two long listings ask for their other 38 pages together, as
    // many at once as the region's bound allows: more than either would alone, never more
    // than the bound.
    let status = |k: usize| {
        if k.is_multiple_of(2) {
            ecs_janitor::ecs::InstanceStatus::Stopped
        } else {
            ecs_janitor::ecs::InstanceStatus::Running
        }
    };
    let mut f: Vec<ecs_janitor::ecs::Instance> = (0..4000)
        .map(|k| {
            common::inst(
                &format!("i-{k:05}"),
                "cn-hangzhou",
                status(k),
                ecs_janitor::ecs::ChargeType::PostPaid,
            )
        })
        .collect();
    for i in f.iter_mut().take(50) {
        i.tags.insert("a".into(), "x".into());
    }
    // A long round trip, so that every page sent together is still waiting for its answer
    // when the last of them is sent, however slowly a loaded machine sends them.
    let faults = Faults {
        latency: Duration::from_millis(200),
        ..Faults::default()
    };
    let h = common::start_sim(f, faults, 3).await;
    let policies = common::policies(
        r#"
name: stopped
schedule: "0 0 * * * *"
regions: [cn-hangzhou]
select: {status: Stopped}
---
name: running
schedule: "0 0 * * * *"
regions: [cn-hangzhou]
select: {status: Running}
release: {force: true}
---
name: tagged
schedule: "0 0 * * * *"
regions: [cn-hangzhou]
select: {tags: {a: x}}
"#,
    );
    let accounts = ecs_janitor::ecs::Accounts::single(common::client(&h));
    let inv = ecs_janitor::inventory::fetch(&accounts, &policies)
        .await
        .unwrap();
    assert_eq!(inv.listings().len(), 3, "one query per policy");
    let pages = h
        .sim
        .calls()
        .iter()
        .filter(|c| c.action == "DescribeInstances")
        .count();
    assert_eq!(pages, 41, "twenty pages twice and one of the tag");
    // Eight a query, as before, would be 16 at most; a bound per query, 38.
    let peak = h.sim.take_peak_in_flight();
    let bound = ecs_janitor::inventory::PAGES_IN_FLIGHT;
    assert!(
        peak > 16 && peak <= bound,
        "the long listings' pages filled the region's bound of {bound}, and no more (peak {peak})"
    );
}
