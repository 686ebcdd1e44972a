//! The pacer says when a quota holds a pass. In a test binary of its own: its log capture is a
//! thread's own subscriber, and other tests hitting the same log line on other threads at the
//! same moment made it miss the line now and then (tracing caches each call site's interest).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use ecs_janitor::sim::{SimConfig, Simulator};

#[tokio::test]
async fn waiting_out_a_quota_is_said_once_a_hold() {
    // A pass that meets a quota waits, and says so: a `plan` that would otherwise sit silent
    // for up to a minute tells which API of which region is held, for how long, and at what
    // pace it goes on.
    let (captured, _guard) = common::capture_logs();
    let fleet = common::fixtures::stopped_fleet(1000, &["cn-hangzhou"], "purpose", "ci");
    let cfg = SimConfig {
        quotas: BTreeMap::from([("DescribeInstances".to_string(), 3)]),
        quota_window: Duration::from_millis(300),
        ..SimConfig::default()
    };
    let h = Simulator::new(cfg, fleet)
        .serve(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let policies = common::policies(
        "name: ci\nschedule: \"0 0 * * * *\"\nregions: [cn-hangzhou]\nselect: {status: Stopped}\n",
    );
    let accounts = ecs_janitor::ecs::Accounts::single(common::client_paced(&h, Default::default()));
    let inv = ecs_janitor::inventory::fetch(&accounts, &policies)
        .await
        .unwrap();
    assert_eq!(inv.listings()[0].listed.len(), 1000, "every page listed");
    let throttled = h
        .sim
        .calls()
        .iter()
        .filter(|c| c.outcome == "Throttling.User")
        .count();
    assert!(
        throttled > 0,
        "the quota was reached: the test means something"
    );
    let logs = captured.text();
    let said: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("ECS throttled DescribeInstances in cn-hangzhou"))
        .collect();
    assert!(!said.is_empty(), "the hold is said:\n{logs}");
    assert!(
        said.len() <= throttled,
        "at most once a throttled answer ({} lines, {throttled} throttled):\n{logs}",
        said.len()
    );
    assert!(
        said[0].contains("its calls wait") && said[0].contains("a second"),
        "{}",
        said[0]
    );
}
