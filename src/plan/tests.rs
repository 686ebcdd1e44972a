//! Table cases and properties of the evaluation core.

use super::*;
use crate::policy;
use chrono::TimeZone;
use proptest::prelude::*;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0)
        .single()
        .unwrap_or_default()
}

fn policies(yaml: &str) -> Vec<Policy> {
    match policy::load_str("test.yaml", yaml) {
        Ok(set) => set.policies,
        Err(d) => panic!("test policy invalid:\n{d}"),
    }
}

pub(super) fn inst(id: &str) -> Instance {
    Instance {
        instance_id: id.into(),
        instance_name: format!("ci-{id}"),
        region_id: "cn-hangzhou".into(),
        zone_id: "cn-hangzhou-h".into(),
        status: InstanceStatus::Stopped,
        charge_type: ChargeType::PostPaid,
        instance_type: "ecs.g6.large".into(),
        creation_time: Some(now() - chrono::Duration::days(30)),
        expired_time: None,
        auto_release_time: None,
        deletion_protection: false,
        lock_reasons: Vec::new(),
        tags: crate::ecs::Tags::from([("purpose".to_string(), "ci".to_string())]),
        resource_group_id: "rg-1".into(),
        stopped_mode: String::new(),
    }
}

const BASIC: &str = "
name: stopped-ci
schedule: '0 */15 * * * *'
regions: [cn-hangzhou]
select: {status: Stopped, tags: {purpose: ci}, name: 'ci-*'}
";

fn eval(ps: &[Policy], inv: &[Instance]) -> Plan {
    evaluate(ps, inv, &EvalContext::default(), now())
}

fn only_skip(plan: &Plan) -> &SkipReason {
    assert_eq!(plan.policies[0].skips.len(), 1, "{plan:#?}");
    &plan.policies[0].skips[0].reason
}

#[test]
fn basic_match_plans_with_reasons() {
    let plan = eval(&policies(BASIC), &[inst("a")]);
    let r = &plan.policies[0].releases[0];
    assert_eq!(r.instance_id, "a");
    assert_eq!(r.not_before, now());
    assert!(
        r.reasons.iter().any(|x| x == "status is Stopped"),
        "{:?}",
        r.reasons
    );
    assert!(r.reasons.iter().any(|x| x == "tag purpose=ci"));
    assert_eq!(plan.summary().to_release, 1);
}

#[test]
fn protections_table() {
    type Mutation = Box<dyn Fn(&mut Instance)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (
            Box::new(|i| {
                i.tags.insert("janitor:protect".into(), "true".into());
            }),
            "protected",
        ),
        (
            Box::new(|i| i.deletion_protection = true),
            "deletion_protection",
        ),
        (
            Box::new(|i| i.lock_reasons.push("security".into())),
            "security_locked",
        ),
        (Box::new(|i| i.status = InstanceStatus::Running), "no match"),
        (Box::new(|i| i.tags.clear()), "no match"),
        (Box::new(|i| i.region_id = "cn-beijing".into()), "no match"),
        (Box::new(|i| i.status = InstanceStatus::Unknown), "no match"),
        (
            Box::new(|i| {
                i.tags.insert("janitor:protect".into(), "false".into());
            }),
            "planned",
        ),
        (
            Box::new(|i| i.lock_reasons.push("financial".into())),
            "planned",
        ),
    ];
    for (mutate, want) in cases {
        let mut i = inst("a");
        mutate(&mut i);
        let plan = eval(&policies(BASIC), &[i]);
        let pp = &plan.policies[0];
        let got = match (pp.releases.len(), pp.skips.first()) {
            (1, None) => "planned",
            (0, Some(s)) => s.reason.code(),
            (0, None) => "no match",
            _ => "??",
        };
        assert_eq!(got, want);
    }
}

/// A tag that reads as the protect tag, however it is cased, spaced or valued, protects (found
/// trying a fleet tagged `janitor:protect=True`, `=yes`, `=1` and `Janitor:Protect=true`: all
/// six were released); only a value that says no leaves the instance to its policy.
#[test]
fn a_misspelt_protect_tag_protects_and_says_how_to_spell_it() {
    for (k, v) in [
        ("janitor:protect", "True"),
        ("janitor:protect", "TRUE"),
        ("janitor:protect", "yes"),
        ("janitor:protect", "1"),
        ("janitor:protect", " true"),
        ("janitor:protect", ""),
        ("Janitor:Protect", "true"),
        ("janitor_protect", "true"),
        (" janitor:protect ", "true"),
    ] {
        let mut i = inst("a");
        i.tags.insert(k.into(), v.into());
        let plan = eval(&policies(BASIC), &[i]);
        assert!(
            plan.policies[0].releases.is_empty(),
            "{k}={v:?} was planned"
        );
        let skip = &plan.policies[0].skips[0];
        assert_eq!(skip.reason, SkipReason::Protected { tag: k.into() });
        assert!(
            skip.detail
                .contains("is not spelled as `janitor:protect=true`; write it so, or remove it"),
            "{}",
            skip.detail
        );
    }
    for v in ["false", "No", "0", "off"] {
        let mut i = inst("a");
        i.tags.insert("Janitor:Protect".into(), v.into());
        let plan = eval(&policies(BASIC), &[i]);
        assert_eq!(plan.policies[0].releases.len(), 1, "{v:?} says no");
    }
    // One lookalike saying no does not outweigh another saying yes, whichever sorts first.
    let mut i = inst("a");
    i.tags.insert("Janitor:Protect".into(), "false".into());
    i.tags.insert("janitor:protect".into(), "yes".into());
    assert!(eval(&policies(BASIC), &[i]).policies[0].releases.is_empty());
}

#[test]
fn security_lock_allowed_by_policy() {
    let ps = policies(&format!(
        "{BASIC}release: {{allow_security_locked: true}}\n"
    ));
    let mut i = inst("a");
    i.lock_reasons.push("security".into());
    let plan = eval(&ps, &[i, inst("b")]);
    assert_eq!(plan.policies[0].releases.len(), 2);
    // The plan warns that the locked one's disks go too, in text and JSON, and only for it.
    let text = super::render::render_text(&plan, false);
    let warned: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(super::SECURITY_LOCK_WARNING))
        .collect();
    assert_eq!(warned.len(), 1, "{text}");
    let a_at = text.find(" a ").unwrap();
    let b_at = text.find(" b ").unwrap();
    let w_at = text.find(super::SECURITY_LOCK_WARNING).unwrap();
    assert!(
        (a_at < w_at) && (b_at < a_at || w_at < b_at),
        "the warning sits under the locked instance: {text}"
    );
    let json = super::render::render_json(&plan);
    let releases = json["policies"][0]["releases"].as_array().unwrap();
    let by_id = |id: &str| releases.iter().find(|r| r["instance_id"] == id).unwrap();
    assert_eq!(by_id("a")["security_locked"], true);
    assert_eq!(by_id("a")["warnings"][0], super::SECURITY_LOCK_WARNING);
    assert_eq!(by_id("b")["security_locked"], false);
    assert_eq!(by_id("b")["warnings"].as_array().unwrap().len(), 0);
}

#[test]
fn custom_protect_tag_key() {
    let mut i = inst("a");
    i.tags.insert("keep-me".into(), "true".into());
    let ctx = EvalContext {
        protection: ProtectionConfig {
            protect_tag_key: "keep-me".into(),
            ..ProtectionConfig::default()
        },
        ..Default::default()
    };
    let plan = evaluate(&policies(BASIC), &[i], &ctx, now());
    assert_eq!(
        only_skip(&plan),
        &SkipReason::Protected {
            tag: "keep-me".into()
        }
    );
}

#[test]
fn stopped_for_needs_an_old_enough_observation() {
    let ps = policies(
        "name: p\nschedule: '0 * * * * *'\nregions: [cn-hangzhou]\nselect: {stopped_for: 2h}\n",
    );
    let i = inst("a");
    let plan = eval(&ps, std::slice::from_ref(&i));
    assert_eq!(
        only_skip(&plan),
        &SkipReason::StoppedSinceUnknown { first_seen: None }
    );
    assert!(plan.policies[0].skips[0]
        .detail
        .contains("not yet seen stopped"));

    let mut ctx = EvalContext::default();
    let seen = now() - chrono::Duration::hours(1);
    ctx.observations.insert("a".into(), seen);
    let plan = evaluate(&ps, std::slice::from_ref(&i), &ctx, now());
    assert_eq!(
        only_skip(&plan),
        &SkipReason::StoppedSinceUnknown {
            first_seen: Some(seen)
        }
    );
    assert!(plan.policies[0].skips[0]
        .detail
        .contains("first seen stopped at 2025-06-01T11:00:00Z"));

    ctx.observations
        .insert("a".into(), now() - chrono::Duration::hours(2));
    let plan = evaluate(&ps, std::slice::from_ref(&i), &ctx, now());
    assert_eq!(plan.policies[0].releases.len(), 1);

    // A running instance is simply not matched, however long ago it was seen stopped.
    let mut running = i.clone();
    running.status = InstanceStatus::Running;
    let plan = evaluate(&ps, &[running], &ctx, now());
    assert!(plan.policies[0].releases.is_empty() && plan.policies[0].skips.is_empty());
}

#[test]
fn expiry_and_creation_table() {
    let ps = policies(
        "name: p\nschedule: '0 * * * * *'\nregions: [cn-hangzhou]\n\
         select: {expired_for: 3d, created_before: 7d}\nrelease: {terminate_subscription: true}\n",
    );
    let days = chrono::Duration::days;
    // (charge type, expired days ago, created days ago, planned?)
    let cases = [
        (ChargeType::PrePaid, 3, 30, true),
        (ChargeType::PrePaid, 2, 30, false),
        (ChargeType::PostPaid, 10, 30, false),
        (ChargeType::PrePaid, 10, 6, false),
        (ChargeType::PrePaid, 10, 7, true),
    ];
    for (ct, exp, created, want) in cases {
        let mut i = inst("a");
        i.charge_type = ct;
        i.expired_time = Some(now() - days(exp));
        i.creation_time = Some(now() - days(created));
        let plan = eval(&ps, &[i]);
        assert_eq!(
            plan.policies[0].releases.len() == 1,
            want,
            "{ct} {exp} {created}"
        );
    }
}

#[test]
fn exclude_any_condition() {
    let ps = policies(&format!(
        "{BASIC}exclude: {{tags: {{keep: 'true', team: '*'}}}}\n"
    ));
    let mut kept = inst("a");
    kept.tags.insert("team".into(), "x".into());
    let plan = eval(&ps, &[kept, inst("b")]);
    let ids: Vec<_> = plan.policies[0]
        .releases
        .iter()
        .map(|r| r.instance_id.as_str())
        .collect();
    assert_eq!(ids, ["b"]);
}

#[test]
fn first_policy_in_name_order_claims() {
    let yaml = format!("{BASIC}---\n{}", BASIC.replace("stopped-ci", "a-first"));
    let plan = eval(&policies(&yaml), &[inst("x")]);
    assert_eq!(plan.policies[0].policy, "a-first");
    assert_eq!(plan.policies[0].releases[0].also_matched_by, ["stopped-ci"]);
    assert_eq!(
        plan.policies[1].skips[0].reason,
        SkipReason::AlsoMatchedBy {
            policy: "a-first".into()
        }
    );
    assert_eq!(plan.summary().to_release, 1);
}

#[test]
fn refused_policy_plans_nothing_and_keeps_its_claims() {
    let yaml = format!(
        "{}limits: {{max_releases_per_run: 1}}\n---\n{BASIC}",
        BASIC.replace("stopped-ci", "a-first")
    );
    let plan = eval(&policies(&yaml), &[inst("x"), inst("y")]);
    let first = &plan.policies[0];
    assert_eq!(first.refused, Some(Refusal { count: 2, limit: 1 }));
    assert!(first.releases.is_empty());
    assert!(first
        .skips
        .iter()
        .all(|s| s.reason == SkipReason::OverLimit));
    assert!(plan.policies[1].releases.is_empty());
    let s = plan.summary();
    assert_eq!((s.to_release, s.skipped, s.policies_refused), (0, 4, 1));
    let text = render_text(&plan, false);
    assert!(text.contains("refused: 2 releases would exceed"));
    assert!(
        text.ends_with("Plan: 0 to release, 4 skipped, 1 policy refused.\n"),
        "{text}"
    );
}

#[test]
fn grace_and_queue() {
    let ps = policies(&format!("{BASIC}release: {{grace: 1h}}\n"));
    let plan = eval(&ps, &[inst("a")]);
    let until = now() + chrono::Duration::hours(1);
    assert_eq!(plan.policies[0].releases[0].not_before, until);
    assert_eq!(only_skip(&plan), &SkipReason::GracePending { until });
    assert_eq!(plan.summary().to_release, 0);

    let mut ctx = EvalContext::default();
    let queued = now() - chrono::Duration::minutes(5);
    ctx.queued.insert(
        "a".into(),
        QueuedInfo {
            policy: "stopped-ci".into(),
            not_before: queued,
        },
    );
    let plan = evaluate(&ps, &[inst("a")], &ctx, now());
    assert_eq!(plan.policies[0].releases[0].not_before, queued);
    assert!(plan.policies[0].skips.is_empty());
}

#[test]
fn ecs_would_refuse_without_flags() {
    let ps = policies(
        "name: p\nschedule: '0 * * * * *'\nregions: [cn-hangzhou]\nselect: {tags: {purpose: ci}}\n",
    );
    let mut running = inst("a");
    running.status = InstanceStatus::Running;
    let mut sub = inst("b");
    sub.charge_type = ChargeType::PrePaid;
    let plan = eval(&ps, &[running, sub]);
    let codes: Vec<_> = plan.policies[0]
        .skips
        .iter()
        .map(|s| s.reason.code())
        .collect();
    assert_eq!(codes, ["requires_force", "requires_terminate_subscription"]);
}

/// ECS releases a subscription only once it has expired (ChargeTypeViolation before): one that
/// is still in its term when it would be released is skipped with its expiry, one that has
/// expired by then is planned (found trying a policy of stopped subscriptions: those expiring in
/// 2027 were planned, then refused by ECS one split call after another).
#[test]
fn a_subscription_in_its_term_is_not_planned() {
    let ps = policies(
        "name: p\nschedule: '0 * * * * *'\nregions: [cn-hangzhou]\nselect: {tags: {purpose: ci}}\n\
         release: {terminate_subscription: true, grace: 2h}\n",
    );
    let sub = |id: &str, expires: chrono::Duration| {
        let mut i = inst(id);
        i.charge_type = ChargeType::PrePaid;
        i.expired_time = Some(now() + expires);
        i
    };
    let plan = eval(
        &ps,
        &[
            sub("term", chrono::Duration::days(30)),
            sub("in-grace", chrono::Duration::hours(1)),
            sub("expired", -chrono::Duration::days(3)),
        ],
    );
    let pp = &plan.policies[0];
    let planned: Vec<&str> = pp.releases.iter().map(|r| r.instance_id.as_str()).collect();
    assert_eq!(planned, ["in-grace", "expired"]);
    let term = pp.skips.iter().find(|s| s.instance_id == "term").unwrap();
    assert_eq!(
        term.reason,
        SkipReason::SubscriptionNotExpired {
            expires: now() + chrono::Duration::days(30)
        }
    );
    assert!(term
        .detail
        .contains("ECS releases a subscription only once it has expired"));
    let json = render_json(&plan).to_string();
    assert!(
        json.contains(r#""code":"subscription_not_expired","expires":"#),
        "{json}"
    );
}

#[test]
fn text_and_json_render() {
    let mut protected = inst("p");
    protected.deletion_protection = true;
    let plan = eval(&policies(BASIC), &[inst("a"), protected]);
    let text = render_text(&plan, false);
    assert!(
        text.contains("- a (ci-a) in cn-hangzhou will be released"),
        "{text}"
    );
    assert!(text.contains("p in cn-hangzhou skipped: deletion protection is on"));
    assert!(text
        .trim_end()
        .ends_with("Plan: 1 to release, 1 skipped, 0 policies refused."));
    assert!(!text.contains('\x1b'));
    assert!(render_text(&plan, true).contains("\x1b[1m"));
    let json = render_json(&plan);
    assert_eq!(json["version"], 1);
    assert_eq!(json["summary"]["to_release"], 1);
    assert_eq!(
        json["policies"][0]["skips"][0]["reason"]["code"],
        "deletion_protection"
    );
}

#[test]
fn saved_plan_round_trip_and_errors() {
    let plan = eval(&policies(BASIC), &[inst("a")]);
    let saved = SavedPlan::from_plan(&plan);
    assert_eq!(saved.releases.len(), 1);
    let dir = std::env::temp_dir().join(format!("ecs-janitor-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("plan.json");
    saved.save(&path).unwrap();
    assert_eq!(SavedPlan::load(&path).unwrap(), saved);
    let p = Path::new("x.json");
    let e = SavedPlan::from_json(p, "{not json").unwrap_err();
    assert!(
        e.to_string().contains("not a valid ecs-janitor plan file"),
        "{e}"
    );
    let e = SavedPlan::from_json(p, r#"{"version": 9, "created_at": "x", "releases": []}"#)
        .unwrap_err();
    assert!(e.to_string().contains("version 9 is not supported"), "{e}");
    let e = SavedPlan::from_json(p, r#"{"version": 1, "created_at": "2025-01-01T00:00:00Z"}"#)
        .unwrap_err();
    assert!(e.to_string().contains("releases"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
use std::path::Path;

// ---- properties ----

const STATUSES: [InstanceStatus; 6] = [
    InstanceStatus::Pending,
    InstanceStatus::Running,
    InstanceStatus::Starting,
    InstanceStatus::Stopping,
    InstanceStatus::Stopped,
    InstanceStatus::Unknown,
];
const REGIONS: [&str; 3] = ["cn-hangzhou", "cn-shanghai", "us-west-1"];

fn arb_instance() -> impl Strategy<Value = Instance> {
    (
        0usize..40,
        0usize..6,
        any::<bool>(),
        0usize..3,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        0i64..20,
        0usize..3,
    )
        .prop_map(
            |(id, st, prepaid, region, protect, delprot, locked, age, purpose)| {
                let mut i = inst(&format!("i-{id}"));
                i.status = STATUSES[st];
                i.charge_type = if prepaid {
                    ChargeType::PrePaid
                } else {
                    ChargeType::PostPaid
                };
                i.region_id = REGIONS[region].into();
                i.deletion_protection = delprot;
                if locked {
                    i.lock_reasons.push("security".into());
                }
                if protect {
                    i.tags.insert("janitor:protect".into(), "true".into());
                }
                i.tags
                    .insert("purpose".into(), ["ci", "web", "db"][purpose].into());
                i.creation_time = Some(now() - chrono::Duration::days(age));
                i.expired_time = Some(now() - chrono::Duration::days(age - 5));
                i
            },
        )
}

/// A handful of varied policies: different regions, flags, limits and selections.
fn arb_policies() -> impl Strategy<Value = Vec<Policy>> {
    let one = (
        0usize..4,
        0usize..3,
        any::<bool>(),
        any::<bool>(),
        1u32..6,
        any::<bool>(),
    );
    proptest::collection::vec(one, 1..5).prop_map(|specs| {
        let docs: Vec<String> = specs
            .iter()
            .enumerate()
            .map(|(n, (sel, region, force, terminate, limit, allow_locked))| {
                let select = [
                    "{tags: {purpose: ci}}",
                    "{status: [Stopped, Running]}",
                    "{created_before: 7d, charge_type: PrePaid}",
                    "{name: 'ci-*'}",
                ][*sel];
                // Keep the validator's cross-key rules satisfied.
                let force = *force || *sel == 1;
                let terminate = *terminate || *sel == 2;
                format!(
                    "name: p{n}\nschedule: '0 * * * * *'\nregions: [{}]\nselect: {select}\n\
                     release: {{force: {force}, terminate_subscription: {terminate}, allow_security_locked: {allow_locked}}}\n\
                     limits: {{max_releases_per_run: {limit}}}\n",
                    if *region == 0 { "cn-hangzhou".to_string() } else { format!("{}, cn-hangzhou", REGIONS[*region]) }
                )
            })
            .collect();
        policies(&docs.join("---\n"))
    })
}

proptest! {
    #[test]
    fn invariants(ps in arb_policies(), mut inv in proptest::collection::vec(arb_instance(), 0..30)) {
        for (n, i) in inv.iter_mut().enumerate() {
            i.instance_id = format!("i-{n}");
        }
        let plan = evaluate(&ps, &inv, &EvalContext::default(), now());
        let by_id: HashMap<&str, &Instance> = inv.iter().map(|i| (i.instance_id.as_str(), i)).collect();
        let mut seen = std::collections::HashSet::new();
        for pp in &plan.policies {
            let policy = ps.iter().find(|p| p.name == pp.policy).unwrap();
            if pp.refused.is_some() {
                prop_assert!(pp.releases.is_empty(), "a refused policy plans nothing");
            }
            prop_assert!(pp.releases.len() <= policy.limits.max_releases_per_run as usize);
            for r in &pp.releases {
                prop_assert!(seen.insert(r.instance_id.clone()), "no instance is planned twice");
                prop_assert!(policy.regions.contains(&r.region), "planned only in its policy's regions");
                let i = by_id[r.instance_id.as_str()];
                prop_assert!(i.tags.get("janitor:protect").map(String::as_str) != Some("true"));
                prop_assert!(!i.deletion_protection);
                prop_assert!(!i.security_locked() || policy.release.allow_security_locked);
                prop_assert!(i.status != InstanceStatus::Unknown);
            }
        }
        let names: Vec<_> = plan.policies.iter().map(|p| p.policy.clone()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        prop_assert_eq!(names, sorted);
    }

    /// Fed region by region (as a pass lets each region's instances go once planned), the
    /// evaluation makes the plan it makes of the whole inventory: limits count every region,
    /// and an instance two policies match is claimed the same way.
    #[test]
    fn planning_region_by_region_makes_the_same_plan(ps in arb_policies(), mut inv in proptest::collection::vec(arb_instance(), 0..30)) {
        for (n, i) in inv.iter_mut().enumerate() {
            i.instance_id = format!("i-{n}");
        }
        inv.sort_by(|a, b| a.region_id.cmp(&b.region_id));
        let whole = evaluate(&ps, &inv, &EvalContext::default(), now());
        let mut e = Evaluation::new(&ps, now());
        for part in inv.chunk_by(|a, b| a.region_id == b.region_id) {
            e.add(part, &EvalContext::default());
        }
        prop_assert_eq!(e.finish(), whole);
    }

    /// A tick or `--policy` evaluates some of the loaded policies: each plans what it plans
    /// in a plan of the whole set (the same releases and the same skips), so none releases
    /// what an earlier policy left out of it owns, refused or not.
    #[test]
    fn some_policies_plan_what_they_plan_among_all(ps in arb_policies(), mut inv in proptest::collection::vec(arb_instance(), 0..30), pick in proptest::collection::vec(any::<bool>(), 4)) {
        for (n, i) in inv.iter_mut().enumerate() {
            i.instance_id = format!("i-{n}");
        }
        let some: Vec<Policy> = ps.iter().zip(pick.iter().cycle()).filter(|(_, k)| **k).map(|(p, _)| p.clone()).collect();
        let whole = evaluate(&ps, &inv, &EvalContext::default(), now());
        let mut e = Evaluation::among(&some, &ps, now());
        e.add(&inv, &EvalContext::default());
        let part = e.finish();
        prop_assert_eq!(part.policies.len(), some.len());
        for pp in &part.policies {
            let full = whole.policies.iter().find(|w| w.policy == pp.policy).unwrap();
            let ids = |p: &PolicyPlan| p.releases.iter().map(|r| r.instance_id.clone()).collect::<Vec<_>>();
            prop_assert_eq!(ids(pp), ids(full));
            prop_assert_eq!(&pp.skips, &full.skips);
            prop_assert_eq!(&pp.refused, &full.refused);
        }
    }

    /// Whatever the policy, an instance carrying the protect tag is never planned.
    #[test]
    fn protect_tag_always_wins(ps in arb_policies(), mut inv in proptest::collection::vec(arb_instance(), 1..20)) {
        for i in &mut inv {
            i.tags.insert("janitor:protect".into(), "true".into());
        }
        let plan = evaluate(&ps, &inv, &EvalContext::default(), now());
        prop_assert_eq!(plan.releases().count(), 0);
    }
}
