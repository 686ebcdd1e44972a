//! The pure evaluation core: (policies, inventory, observations, queue, now) → which instances
//! each policy would release and why, and which it skips and why.
//!
//! Nothing here reads a clock, a file or the network, so every decision can be tested with
//! table cases and property tests. Rules, in the order they apply to an instance and a policy:
//!
//! 1. Only instances in one of the policy's regions, with a known status, are considered.
//! 2. `select` must fully hold and no `exclude` condition may hold. An instance that would match
//!    except that it has not been seen Stopped long enough is skipped as "stopped since unknown".
//! 3. Protections (protect tag, DeletionProtection, `security` lock unless allowed) skip it.
//! 4. The first policy in name order that matches an instance claims it, even if that policy
//!    then skips it or is refused: a later policy reports "also matched by" and never plans it.
//!    This is the conservative choice: a refused or protecting policy never hands its
//!    instances to another.
//! 5. An instance ECS would refuse to release with this policy's flags (not Stopped without
//!    `force`, PrePaid without `terminate_subscription`) is skipped.
//! 6. If the policy's would-be releases exceed `limits.max_releases_per_run`, it is refused as a
//!    whole: nothing from it is planned, and each would-be release is listed as over the limit.
//! 7. A planned release whose `not_before` (now + grace, or the queued time) is in the future is
//!    also reported as a "grace pending" skip: it stays planned (so the queue keeps it) but is
//!    not released in this run.

pub mod exempt;
mod mark;
mod render;
mod saved;
pub mod savings;

pub use mark::MarkNote;
pub use render::{render_json, render_text, render_text_with, TextOptions, JSON_FORMAT_VERSION};
pub use saved::{SavedPlan, SavedPlanError, SavedRelease};
pub use savings::{Basis, Billing, PriceBook, Saving, Source};

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::ecs::{ChargeType, Instance, InstanceStatus};
use crate::policy::{Policy, ProtectionConfig, Selector};

/// A release already in the queue, from an earlier run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedInfo {
    pub policy: String,
    pub not_before: DateTime<Utc>,
}

/// What evaluation knows besides the inventory: facts ecs-janitor recorded itself.
#[derive(Debug, Clone, Default)]
pub struct EvalContext {
    /// Instance id → when ecs-janitor first saw it Stopped (continuously since).
    pub observations: HashMap<String, DateTime<Utc>>,
    /// Instance id → its active queued release.
    pub queued: HashMap<String, QueuedInfo>,
    /// (instance id, policy) → why an operator's hold or a quarantine keeps it out, in words.
    pub holds: HashMap<(String, String), String>,
    /// Instance id → when ecs-janitor released it: ECS may list it for a while afterwards.
    pub released: HashMap<String, DateTime<Utc>>,
    /// Instance id → an operator's exemption (`ecs-janitor exempt`), active or not.
    pub exemptions: HashMap<String, exempt::Exemption>,
    pub protection: ProtectionConfig,
}

/// The decisions for every policy evaluated, in policy name order.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The `now` the plan was evaluated at.
    pub generated_at: DateTime<Utc>,
    pub policies: Vec<PolicyPlan>,
}

/// One policy's decisions.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyPlan {
    pub policy: String,
    /// The account the policy acts on (`account:`), `None` for the default credentials.
    pub account: Option<String>,
    pub dry_run: bool,
    /// Instances to release (empty when refused), in inventory order.
    pub releases: Vec<PlannedRelease>,
    pub skips: Vec<Skip>,
    /// Set when the policy would exceed its blast-radius limit.
    pub refused: Option<Refusal>,
    /// Set when the policy could not be planned (a region of it could not be listed): why.
    pub error: Option<String>,
}

/// An instance a policy will release.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRelease {
    pub instance_id: String,
    pub region: String,
    pub instance_name: String,
    pub policy: String,
    pub force: bool,
    pub terminate_subscription: bool,
    /// Not released before this: now + grace, or the queued time if already queued.
    pub not_before: DateTime<Utc>,
    /// The conditions that matched, in words.
    pub reasons: Vec<String>,
    /// Later policies (in name order) that selected it too.
    pub also_matched_by: Vec<String>,
    /// It holds a `security` lock (the policy allows those): ECS releases every one of its
    /// disks with it, whatever their `DeleteWithInstance`.
    pub security_locked: bool,
    pub instance_type: String,
    pub status: InstanceStatus,
    /// `KeepCharging`, `StopCharging` or `Not-applicable`, as DescribeInstances says.
    pub stopped_mode: String,
    pub charge_type: ChargeType,
    pub created_at: Option<DateTime<Utc>>,
    /// What releasing it saves per month; `None` until the plan is priced
    /// (`pricing::price_plan`), which evaluation does not do. Boxed: a plan may hold a fleet's
    /// releases, and most of a release's size would otherwise be this.
    pub saving: Option<Box<Saving>>,
    /// Its mark on the instance, for a release waiting out its grace under a policy that marks;
    /// `None` until `marks::annotate`, which evaluation does not do.
    pub mark: Option<MarkNote>,
}

/// The plan's warning for a security-locked release.
pub const SECURITY_LOCK_WARNING: &str = "security-locked: ECS releases all of its disks with it, even those set to outlive it (DeleteWithInstance=false)";

impl PlannedRelease {
    /// What a reviewer must know before this release goes ahead.
    pub fn warnings(&self) -> Vec<&'static str> {
        if self.security_locked {
            vec![SECURITY_LOCK_WARNING]
        } else {
            Vec::new()
        }
    }

    /// True when the release waits for its grace period to end.
    pub fn is_pending(&self, now: DateTime<Utc>) -> bool {
        self.not_before > now
    }

    /// What pricing needs to know about how it is billed.
    pub fn billing(&self) -> Billing<'_> {
        Billing {
            instance_id: &self.instance_id,
            region: &self.region,
            instance_type: &self.instance_type,
            status: self.status,
            stopped_mode: &self.stopped_mode,
            charge_type: self.charge_type,
            security_locked: self.security_locked,
        }
    }
}

/// Savings summed over releases, each currency apart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavingsTotals {
    /// Whether any release was priced (an unpriced plan shows no figures at all).
    pub priced: bool,
    /// The run-rate saved per month by releases due now.
    pub due: crate::money::Totals,
    /// The run-rate of releases waiting out their grace.
    pub pending: crate::money::Totals,
    /// A month of renewal avoided (subscriptions), not in `due` or `pending`.
    pub renewal_avoided: crate::money::Totals,
    /// What disks that stay after their instance keep costing per month.
    pub staying: crate::money::Totals,
    pub staying_disks: usize,
    /// Releases due now whose saving is unknown (not counted above).
    pub unknown: usize,
    /// Releases waiting out their grace whose saving is unknown (not counted above).
    pub pending_unknown: usize,
}

impl SavingsTotals {
    /// Sums `releases`, due or pending at `now`.
    pub fn of<'a>(
        releases: impl IntoIterator<Item = &'a PlannedRelease>,
        now: DateTime<Utc>,
    ) -> SavingsTotals {
        let mut t = SavingsTotals::default();
        for r in releases {
            let Some(s) = &r.saving else { continue };
            t.priced = true;
            match &s.monthly {
                Some(m) if r.is_pending(now) => t.pending.add(m),
                Some(m) => t.due.add(m),
                None if r.is_pending(now) => t.pending_unknown += 1,
                None => t.unknown += 1,
            }
            if let Some(m) = &s.renewal_avoided {
                t.renewal_avoided.add(m);
            }
            if let Some(m) = &s.staying_monthly {
                t.staying.add(m);
            }
            t.staying_disks += s.staying_disks;
        }
        t
    }
}

/// An instance a policy considered and did not release now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub instance_id: String,
    pub region: String,
    pub policy: String,
    pub reason: SkipReason,
    /// The reason in words, for people.
    pub detail: String,
}

/// Why an instance was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// Carries the protect tag (its key is given) with value `true`.
    Protected {
        tag: String,
    },
    DeletionProtection,
    /// A `security` operation lock, and the policy does not allow releasing those.
    SecurityLocked,
    /// Planned, but its grace period runs until `until`.
    GracePending {
        until: DateTime<Utc>,
    },
    /// `stopped_for` cannot be confirmed: never seen Stopped, or seen too recently.
    StoppedSinceUnknown {
        first_seen: Option<DateTime<Utc>>,
    },
    /// Would be released, but the policy was refused for exceeding its limit.
    OverLimit,
    /// Claimed by an earlier policy in name order.
    AlsoMatchedBy {
        policy: String,
    },
    /// Not Stopped, and the policy does not set `release.force`: ECS would refuse.
    RequiresForce {
        status: InstanceStatus,
    },
    /// A subscription, and the policy does not set `release.terminate_subscription`.
    RequiresTerminateSubscription,
    /// A subscription that has not expired by the time it would be released: ECS would refuse.
    SubscriptionNotExpired {
        expires: DateTime<Utc>,
    },
    /// An operator's hold (a cancel) or a quarantine after a permanent refusal.
    Held,
    /// Already released by ecs-janitor; ECS still lists it while the release completes.
    Released {
        at: DateTime<Utc>,
    },
    /// Exempt until `until`, by its tag or an operator.
    Exempt {
        until: DateTime<Utc>,
        by: exempt::ExemptBy,
        reason: String,
    },
    /// Its exemption tag is unreadable or reaches beyond the limit: protected until fixed.
    ExemptionInvalid {
        tag: String,
        value: String,
        problem: String,
    },
}

impl SkipReason {
    /// A stable machine name, used by the JSON output.
    pub fn code(&self) -> &'static str {
        match self {
            SkipReason::Protected { .. } => "protected",
            SkipReason::DeletionProtection => "deletion_protection",
            SkipReason::SecurityLocked => "security_locked",
            SkipReason::GracePending { .. } => "grace_pending",
            SkipReason::StoppedSinceUnknown { .. } => "stopped_since_unknown",
            SkipReason::OverLimit => "over_limit",
            SkipReason::AlsoMatchedBy { .. } => "also_matched_by",
            SkipReason::RequiresForce { .. } => "requires_force",
            SkipReason::RequiresTerminateSubscription => "requires_terminate_subscription",
            SkipReason::SubscriptionNotExpired { .. } => "subscription_not_expired",
            SkipReason::Held => "held",
            SkipReason::Released { .. } => "released",
            SkipReason::Exempt { .. } => "exempt",
            SkipReason::ExemptionInvalid { .. } => "exemption_invalid",
        }
    }
}

/// A policy refused for its blast radius.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// How many releases it would have planned.
    pub count: usize,
    pub limit: u32,
}

impl Refusal {
    pub fn message(&self) -> String {
        format!(
            "refused: {} releases would exceed limits.max_releases_per_run {}; nothing planned",
            self.count, self.limit
        )
    }
}

/// Counts for the summary line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlanSummary {
    /// Releases due now (not waiting for grace).
    pub to_release: usize,
    /// Skips of every kind, including grace pending.
    pub skipped: usize,
    /// Planned releases waiting for grace (also counted in `skipped`).
    pub pending: usize,
    pub policies_refused: usize,
    /// Policies that could not be planned (a region could not be listed).
    pub policies_failed: usize,
    /// Releases due now of dry-run policies: never carried out, so not in `to_release` (their
    /// releases waiting out a grace are in `skipped`, not in `pending`).
    pub dry_run: usize,
}

impl Plan {
    pub fn summary(&self) -> PlanSummary {
        let mut s = PlanSummary::default();
        for p in &self.policies {
            s.skipped += p.skips.len();
            s.policies_refused += usize::from(p.refused.is_some());
            s.policies_failed += usize::from(p.error.is_some());
            let pending = p
                .releases
                .iter()
                .filter(|r| r.is_pending(self.generated_at))
                .count();
            if p.dry_run {
                s.dry_run += p.releases.len() - pending;
                continue;
            }
            s.pending += pending;
            s.to_release += p.releases.len() - pending;
        }
        s
    }

    /// Every planned release across policies (each instance at most once).
    pub fn releases(&self) -> impl Iterator<Item = &PlannedRelease> {
        self.policies.iter().flat_map(|p| p.releases.iter())
    }

    /// The savings of every release the plan carries out (dry-run policies' are apart).
    pub fn savings(&self) -> SavingsTotals {
        self.savings_where(false)
    }

    /// What dry-run policies' releases would save, were they carried out.
    pub fn dry_run_savings(&self) -> SavingsTotals {
        self.savings_where(true)
    }

    fn savings_where(&self, dry_run: bool) -> SavingsTotals {
        let releases = self
            .policies
            .iter()
            .filter(|p| p.dry_run == dry_run)
            .flat_map(|p| p.releases.iter());
        SavingsTotals::of(releases, self.generated_at)
    }
}

/// How one instance fares against one policy's conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    No,
    /// Everything holds except `stopped_for`, which cannot be confirmed yet.
    StoppedUnknown(Option<DateTime<Utc>>),
    Yes,
}

/// Evaluates `policies` against `inventory` at `now`. Pure and deterministic.
pub fn evaluate(
    policies: &[Policy],
    inventory: &[Instance],
    ctx: &EvalContext,
    now: DateTime<Utc>,
) -> Plan {
    let mut e = Evaluation::new(policies, now);
    e.add(inventory, ctx);
    e.finish()
}

/// An evaluation fed its inventory in parts (an (account, region) at a time, in order), so
/// that each part can be let go once planned; the plan is the one [`evaluate`] makes of the
/// parts put end to end, as long as no instance is in two parts. What spans parts, each
/// policy's `max_releases_per_run` and grace, is decided by [`Evaluation::finish`].
pub struct Evaluation<'p> {
    /// The policies in name order (the first to match an instance claims it).
    order: Vec<&'p Policy>,
    /// Per policy of `order`: whether it only claims what it matches (a loaded policy outside
    /// this evaluation, see [`Evaluation::among`]): it plans nothing and is not in the plan.
    claims_only: Vec<bool>,
    /// Each policy's plan so far: its skips (its releases come at the end).
    plans: Vec<PolicyPlan>,
    /// Each policy's candidates so far, in inventory order.
    candidates: Vec<Vec<PlannedRelease>>,
    now: DateTime<Utc>,
}

impl<'p> Evaluation<'p> {
    pub fn new(policies: &'p [Policy], now: DateTime<Utc>) -> Self {
        Self::among(policies, [], now)
    }

    /// Evaluates `policies` where `others` are loaded too (the rest of the set, when a tick or
    /// `--policy` takes some): an instance one of them matches first in name order is theirs,
    /// so `policies` skip it as *also matched by* it, as in a plan of the whole set. Only
    /// their conditions are read: whether the owner would skip or is refused does not change
    /// who owns it, and the instances `policies` can release are all in this inventory.
    pub fn among(
        policies: &'p [Policy],
        others: impl IntoIterator<Item = &'p Policy>,
        now: DateTime<Utc>,
    ) -> Self {
        let mut order: Vec<(&Policy, bool)> = policies
            .iter()
            .map(|p| (p, false))
            .chain(
                others
                    .into_iter()
                    .filter(|o| !policies.iter().any(|p| p.name == o.name))
                    .map(|o| (o, true)),
            )
            .collect();
        order.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        let (order, claims_only): (Vec<&Policy>, Vec<bool>) = order.into_iter().unzip();
        let plans = order
            .iter()
            .map(|policy| PolicyPlan {
                policy: policy.name.clone(),
                account: policy.account.clone(),
                dry_run: policy.dry_run,
                releases: Vec::new(),
                skips: Vec::new(),
                refused: None,
                error: None,
            })
            .collect();
        let candidates = order.iter().map(|_| Vec::new()).collect();
        Evaluation {
            order,
            claims_only,
            plans,
            candidates,
            now,
        }
    }

    /// Evaluates every policy against one part of the inventory.
    pub fn add(&mut self, inventory: &[Instance], ctx: &EvalContext) {
        let now = self.now;
        // Index by region once, so each policy only walks its own regions.
        let mut by_region: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, inst) in inventory.iter().enumerate() {
            by_region
                .entry(inst.region_id.as_str())
                .or_default()
                .push(i);
        }
        // Which policy claimed each instance, and its candidate's index if it has one.
        let mut claimed: Vec<Option<(usize, Option<usize>)>> = vec![None; inventory.len()];
        for (pi, policy) in self.order.iter().enumerate() {
            let mut found: Vec<(usize, PlannedRelease)> = Vec::new();
            let mut regions: Vec<&str> = policy.regions.iter().map(String::as_str).collect();
            regions.sort_unstable();
            regions.dedup();
            for region in regions {
                let Some(indices) = by_region.get(region) else {
                    continue;
                };
                for &ii in indices {
                    let inst = &inventory[ii];
                    let skip = |reason: SkipReason, detail: String| Skip {
                        instance_id: inst.instance_id.clone(),
                        region: inst.region_id.clone(),
                        policy: policy.name.clone(),
                        reason,
                        detail,
                    };
                    let plan = &mut self.plans[pi];
                    let matched = matches(policy, inst, ctx, now);
                    if self.claims_only[pi] {
                        if matched == Match::Yes && claimed[ii].is_none() {
                            claimed[ii] = Some((pi, None));
                        }
                        continue;
                    }
                    match matched {
                        Match::No => continue,
                        Match::StoppedUnknown(first_seen) => {
                            let detail = match first_seen {
                                Some(t) => format!(
                                    "stopped since unknown, first seen stopped at {}",
                                    fmt_time(t)
                                ),
                                None => "stopped since unknown: not yet seen stopped".to_string(),
                            };
                            plan.skips
                                .push(skip(SkipReason::StoppedSinceUnknown { first_seen }, detail));
                            continue;
                        }
                        Match::Yes => {}
                    }
                    let earlier = claimed[ii];
                    if earlier.is_none() {
                        claimed[ii] = Some((pi, None));
                    }
                    if let Some((reason, detail)) = protection(policy, inst, ctx, now) {
                        plan.skips.push(skip(reason, detail));
                        continue;
                    }
                    if let Some((owner, candidate)) = earlier {
                        let owner_name = self.plans[owner].policy.clone();
                        if let Some(ci) = candidate {
                            self.candidates[owner][ci]
                                .also_matched_by
                                .push(policy.name.clone());
                        }
                        let detail = format!("also matched by {owner_name}, which comes first");
                        self.plans[pi].skips.push(skip(
                            SkipReason::AlsoMatchedBy { policy: owner_name },
                            detail,
                        ));
                        continue;
                    }
                    if inst.status != InstanceStatus::Stopped && !policy.release.force {
                        let detail = format!(
                            "instance is {}; ECS releases only Stopped instances unless release.force is true",
                            inst.status
                        );
                        plan.skips.push(skip(
                            SkipReason::RequiresForce {
                                status: inst.status,
                            },
                            detail,
                        ));
                        continue;
                    }
                    if inst.charge_type == ChargeType::PrePaid
                        && !policy.release.terminate_subscription
                    {
                        plan.skips.push(skip(
                            SkipReason::RequiresTerminateSubscription,
                            "a subscription instance; ECS releases it only with release.terminate_subscription: true".into(),
                        ));
                        continue;
                    }
                    if let Some(at) = ctx.released.get(&inst.instance_id) {
                        plan.skips.push(skip(
                            SkipReason::Released { at: *at },
                            format!(
                                "released by ecs-janitor at {}; ECS still lists it while the release completes",
                                fmt_time(*at)
                            ),
                        ));
                        continue;
                    }
                    if let Some(why) = ctx
                        .holds
                        .get(&(inst.instance_id.clone(), policy.name.clone()))
                    {
                        plan.skips.push(skip(SkipReason::Held, why.clone()));
                        continue;
                    }
                    let not_before = match ctx.queued.get(&inst.instance_id) {
                        Some(q) => q.not_before,
                        None => now + policy.release.grace,
                    };
                    // DeleteInstances releases a subscription only once it has expired
                    // (ChargeTypeViolation before): one that is still running its term when
                    // it would be released is not planned.
                    if let Some(expires) = inst
                        .expired_time
                        .filter(|t| inst.charge_type == ChargeType::PrePaid && *t > not_before)
                    {
                        plan.skips.push(skip(
                            SkipReason::SubscriptionNotExpired { expires },
                            format!(
                                "a subscription that expires at {}; ECS releases a subscription only once it has expired",
                                fmt_time(expires)
                            ),
                        ));
                        continue;
                    }
                    found.push((
                        ii,
                        PlannedRelease {
                            instance_id: inst.instance_id.clone(),
                            region: inst.region_id.clone(),
                            instance_name: inst.instance_name.clone(),
                            policy: policy.name.clone(),
                            force: policy.release.force,
                            terminate_subscription: policy.release.terminate_subscription,
                            not_before,
                            reasons: reasons(&policy.select, inst, ctx),
                            also_matched_by: Vec::new(),
                            security_locked: inst.security_locked(),
                            instance_type: inst.instance_type.clone(),
                            status: inst.status,
                            stopped_mode: inst.stopped_mode.clone(),
                            charge_type: inst.charge_type,
                            created_at: inst.creation_time,
                            saving: None,
                            mark: None,
                        },
                    ));
                }
            }
            // Walk regions in a stable order but report in inventory order.
            found.sort_by_key(|(ii, _)| *ii);
            let candidates = &mut self.candidates[pi];
            // Grown by what each part adds, not doubled: a plan's releases are its bulk.
            candidates.reserve_exact(found.len());
            for (ii, r) in found {
                claimed[ii] = Some((pi, Some(candidates.len())));
                candidates.push(r);
            }
        }
    }

    /// The plan: each policy's candidates are its releases, or, more than its
    /// `max_releases_per_run`, all refused.
    pub fn finish(self) -> Plan {
        let now = self.now;
        let mut out = Vec::with_capacity(self.plans.len());
        for (((policy, mut plan), candidates), claims_only) in self
            .order
            .iter()
            .zip(self.plans)
            .zip(self.candidates)
            .zip(self.claims_only)
        {
            if claims_only {
                continue;
            }
            let limit = policy.limits.max_releases_per_run;
            if candidates.len() > usize::try_from(limit).unwrap_or(usize::MAX) {
                let refusal = Refusal {
                    count: candidates.len(),
                    limit,
                };
                for r in candidates {
                    plan.skips.push(Skip {
                        instance_id: r.instance_id,
                        region: r.region,
                        policy: r.policy,
                        reason: SkipReason::OverLimit,
                        detail: refusal.message(),
                    });
                }
                plan.refused = Some(refusal);
            } else {
                for r in candidates.iter().filter(|r| r.not_before > now) {
                    plan.skips.push(Skip {
                        instance_id: r.instance_id.clone(),
                        region: r.region.clone(),
                        policy: r.policy.clone(),
                        reason: SkipReason::GracePending {
                            until: r.not_before,
                        },
                        detail: format!("grace pending until {}", fmt_time(r.not_before)),
                    });
                }
                // Moved, and no larger than it needs to be: it is the largest part of a plan.
                plan.releases = candidates;
                plan.releases.shrink_to_fit();
            }
            out.push(plan);
        }
        Plan {
            generated_at: now,
            policies: out,
        }
    }
}

/// RFC 3339 in UTC to the second, as every time in plans is shown.
pub(crate) fn fmt_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// What keeps `inst` out of `policy` whatever the policy says: the protect tag, deletion
/// protection, a security lock, an exemption.
fn protection(
    policy: &Policy,
    inst: &Instance,
    ctx: &EvalContext,
    now: DateTime<Utc>,
) -> Option<(SkipReason, String)> {
    let protection = &ctx.protection;
    let key = &protection.protect_tag_key;
    if inst.tags.get(key).map(String::as_str) == Some(ProtectionConfig::PROTECT_VALUE) {
        let detail = format!("protected by tag {key}=true");
        return Some((SkipReason::Protected { tag: key.clone() }, detail));
    }
    if let Some(near) = near_protect(inst, key) {
        return Some(near);
    }
    if inst.deletion_protection {
        return Some((
            SkipReason::DeletionProtection,
            "deletion protection is on".into(),
        ));
    }
    if inst.security_locked() && !policy.release.allow_security_locked {
        return Some((
            SkipReason::SecurityLocked,
            "security lock: releasing it would also release disks set to outlive it; set release.allow_security_locked to allow".into(),
        ));
    }
    exempt::exemption(inst, ctx, now)
}

/// A tag key as a person may have meant it: case, spaces around it, and `:`, `_` or a space
/// where `-` is written, all set aside (`Janitor_Protect ` reads as `janitor-protect`).
pub(crate) fn tag_key_normal(k: &str) -> String {
    k.trim().to_ascii_lowercase().replace([':', '_', ' '], "-")
}

/// A tag that reads as the protect tag without being spelled as it (`Janitor:Protect`,
/// `janitor_protect`, ` janitor:protect `, or a value of `True`, `yes`, `1`, ` true`) protects the instance: its
/// owner meant to keep it, and a release cannot be undone. Only a value that says no
/// (`false`, `no`, `0`, `off`) leaves it unprotected.
fn near_protect(inst: &Instance, key: &str) -> Option<(SkipReason, String)> {
    let want = tag_key_normal(key);
    let says_no = |v: &str| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "false" | "no" | "0" | "off"
        )
    };
    // Any lookalike that does not say no protects, whatever the others say.
    let (k, v) = inst
        .tags
        .iter()
        .find(|(k, v)| tag_key_normal(k) == want && !says_no(v))?;
    let detail = format!(
        "protected: the tag {k}={v:?} is not spelled as `{key}=true`; write it so, or remove it"
    );
    Some((SkipReason::Protected { tag: k.clone() }, detail))
}

/// Whether `inst` meets the policy's conditions. No allocation: this runs for every instance
/// and policy.
fn matches(policy: &Policy, inst: &Instance, ctx: &EvalContext, now: DateTime<Utc>) -> Match {
    if inst.status == InstanceStatus::Unknown {
        return Match::No;
    }
    let sel = &policy.select;
    if !select_holds(sel, inst, now) {
        return Match::No;
    }
    if let Some(ex) = &policy.exclude {
        if any_holds(ex, inst, ctx, now) {
            return Match::No;
        }
    }
    if let Some(d) = sel.stopped_for {
        if inst.status != InstanceStatus::Stopped {
            return Match::No;
        }
        let first_seen = ctx.observations.get(&inst.instance_id).copied();
        match first_seen {
            Some(t) if t <= now - d.to_chrono() => {}
            other => return Match::StoppedUnknown(other),
        }
    }
    Match::Yes
}

fn tag_holds(t: &crate::policy::TagMatch, inst: &Instance) -> bool {
    match (&t.value, inst.tags.get(&t.key)) {
        (None, Some(_)) => true,
        (Some(want), Some(have)) => want == have,
        (_, None) => false,
    }
}

fn is_expired(inst: &Instance, at: DateTime<Utc>) -> bool {
    inst.charge_type == ChargeType::PrePaid && inst.expired_time.is_some_and(|t| t <= at)
}

fn created_before(inst: &Instance, at: DateTime<Utc>) -> bool {
    inst.creation_time.is_some_and(|t| t <= at)
}

/// Every condition of `sel` holds, except `stopped_for` which needs observations and is
/// checked by the caller.
fn select_holds(sel: &Selector, inst: &Instance, now: DateTime<Utc>) -> bool {
    sel.charge_type.is_none_or(|c| c == inst.charge_type)
        && (sel.status.is_empty() || sel.status.contains(&inst.status))
        && sel.tags.iter().all(|t| tag_holds(t, inst))
        && sel
            .name
            .as_ref()
            .is_none_or(|g| g.is_match(&inst.instance_name))
        && sel
            .instance_type
            .as_ref()
            .is_none_or(|g| g.is_match(&inst.instance_type))
        && sel.zone.as_ref().is_none_or(|z| *z == inst.zone_id)
        && sel
            .resource_group_id
            .as_ref()
            .is_none_or(|r| *r == inst.resource_group_id)
        && (sel.instance_ids.is_empty() || sel.instance_ids.contains(&inst.instance_id))
        && sel
            .created_before
            .is_none_or(|d| created_before(inst, now - d.to_chrono()))
        && sel.expired.is_none_or(|e| e == is_expired(inst, now))
        && sel
            .expired_for
            .is_none_or(|d| is_expired(inst, now - d.to_chrono()))
}

/// Any single condition of an `exclude` block holds (each tag pair counts on its own).
fn any_holds(ex: &Selector, inst: &Instance, ctx: &EvalContext, now: DateTime<Utc>) -> bool {
    ex.charge_type == Some(inst.charge_type)
        || ex.status.contains(&inst.status)
        || ex.tags.iter().any(|t| tag_holds(t, inst))
        || ex
            .name
            .as_ref()
            .is_some_and(|g| g.is_match(&inst.instance_name))
        || ex
            .instance_type
            .as_ref()
            .is_some_and(|g| g.is_match(&inst.instance_type))
        || ex.zone.as_ref().is_some_and(|z| *z == inst.zone_id)
        || ex
            .resource_group_id
            .as_ref()
            .is_some_and(|r| *r == inst.resource_group_id)
        || ex.instance_ids.contains(&inst.instance_id)
        || ex
            .created_before
            .is_some_and(|d| created_before(inst, now - d.to_chrono()))
        || ex.expired.is_some_and(|e| e == is_expired(inst, now))
        || ex
            .expired_for
            .is_some_and(|d| is_expired(inst, now - d.to_chrono()))
        || ex.stopped_for.is_some_and(|d| {
            inst.status == InstanceStatus::Stopped
                && ctx
                    .observations
                    .get(&inst.instance_id)
                    .is_some_and(|t| *t <= now - d.to_chrono())
        })
}

/// The matched `select` conditions in words. Only called for planned releases.
fn reasons(sel: &Selector, inst: &Instance, ctx: &EvalContext) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(c) = sel.charge_type {
        out.push(format!("charge type is {c}"));
    }
    if !sel.status.is_empty() {
        out.push(format!("status is {}", inst.status));
    }
    for t in &sel.tags {
        match &t.value {
            Some(v) => out.push(format!("tag {}={v}", t.key)),
            None => out.push(format!("has tag {}", t.key)),
        }
    }
    if let Some(g) = &sel.name {
        out.push(format!(
            "name {:?} matches {:?}",
            inst.instance_name, g.text
        ));
    }
    if let Some(g) = &sel.instance_type {
        out.push(format!(
            "instance type {} matches {:?}",
            inst.instance_type, g.text
        ));
    }
    if let Some(z) = &sel.zone {
        out.push(format!("in zone {z}"));
    }
    if let Some(r) = &sel.resource_group_id {
        out.push(format!("in resource group {r}"));
    }
    if !sel.instance_ids.is_empty() {
        out.push("instance id is listed".to_string());
    }
    if let (Some(d), Some(t)) = (sel.created_before, inst.creation_time) {
        out.push(format!("created {} (at least {d} ago)", fmt_time(t)));
    }
    if sel.expired == Some(true) || sel.expired_for.is_some() {
        if let Some(t) = inst.expired_time {
            match sel.expired_for {
                Some(d) => out.push(format!(
                    "subscription expired {} (at least {d} ago)",
                    fmt_time(t)
                )),
                None => out.push(format!("subscription expired {}", fmt_time(t))),
            }
        }
    } else if sel.expired == Some(false) {
        out.push("not an expired subscription".to_string());
    }
    if let Some(d) = sel.stopped_for {
        if let Some(t) = ctx.observations.get(&inst.instance_id) {
            out.push(format!(
                "stopped since at least {} (at least {d})",
                fmt_time(*t)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests;
