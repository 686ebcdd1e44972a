//! The one decision a worker asks before every DeleteInstances, the first call and every retry:
//! given the batch, its members' live state (a fresh DescribeInstances), their policies, the
//! switches (pause, window, dry run) and now, what to do. Pure, so every rule has a table test.
//!
//! Why resending a token is safe: ECS keeps a ClientToken's answer. A call whose outcome is
//! unknown (a timeout, a lost answer) is resent with the same token only while every member is
//! still eligible right now (or gone, which is what a call that took effect leaves). If it took
//! effect, ECS replays its answer without acting again; if it did not, ECS acts now, on members
//! that were re-checked a moment ago. If any listed member changed (protected, no longer
//! selected, flags changed), the token is retired for good, because a token must never be sent
//! with another member set, and the still-eligible members go into a new batch with a new token.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::ecs::Instance;
use crate::plan::exempt::Exemption;
use crate::plan::{self, EvalContext};
use crate::policy::{account_of, Policy, ProtectionConfig};
use crate::store::{BatchMember, ClaimedBatch, MemberOutcome, PauseInfo, ReleaseId};
use crate::window::OperatingWindow;

/// The switches that hold at every call.
#[derive(Debug, Clone)]
pub struct Gate<'a> {
    /// `Some` while releases are paused (read from the database right before the decision).
    pub paused: Option<&'a PauseInfo>,
    /// `Some` while the running replicas run different policy sets (the daemon's last look).
    pub policy_sets_differ: Option<std::sync::Arc<str>>,
    pub window: Option<&'a OperatingWindow>,
    /// Nothing may be sent without DryRun.
    pub dry_run: bool,
    /// Tries a batch gets, counting re-checks that failed.
    pub max_tries: i64,
}

/// What the decision knows about the members right now.
#[derive(Debug, Clone, Copy)]
pub struct Live<'a> {
    /// The members DescribeInstances listed, by instance id.
    pub found: &'a HashMap<String, Instance>,
    /// When each member was first seen Stopped.
    pub observations: &'a HashMap<String, DateTime<Utc>>,
    /// Members some release already released (instance id → that release's id).
    pub released: &'a HashMap<String, ReleaseId>,
    /// Operators' exemptions in force (instance id → exemption), read right before the decision.
    pub exemptions: &'a HashMap<String, Exemption>,
    /// Members whose snapshots (`release.snapshot`) no longer all exist, with why.
    pub snapshots_gone: &'a HashMap<String, String>,
}

/// The loaded policies and protections the members are checked against.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    pub policies: &'a [Policy],
    pub protection: &'a ProtectionConfig,
}

/// What to do with a batch, applied by the store in one fenced write.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// Nothing may be sent now: give the batch back untouched until `until`.
    Wait { until: DateTime<Utc>, why: Stop },
    /// Out of tries: every member ends as `settle` says (failed, or outcome unknown).
    GiveUp {
        settle: Vec<(BatchMember, MemberOutcome)>,
    },
    /// Settle `settle`, then send DeleteInstances with the batch's token for exactly `send`.
    Send {
        settle: Vec<(BatchMember, MemberOutcome)>,
        send: Vec<BatchMember>,
    },
    /// The token was used and the member set changed: settle `settle`, retire the token, and put
    /// `keep` (release ids) into a new batch with a new token.
    Reform {
        settle: Vec<(BatchMember, MemberOutcome)>,
        keep: Vec<ReleaseId>,
    },
    /// Every member is settled; nothing to send.
    Done {
        settle: Vec<(BatchMember, MemberOutcome)>,
    },
}

/// Why nothing may be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    Paused(PauseInfo),
    PolicySetsDiffer(String),
    WindowClosed { opens: Option<DateTime<Utc>> },
    DryRun,
}

impl Stop {
    pub fn describe(&self) -> String {
        match self {
            Stop::Paused(p) => format!("releases are {}", p.describe()),
            Stop::PolicySetsDiffer(why) => why.clone(),
            Stop::WindowClosed { opens: Some(t) } => format!(
                "outside the operating window, which opens at {}",
                t.format("%Y-%m-%d %H:%M UTC")
            ),
            Stop::WindowClosed { opens: None } => {
                "outside the operating window, which never opens".to_string()
            }
            Stop::DryRun => "a dry run sends nothing without DryRun".to_string(),
        }
    }
}

/// Checks the switches alone: `Some` when nothing may be sent at `now`.
pub fn gate_stop(gate: &Gate<'_>, now: DateTime<Utc>) -> Option<(Stop, DateTime<Utc>)> {
    if gate.dry_run {
        return Some((Stop::DryRun, now + chrono::Duration::seconds(1)));
    }
    if let Some(p) = gate.paused {
        return Some((Stop::Paused(p.clone()), now + chrono::Duration::seconds(1)));
    }
    if let Some(why) = gate.policy_sets_differ.as_deref() {
        return Some((
            Stop::PolicySetsDiffer(why.to_string()),
            now + chrono::Duration::seconds(1),
        ));
    }
    if let Some(w) = gate.window {
        if !w.is_open(now) {
            let opens = w.next_open(now);
            let until = opens.unwrap_or(now + chrono::Duration::hours(1));
            return Some((Stop::WindowClosed { opens }, until));
        }
    }
    None
}

/// True when a call that ended with `code` may have taken effect: its answer was lost, or the
/// server failed in a way that does not say whether it acted.
pub fn outcome_unknown(code: &str) -> bool {
    matches!(
        code,
        "Janitor.Timeout"
            | "Janitor.LostAnswer"
            | "Janitor.UnreadableAnswer"
            | "InternalError"
            | "UnknownError"
    ) || code.starts_with("ServiceUnavailable")
        || code.starts_with("Janitor.Http5")
}

/// Whether the batch's token has been sent and some call's outcome is unknown: an answer
/// was lost (any call's: a later refusal does not undo it), or never recorded (the process died with the call in flight; a call clears the
/// batch's code when it is sent).
fn last_call_unknown(b: &ClaimedBatch) -> bool {
    b.attempts > 0 && (b.uncertain || b.last_code.as_deref().is_none_or(outcome_unknown))
}

/// The decision. `live` is `None` only for a batch with no members.
pub fn decide(
    b: &ClaimedBatch,
    live: &Live<'_>,
    rules: &Rules<'_>,
    gate: &Gate<'_>,
    now: DateTime<Utc>,
) -> Transition {
    if let Some((why, until)) = gate_stop(gate, now) {
        return Transition::Wait { until, why };
    }
    if b.tries >= gate.max_tries {
        return give_up(b);
    }
    let unknown = last_call_unknown(b);
    let mut settle = Vec::new();
    let mut keep = Vec::new();
    // Members not listed now, kept for an identical resend after a call of unknown outcome.
    let mut missing_kept = Vec::new();
    for m in &b.members {
        match judge(b, m, live, rules, now, unknown) {
            Verdict::Keep => keep.push(m.clone()),
            Verdict::KeepMissing => missing_kept.push(m.clone()),
            Verdict::Settle(o) => settle.push((m.clone(), o)),
        }
    }
    if b.attempts > 0 && !settle.is_empty() {
        // The set changed after the token was used: retire it. What went missing after a call
        // of unknown outcome may have been released by it, but that is no longer ours to know.
        for m in missing_kept {
            settle.push((
                m,
                MemberOutcome::Vanished {
                    detail: "no longer listed after a call whose answer was lost; its token was retired because other members changed".into(),
                },
            ));
        }
        if keep.is_empty() {
            return Transition::Done { settle };
        }
        return Transition::Reform {
            settle,
            keep: keep.iter().map(|m| m.release_id).collect(),
        };
    }
    keep.extend(missing_kept);
    if keep.is_empty() {
        return Transition::Done { settle };
    }
    keep.sort_by_key(|m| m.release_id);
    Transition::Send { settle, send: keep }
}

enum Verdict {
    Keep,
    KeepMissing,
    Settle(MemberOutcome),
}

fn cancel(reason: String) -> Verdict {
    Verdict::Settle(MemberOutcome::Cancelled {
        reason: format!("re-check before release: {reason}"),
    })
}

fn judge(
    b: &ClaimedBatch,
    m: &BatchMember,
    live: &Live<'_>,
    rules: &Rules<'_>,
    now: DateTime<Utc>,
    unknown: bool,
) -> Verdict {
    let Some(policy) = rules.policies.iter().find(|p| p.name == m.policy) else {
        return cancel(format!("policy {} is no longer loaded", m.policy));
    };
    if let Some(other) = live.released.get(&m.instance_id) {
        if *other != m.release_id {
            return cancel(format!(
                "already released by release {other}; ECS may list it for a while"
            ));
        }
    }
    let Some(inst) = live.found.get(&m.instance_id) else {
        if unknown {
            return Verdict::KeepMissing;
        }
        return Verdict::Settle(MemberOutcome::Vanished {
            detail: "not listed by DescribeInstances before our call: released by someone else, or invisible to these credentials".into(),
        });
    };
    if let Some(why) = live.snapshots_gone.get(&m.instance_id) {
        return cancel(format!(
            "{why}; the next pass queues it again, with new snapshots"
        ));
    }
    if policy.release.snapshot.is_some() && m.snapshot_days.is_none() {
        return cancel(format!(
            "policy {} now snapshots before releasing, and this release was queued without; the next pass queues it again with its snapshots",
            policy.name
        ));
    }
    if let Some(why) = against_policy(b, policy, inst, live, rules, now) {
        return cancel(why);
    }
    Verdict::Keep
}

/// Why `inst` may no longer be released under `policy` by batch `b`, or `None` when it may.
pub fn against_policy(
    b: &ClaimedBatch,
    policy: &Policy,
    inst: &Instance,
    live: &Live<'_>,
    rules: &Rules<'_>,
    now: DateTime<Utc>,
) -> Option<String> {
    let name = &policy.name;
    if policy.dry_run {
        return Some(format!("policy {name} is now dry_run: it releases nothing"));
    }
    if account_of(policy) != b.account {
        return Some(format!(
            "policy {name} now acts on account {:?}, not {:?}",
            account_of(policy),
            b.account
        ));
    }
    if policy.release.force != b.force
        || policy.release.terminate_subscription != b.terminate_subscription
    {
        return Some(format!(
            "policy {name} now releases with force={} terminate_subscription={}, not the \
             force={} terminate_subscription={} this release was queued with; the next pass \
             queues it again with the current flags",
            policy.release.force,
            policy.release.terminate_subscription,
            b.force,
            b.terminate_subscription
        ));
    }
    let ctx = EvalContext {
        observations: live
            .observations
            .get(&inst.instance_id)
            .map(|t| (inst.instance_id.clone(), *t))
            .into_iter()
            .collect(),
        // Released now, if at all: a subscription must have expired by now.
        queued: [(
            inst.instance_id.clone(),
            plan::QueuedInfo {
                policy: name.to_string(),
                not_before: now,
            },
        )]
        .into_iter()
        .collect(),
        exemptions: live
            .exemptions
            .get(&inst.instance_id)
            .map(|e| (inst.instance_id.clone(), e.clone()))
            .into_iter()
            .collect(),
        protection: rules.protection.clone(),
        ..EvalContext::default()
    };
    // Among every loaded policy of its account, as the plan decides: an instance that an
    // earlier policy now matches is that policy's (added, or made a dry run, since this
    // release was queued), whatever it then does with it.
    let others = rules
        .policies
        .iter()
        .filter(|p| account_of(p) == account_of(policy));
    let mut e = plan::Evaluation::among(std::slice::from_ref(policy), others, now);
    e.add(std::slice::from_ref(inst), &ctx);
    let p = e.finish();
    let pp = p.policies.first()?;
    if pp
        .releases
        .iter()
        .any(|r| r.instance_id == inst.instance_id)
    {
        return None;
    }
    Some(
        match pp.skips.iter().find(|s| s.instance_id == inst.instance_id) {
            Some(s) => s.detail.clone(),
            None => format!("no longer matches policy {name}"),
        },
    )
}

/// Out of tries: each member fails with the last code, or as "outcome unknown" when the last
/// call's answer was lost (it may have been released; the operator checks).
pub fn give_up(b: &ClaimedBatch) -> Transition {
    let last = b
        .last_code
        .clone()
        .unwrap_or_else(|| "Janitor.Exhausted".into());
    let (code, message) = if last_call_unknown(b) {
        (
            "Janitor.OutcomeUnknown".to_string(),
            format!(
                "outcome unknown: out of attempts ({} tries) after a call that ended with {last}; the instance may have been released: check it, then `queue retry`",
                b.tries
            ),
        )
    } else {
        (
            last.clone(),
            format!(
                "out of attempts ({} tries); the last ended with {last}",
                b.tries
            ),
        )
    };
    Transition::GiveUp {
        settle: b
            .members
            .iter()
            .map(|m| {
                (
                    m.clone(),
                    MemberOutcome::Failed {
                        code: code.clone(),
                        message: message.clone(),
                        request_id: None,
                        quarantine: None,
                    },
                )
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests;
