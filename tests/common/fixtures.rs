//! Fixtures shared by the test suites and the benchmarks: instances, fleets and the policies
//! that select them. Standalone (only the library), so benches include it by path.
#![allow(dead_code)]

use chrono::Utc;
use ecs_janitor::ecs::{ChargeType, Instance, InstanceStatus, Tags};
use ecs_janitor::policy::{self, Policy};

/// Stopped pay-as-you-go CI runners in cn-hangzhou, released at once, up to 1,000 a run.
pub const CI_STOPPED: &str = r#"
name: ci-stopped
schedule: "0 */15 * * * *"
regions: [cn-hangzhou]
select:
  charge_type: PostPaid
  status: Stopped
  tags: {purpose: ci}
limits:
  max_releases_per_run: 1000
"#;

/// The policies of a YAML text (several separated by `---`); panics on a problem.
pub fn policies(yaml: &str) -> Vec<Policy> {
    policy::load_str("test.yaml", yaml)
        .unwrap_or_else(|d| panic!("the fixture policies do not load:\n{d}"))
        .policies
}

/// One instance created 30 days ago, untagged, as DescribeInstances lists it.
pub fn instance(id: &str, region: &str, status: InstanceStatus, charge: ChargeType) -> Instance {
    Instance {
        instance_id: id.into(),
        instance_name: format!("name-{id}"),
        region_id: region.into(),
        zone_id: format!("{region}-h"),
        status,
        charge_type: charge,
        instance_type: "ecs.g6.large".into(),
        creation_time: Some(Utc::now() - chrono::Duration::days(30)),
        expired_time: Some(ecs_janitor::sim::fleet::payg_expiry()),
        auto_release_time: None,
        deletion_protection: false,
        lock_reasons: vec![],
        tags: Tags::new(),
        resource_group_id: "rg-1".into(),
        stopped_mode: "KeepCharging".into(),
    }
}

/// `n` stopped pay-as-you-go instances `i-0000000`.. spread over `regions` in turn, each with
/// the tag `key=value`.
pub fn stopped_fleet(n: usize, regions: &[&str], key: &str, value: &str) -> Vec<Instance> {
    (0..n)
        .map(|i| {
            let mut inst = instance(
                &format!("i-{i:07}"),
                regions[i % regions.len()],
                InstanceStatus::Stopped,
                ChargeType::PostPaid,
            );
            inst.tags.insert(key.into(), value.into());
            inst
        })
        .collect()
}

/// `n` stopped pay-as-you-go instances `i-0`.. in cn-hangzhou tagged `purpose=ci`.
pub fn ci_fleet(n: usize) -> Vec<Instance> {
    (0..n)
        .map(|k| {
            let mut i = instance(
                &format!("i-{k}"),
                "cn-hangzhou",
                InstanceStatus::Stopped,
                ChargeType::PostPaid,
            );
            i.tags.insert("purpose".into(), "ci".into());
            i
        })
        .collect()
}
