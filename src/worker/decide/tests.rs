//! The decision, case by case: every rule a release must pass right before a call.

use super::*;
use crate::ecs::types::{ChargeType, InstanceStatus};
use crate::store::Fence;
use crate::store::ReleaseId;

fn policy(yaml: &str) -> Policy {
    let text = format!(
        "name: ci\nschedule: \"0 0 * * * *\"\nregions: [cn-hangzhou]\nselect:\n  status: Stopped\n{yaml}"
    );
    crate::policy::load_bytes(vec![("p.yaml".into(), text.into_bytes())])
        .expect("test policy loads")
        .policies
        .remove(0)
}

fn inst(id: &str) -> Instance {
    Instance {
        instance_id: id.into(),
        instance_name: String::new(),
        region_id: "cn-hangzhou".into(),
        zone_id: "cn-hangzhou-h".into(),
        status: InstanceStatus::Stopped,
        charge_type: ChargeType::PostPaid,
        instance_type: "ecs.g7.large".into(),
        creation_time: None,
        expired_time: None,
        auto_release_time: None,
        deletion_protection: false,
        lock_reasons: Vec::new(),
        tags: Default::default(),
        resource_group_id: String::new(),
        stopped_mode: String::new(),
    }
}

fn member(n: i64) -> BatchMember {
    BatchMember {
        release_id: ReleaseId(n),
        instance_id: format!("i-{n}"),
        instance_name: String::new(),
        policy: "ci".into(),
        snapshot_days: None,
    }
}

fn batch(members: &[i64], attempts: i64, last_code: Option<&str>) -> ClaimedBatch {
    ClaimedBatch {
        fence: Fence {
            batch_id: crate::store::BatchId(1),
            owner: "w".into(),
            claims: 1,
        },
        account: String::new(),
        region: "cn-hangzhou".into(),
        force: false,
        terminate_subscription: false,
        client_token: "t".into(),
        attempts,
        tries: attempts,
        last_code: last_code.map(str::to_string),
        uncertain: false,
        members: members.iter().map(|n| member(*n)).collect(),
    }
}

struct World {
    found: HashMap<String, Instance>,
    obs: HashMap<String, DateTime<Utc>>,
    released: HashMap<String, ReleaseId>,
    exemptions: HashMap<String, crate::plan::exempt::Exemption>,
    snapshots_gone: HashMap<String, String>,
    policies: Vec<Policy>,
    protection: ProtectionConfig,
    paused: Option<PauseInfo>,
    differ: Option<std::sync::Arc<str>>,
    dry_run: bool,
}

impl World {
    fn new(listed: &[i64]) -> World {
        World {
            found: listed
                .iter()
                .map(|n| (format!("i-{n}"), inst(&format!("i-{n}"))))
                .collect(),
            obs: HashMap::new(),
            released: HashMap::new(),
            exemptions: HashMap::new(),
            snapshots_gone: HashMap::new(),
            policies: vec![policy("")],
            protection: ProtectionConfig::default(),
            paused: None,
            differ: None,
            dry_run: false,
        }
    }

    fn decide(&self, b: &ClaimedBatch) -> Transition {
        decide(
            b,
            &Live {
                found: &self.found,
                observations: &self.obs,
                released: &self.released,
                exemptions: &self.exemptions,
                snapshots_gone: &self.snapshots_gone,
            },
            &Rules {
                policies: &self.policies,
                protection: &self.protection,
            },
            &Gate {
                paused: self.paused.as_ref(),
                policy_sets_differ: self.differ.clone(),
                window: None,
                dry_run: self.dry_run,
                max_tries: 4,
            },
            now(),
        )
    }
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn sent(t: &Transition) -> Vec<i64> {
    match t {
        Transition::Send { send, .. } => send.iter().map(|m| m.release_id.0).collect(),
        _ => vec![],
    }
}

fn settled(t: &Transition) -> Vec<(i64, &'static str)> {
    let s = match t {
        Transition::Send { settle, .. }
        | Transition::Reform { settle, .. }
        | Transition::Done { settle }
        | Transition::GiveUp { settle } => settle,
        Transition::Wait { .. } => return vec![],
    };
    s.iter()
        .map(|(m, o)| {
            (
                m.release_id.0,
                match o {
                    MemberOutcome::Succeeded { .. } => "succeeded",
                    MemberOutcome::Failed { .. } => "failed",
                    MemberOutcome::Cancelled { .. } => "cancelled",
                    MemberOutcome::Vanished { .. } => "vanished",
                },
            )
        })
        .collect()
}

#[test]
fn all_eligible_first_call_sends_every_member() {
    let w = World::new(&[1, 2, 3]);
    let t = w.decide(&batch(&[1, 2, 3], 0, None));
    assert_eq!(sent(&t), vec![1, 2, 3]);
    assert!(settled(&t).is_empty());
}

#[test]
fn paused_sends_nothing_and_says_who() {
    let mut w = World::new(&[1]);
    w.paused = Some(PauseInfo {
        by: "alice".into(),
        reason: "incident".into(),
        at: None,
    });
    match w.decide(&batch(&[1], 0, None)) {
        Transition::Wait {
            why: Stop::Paused(p),
            ..
        } => assert_eq!(p.by, "alice"),
        other => panic!("expected a wait, got {other:?}"),
    }
}

#[test]
fn replicas_running_different_policy_sets_send_nothing_and_say_why() {
    let mut w = World::new(&[1]);
    w.differ = Some("the replicas run different policy sets (a run [p]; b run [p, q])".into());
    match w.decide(&batch(&[1], 0, None)) {
        Transition::Wait {
            why: Stop::PolicySetsDiffer(why),
            ..
        } => assert!(why.contains("b run [p, q]"), "{why}"),
        other => panic!("expected a wait, got {other:?}"),
    }
}

#[test]
fn dry_run_never_sends_even_a_batch_queued_earlier() {
    let mut w = World::new(&[1]);
    w.dry_run = true;
    let t = w.decide(&batch(&[1], 2, Some("Janitor.LostAnswer")));
    assert!(matches!(
        t,
        Transition::Wait {
            why: Stop::DryRun,
            ..
        }
    ));
}

#[test]
fn missing_before_the_first_call_is_vanished_not_released() {
    let w = World::new(&[1]);
    let t = w.decide(&batch(&[1, 2], 0, None));
    assert_eq!(sent(&t), vec![1]);
    assert_eq!(settled(&t), vec![(2, "vanished")]);
}

#[test]
fn protected_after_a_call_without_effect_retires_the_token() {
    let mut w = World::new(&[1, 2]);
    w.found
        .get_mut("i-2")
        .unwrap()
        .tags
        .insert("janitor:protect".into(), "true".into());
    let t = w.decide(&batch(&[1, 2], 1, Some("Janitor.Http503")));
    match &t {
        Transition::Reform { keep, .. } => assert_eq!(keep, &vec![1]),
        other => panic!("expected a re-form, got {other:?}"),
    }
    assert_eq!(settled(&t), vec![(2, "cancelled")]);
}

#[test]
fn protected_on_the_first_call_is_dropped_before_the_token_is_used() {
    let mut w = World::new(&[1, 2]);
    w.found
        .get_mut("i-1")
        .unwrap()
        .tags
        .insert("janitor:protect".into(), "true".into());
    let t = w.decide(&batch(&[1, 2], 0, None));
    assert_eq!(sent(&t), vec![2]);
    assert_eq!(settled(&t), vec![(1, "cancelled")]);
}

#[test]
fn lost_answer_with_members_gone_resends_the_identical_set() {
    // What a call that took effect leaves: the members are gone. The same token with the same
    // members gets ECS's stored answer.
    let w = World::new(&[2]);
    let t = w.decide(&batch(&[1, 2], 1, Some("Janitor.LostAnswer")));
    assert_eq!(sent(&t), vec![1, 2]);
}

#[test]
fn lost_answer_then_a_member_changed_retires_the_token_and_vanishes_the_missing() {
    let mut w = World::new(&[2, 3]);
    w.found.get_mut("i-3").unwrap().status = InstanceStatus::Running;
    let t = w.decide(&batch(&[1, 2, 3], 1, Some("Janitor.Timeout")));
    match &t {
        Transition::Reform { keep, .. } => assert_eq!(keep, &vec![2]),
        other => panic!("expected a re-form, got {other:?}"),
    }
    let mut s = settled(&t);
    s.sort();
    assert_eq!(s, vec![(1, "vanished"), (3, "cancelled")]);
}

#[test]
fn running_without_force_is_not_sent() {
    let mut w = World::new(&[1]);
    w.found.get_mut("i-1").unwrap().status = InstanceStatus::Running;
    let t = w.decide(&batch(&[1], 0, None));
    assert!(matches!(t, Transition::Done { .. }));
    assert_eq!(settled(&t), vec![(1, "cancelled")]);
}

/// A subscription renewed since it was queued is in its term again: ECS would refuse it, and a
/// grace period in the policy does not stretch "expired" at the call.
#[test]
fn a_subscription_renewed_since_it_was_queued_is_not_sent() {
    let mut w = World::new(&[1, 2]);
    w.policies = vec![policy(
        "release:\n  terminate_subscription: true\n  grace: 3d\n",
    )];
    for (n, expires) in [
        (1, chrono::Duration::hours(2)),
        (2, -chrono::Duration::hours(2)),
    ] {
        let i = w.found.get_mut(&format!("i-{n}")).unwrap();
        i.charge_type = ChargeType::PrePaid;
        i.expired_time = Some(now() + expires);
    }
    let mut b = batch(&[1, 2], 0, None);
    b.terminate_subscription = true;
    let t = w.decide(&b);
    assert_eq!(sent(&t), vec![2]);
    assert_eq!(settled(&t), vec![(1, "cancelled")]);
}

/// An instance an earlier policy in name order now matches is that policy's, also at the
/// call: a dry-run or refused policy added since the release was queued keeps it, as the plan
/// says (found reviewing the re-check: it weighed the release's own policy alone).
#[test]
fn an_instance_an_earlier_policy_now_matches_is_not_sent() {
    let mut w = World::new(&[1]);
    let mut keep = policy("dry_run: true\n");
    keep.name = "a-keep".into();
    w.policies.push(keep);
    let t = w.decide(&batch(&[1], 0, None));
    assert_eq!(sent(&t), Vec::<i64>::new());
    assert_eq!(settled(&t), vec![(1, "cancelled")]);
    // A later policy does not take it from its owner.
    let mut later = policy("dry_run: true\n");
    later.name = "z-later".into();
    w.policies = vec![policy(""), later];
    assert_eq!(sent(&w.decide(&batch(&[1], 0, None))), vec![1]);
}

#[test]
fn a_policy_no_longer_loaded_cancels() {
    let mut w = World::new(&[1]);
    w.policies.clear();
    assert_eq!(
        settled(&w.decide(&batch(&[1], 0, None))),
        vec![(1, "cancelled")]
    );
}

#[test]
fn changed_flags_cancel_for_a_requeue_with_the_current_ones() {
    let mut w = World::new(&[1]);
    w.policies = vec![policy("release:\n  force: true\n")];
    assert_eq!(
        settled(&w.decide(&batch(&[1], 0, None))),
        vec![(1, "cancelled")]
    );
}

#[test]
fn a_policy_now_dry_run_cancels() {
    let mut w = World::new(&[1]);
    w.policies = vec![policy("dry_run: true\n")];
    assert_eq!(
        settled(&w.decide(&batch(&[1], 0, None))),
        vec![(1, "cancelled")]
    );
}

#[test]
fn already_released_by_another_release_is_not_sent_again() {
    let mut w = World::new(&[1]);
    w.released.insert("i-1".into(), ReleaseId(77));
    assert_eq!(
        settled(&w.decide(&batch(&[1], 0, None))),
        vec![(1, "cancelled")]
    );
}

#[test]
fn out_of_tries_after_a_lost_answer_is_outcome_unknown() {
    let w = World::new(&[1]);
    let mut b = batch(&[1], 4, Some("Janitor.LostAnswer"));
    b.tries = 4;
    match w.decide(&b) {
        Transition::GiveUp { settle } => match &settle[0].1 {
            MemberOutcome::Failed { code, .. } => assert_eq!(code, "Janitor.OutcomeUnknown"),
            o => panic!("{o:?}"),
        },
        other => panic!("expected give-up, got {other:?}"),
    }
}

#[test]
fn out_of_tries_after_refusals_fails_with_the_code() {
    let w = World::new(&[1]);
    let mut b = batch(&[1], 2, Some("Throttling"));
    b.tries = 4;
    match w.decide(&b) {
        Transition::GiveUp { settle } => match &settle[0].1 {
            MemberOutcome::Failed { code, .. } => assert_eq!(code, "Throttling"),
            o => panic!("{o:?}"),
        },
        other => panic!("expected give-up, got {other:?}"),
    }
}

#[test]
fn nothing_left_is_done() {
    let w = World::new(&[]);
    let t = w.decide(&batch(&[1], 0, None));
    assert!(matches!(t, Transition::Done { .. }));
}

#[test]
fn a_call_whose_answer_was_never_recorded_is_resent_identically() {
    // The process died with the call in flight: no code was recorded after it was sent.
    let w = World::new(&[]);
    let t = w.decide(&batch(&[1, 2], 1, None));
    assert_eq!(sent(&t), vec![1, 2]);
}

#[test]
fn a_lost_answer_stays_uncertain_after_a_later_refusal() {
    // Call 1's answer was lost (it may have released i-1); call 2 was throttled. i-1 is gone:
    // the identical resend gets ECS's stored answer, it is not "vanished".
    let w = World::new(&[2]);
    let mut b = batch(&[1, 2], 2, Some("Throttling"));
    b.uncertain = true;
    assert_eq!(sent(&w.decide(&b)), vec![1, 2]);
}

#[test]
fn an_exemption_tag_set_after_queueing_stops_the_call() {
    let mut w = World::new(&[1, 2, 3]);
    let tags = &mut w.found.get_mut("i-2").unwrap().tags;
    tags.insert("janitor:exempt-until".into(), "2026-12-20".into());
    // A malformed value protects too (fail safe).
    let tags = &mut w.found.get_mut("i-3").unwrap().tags;
    tags.insert("janitor:exempt-until".into(), "next week".into());
    let t = w.decide(&batch(&[1, 2, 3], 0, None));
    assert_eq!(sent(&t), vec![1]);
    assert_eq!(settled(&t), vec![(2, "cancelled"), (3, "cancelled")]);
    let Transition::Send { settle, .. } = &t else {
        unreachable!()
    };
    let MemberOutcome::Cancelled { reason } = &settle[0].1 else {
        unreachable!()
    };
    assert_eq!(
        reason,
        "re-check before release: exempt until 2026-12-21T12:00:00Z by tag janitor:exempt-until"
    );
}

#[test]
fn an_operators_exemption_recorded_after_queueing_stops_the_call_and_an_ended_one_does_not() {
    let mut w = World::new(&[1, 2]);
    w.exemptions.insert(
        "i-1".into(),
        crate::plan::exempt::Exemption {
            until: now() + chrono::Duration::hours(1),
            by: "alice@ops (cli)".into(),
            reason: "keep for the audit".into(),
        },
    );
    w.exemptions.insert(
        "i-2".into(),
        crate::plan::exempt::Exemption {
            until: now(),
            by: "bob@ops (cli)".into(),
            reason: "ended".into(),
        },
    );
    let t = w.decide(&batch(&[1, 2], 1, Some("Janitor.Http503")));
    match &t {
        Transition::Reform { keep, .. } => assert_eq!(keep, &vec![ReleaseId(2)]),
        other => panic!("expected a re-form without i-1, got {other:?}"),
    }
    assert_eq!(settled(&t), vec![(1, "cancelled")]);
}

#[test]
fn a_policy_that_now_snapshots_cancels_a_release_queued_without() {
    let mut w = World::new(&[1]);
    w.policies = vec![policy("release:\n  snapshot: {retention_days: 7}\n")];
    let t = w.decide(&batch(&[1], 0, None));
    assert_eq!(settled(&t), vec![(1, "cancelled")]);
    assert!(sent(&t).is_empty());
    // Queued with its snapshots (the claim only takes it once they are accomplished): sent.
    let mut b = batch(&[1], 0, None);
    b.members[0].snapshot_days = Some(7);
    assert_eq!(sent(&w.decide(&b)), vec![1]);
}

#[test]
fn a_snapshot_gone_since_the_stage_cancels_its_member_before_the_call() {
    let mut w = World::new(&[1, 2]);
    w.policies = vec![policy("release:\n  snapshot: {retention_days: 1}\n")];
    w.snapshots_gone.insert(
        "i-1".into(),
        "snapshot s-1 of disk d-1 no longer exists".into(),
    );
    let mut b = batch(&[1, 2], 0, None);
    for m in &mut b.members {
        m.snapshot_days = Some(1);
    }
    let t = w.decide(&b);
    assert_eq!(sent(&t), vec![2]);
    assert_eq!(settled(&t), vec![(1, "cancelled")]);
}
