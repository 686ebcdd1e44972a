//! The plan benchmark case, shared by `policy_plan` (figures with memory) and `pipeline`
//! (criterion): 20 policies and a fleet spread over four regions.

use chrono::{DateTime, Duration, TimeZone, Utc};
use ecs_janitor::ecs::{ChargeType, Instance, InstanceStatus};
use ecs_janitor::plan::EvalContext;
use ecs_janitor::policy;

pub fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap()
}

pub fn instance(id: &str, region: &str) -> Instance {
    Instance {
        instance_id: id.into(),
        instance_name: format!("runner-{id}"),
        region_id: region.into(),
        zone_id: format!("{region}-h"),
        status: InstanceStatus::Stopped,
        charge_type: ChargeType::PostPaid,
        instance_type: "ecs.g6.large".into(),
        creation_time: Some(now() - Duration::days(40)),
        expired_time: None,
        auto_release_time: None,
        deletion_protection: false,
        lock_reasons: Vec::new(),
        tags: ecs_janitor::ecs::Tags::from([("purpose".to_string(), "ci".to_string())]),
        resource_group_id: String::new(),
        stopped_mode: "KeepCharging".into(),
    }
}

/// Builds 20 policies and 100,000 instances over four regions. With `overlap`, groups of five
/// policies select the same instances (the worst case: most results are "also matched by"
/// skips); without, each policy selects its own team's instances, as real fleets do.
pub fn bench_case(
    overlap: bool,
    instances: usize,
) -> (Vec<policy::Policy>, Vec<Instance>, EvalContext) {
    let regions = ["cn-hangzhou", "cn-shanghai", "cn-beijing", "ap-southeast-1"];
    let mut yaml = String::new();
    for n in 0..20 {
        let team = if overlap { 0 } else { n };
        let select = match n % 4 {
            0 => format!("{{status: Stopped, tags: {{team: t{team}}}, name: 'runner-*'}}"),
            1 => format!("{{charge_type: PostPaid, tags: {{team: t{team}}}, instance_type: 'ecs.g6.*', created_before: 7d}}"),
            2 => format!("{{tags: {{team: t{team}, purpose: '*'}}, stopped_for: 1d}}"),
            _ => format!("{{expired_for: 3d, tags: {{team: t{team}}}}}\nrelease: {{terminate_subscription: true}}"),
        };
        yaml.push_str(&format!(
            "---\nname: p{n:02}\nschedule: '0 * * * * *'\nregions: [{}, {}]\nselect: {select}\n\
             exclude: {{tags: {{keep: 'true'}}}}\nlimits: {{max_releases_per_run: 100000}}\n",
            regions[n % 4],
            regions[(n + 1) % 4]
        ));
    }
    let policies = policy::load_str("bench.yaml", &yaml).unwrap().policies;
    let mut ctx = EvalContext::default();
    let inventory: Vec<Instance> = (0..instances)
        .map(|i| {
            let mut inst = instance(&format!("i-{i:06}"), regions[i % 4]);
            let team = if overlap { 0 } else { (i / 4) % 25 };
            inst.tags.insert("team".into(), format!("t{team}"));
            if i % 3 == 0 {
                ctx.observations
                    .insert(inst.instance_id.clone(), now() - Duration::days(2));
            }
            if i % 7 == 0 {
                inst.status = InstanceStatus::Running;
            }
            inst
        })
        .collect();
    (policies, inventory, ctx)
}
