//! The plan core end to end through the public API: the shipped policies against a small fleet,
//! the JSON document's stable shape, and (ignored by default, run in release) the time to
//! evaluate 100,000 instances against 20 policies.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Duration, TimeZone, Utc};
use ecs_janitor::ecs::{ChargeType, Instance, InstanceStatus};
use ecs_janitor::plan::{self, EvalContext, SavedPlan, SkipReason};
use ecs_janitor::policy;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap()
}

fn instance(id: &str, region: &str) -> Instance {
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
        tags: BTreeMap::from([("purpose".to_string(), "ci".to_string())]),
        resource_group_id: String::new(),
        stopped_mode: "KeepCharging".into(),
    }
}

fn shipped() -> Vec<policy::Policy> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    policy::load_dir(&dir)
        .unwrap_or_else(|d| panic!("{d}"))
        .policies
}

#[test]
fn shipped_policies_against_a_small_fleet() {
    let mut expired_sub = instance("i-sub", "cn-shanghai");
    expired_sub.charge_type = ChargeType::PrePaid;
    expired_sub.expired_time = Some(now() - Duration::days(8));
    let mut fresh_sub = expired_sub.clone();
    fresh_sub.instance_id = "i-sub-fresh".into();
    fresh_sub.expired_time = Some(now() - Duration::days(2));
    let long_stopped = instance("i-old", "cn-hangzhou");
    let just_stopped = instance("i-new", "cn-hangzhou");
    let mut kept = instance("i-kept", "cn-hangzhou");
    kept.tags.insert("keep".into(), "true".into());
    let mut protected = instance("i-prot", "cn-hangzhou");
    protected
        .tags
        .insert("janitor:protect".into(), "true".into());
    let elsewhere = instance("i-far", "us-west-1");

    let mut ctx = EvalContext::default();
    for id in ["i-old", "i-kept", "i-prot", "i-far"] {
        ctx.observations
            .insert(id.into(), now() - Duration::days(2));
    }
    ctx.observations
        .insert("i-new".into(), now() - Duration::hours(1));
    let inventory = [
        expired_sub,
        fresh_sub,
        long_stopped,
        just_stopped,
        kept,
        protected,
        elsewhere,
    ];
    let plan = plan::evaluate(&shipped(), &inventory, &ctx, now());

    let subs = &plan.policies[0];
    assert_eq!(subs.policy, "release-expired-subscriptions");
    assert_eq!(subs.releases.len(), 1);
    assert_eq!(subs.releases[0].instance_id, "i-sub");
    assert!(subs.releases[0].terminate_subscription);
    // grace: 1d, so it is planned but pending.
    assert_eq!(subs.releases[0].not_before, now() + Duration::days(1));
    assert!(matches!(
        subs.skips[0].reason,
        SkipReason::GracePending { .. }
    ));

    let payg = &plan.policies[1];
    let planned: Vec<_> = payg
        .releases
        .iter()
        .map(|r| r.instance_id.as_str())
        .collect();
    assert_eq!(planned, ["i-old"]);
    let skipped: Vec<_> = payg
        .skips
        .iter()
        .map(|s| (s.instance_id.as_str(), s.reason.code()))
        .collect();
    assert_eq!(
        skipped,
        [("i-new", "stopped_since_unknown"), ("i-prot", "protected")]
    );

    let text = plan::render_text(&plan, false);
    assert!(
        text.ends_with("Plan: 1 to release, 3 skipped, 0 policies refused.\n"),
        "{text}"
    );

    // Only non-refused, non-dry-run releases are saved, grace included.
    let saved = SavedPlan::from_plan(&plan);
    let ids: Vec<_> = saved
        .releases
        .iter()
        .map(|r| r.instance_id.as_str())
        .collect();
    assert_eq!(ids, ["i-sub", "i-old"]);
}

#[test]
fn json_document_shape_is_stable() {
    let mut p = instance("i-1", "cn-hangzhou");
    p.deletion_protection = true;
    let mut ctx = EvalContext::default();
    ctx.observations
        .insert("i-1".into(), now() - Duration::days(3));
    ctx.observations
        .insert("i-2".into(), now() - Duration::days(3));
    let plan = plan::evaluate(
        &shipped(),
        &[p, instance("i-2", "cn-hangzhou")],
        &ctx,
        now(),
    );
    let v = plan::render_json(&plan);
    assert_eq!(v["version"], 1);
    assert_eq!(v["generated_at"], "2025-06-01T12:00:00Z");
    let pol = &v["policies"][1];
    assert_eq!(pol["name"], "release-stopped-payg-tagged");
    assert_eq!(pol["dry_run"], false);
    assert!(pol["refused"].is_null());
    let r = &pol["releases"][0];
    for key in [
        "instance_id",
        "region",
        "instance_name",
        "force",
        "terminate_subscription",
        "not_before",
        "pending",
        "reasons",
        "also_matched_by",
    ] {
        assert!(r.get(key).is_some(), "release lacks {key}");
    }
    assert_eq!(pol["skips"][0]["reason"]["code"], "deletion_protection");
    assert_eq!(v["summary"]["to_release"], 1);
    assert_eq!(v["summary"]["skipped"], 1);
    assert_eq!(v["summary"]["policies_refused"], 0);
}

/// Builds 20 policies and 100,000 instances over four regions. With `overlap`, groups of five
/// policies select the same instances (the worst case: most results are "also matched by"
/// skips); without, each policy selects its own team's instances, as real fleets do.
fn bench_case(overlap: bool) -> (Vec<policy::Policy>, Vec<Instance>, EvalContext) {
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
    let inventory: Vec<Instance> = (0..100_000)
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

/// `cargo test --release --test plan_eval -- --ignored --nocapture`
#[test]
#[ignore]
fn hundred_thousand_instances_twenty_policies() {
    for overlap in [false, true] {
        let (policies, inventory, ctx) = bench_case(overlap);
        let start = std::time::Instant::now();
        let plan = plan::evaluate(&policies, &inventory, &ctx, now());
        let took = start.elapsed();
        println!(
            "evaluate (overlap: {overlap}): 100000 instances x 20 policies in {took:?}: {:?}",
            plan.summary()
        );
        if !cfg!(debug_assertions) && !overlap {
            assert!(took.as_millis() < 200, "took {took:?}");
        }
    }
}
