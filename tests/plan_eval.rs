//! The plan core end to end through the public API: the shipped policies against a small fleet,
//! and the JSON document's stable shape. The time to evaluate 100,000 instances against 20
//! policies is measured by `cargo bench --bench policy_plan`.

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
        tags: ecs_janitor::ecs::Tags::from([("purpose".to_string(), "ci".to_string())]),
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
    assert_eq!(v["generated_at"], "2025-06-01T12:00:00.000Z");
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
