//! Shows a [`Plan`] to people (text, in Terraform's spirit) and to programs (a versioned JSON
//! document whose format is documented in `docs/policies.md`).

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{Plan, PlannedRelease, SavingsTotals, SkipReason};
use crate::money::{Money, Totals};

/// The `version` field of [`render_json`]'s document. Bump it on any incompatible change.
pub const JSON_FORMAT_VERSION: u32 = 1;

struct Paint {
    on: bool,
}

impl Paint {
    fn wrap(&self, code: &str, s: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    fn bold(&self, s: &str) -> String {
        self.wrap("1", s)
    }
    fn red(&self, s: &str) -> String {
        self.wrap("31", s)
    }
    fn yellow(&self, s: &str) -> String {
        self.wrap("33", s)
    }
    fn dim(&self, s: &str) -> String {
        self.wrap("2", s)
    }
}

/// How much of a plan the text shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TextOptions {
    /// ANSI colours (a terminal only).
    pub color: bool,
    /// One line per policy: counts of releases and of skips by reason.
    pub summary: bool,
    /// Leave the skips out (their counts stay in the last line).
    pub hide_skips: bool,
}

/// Skips of one reason listed one by one, at most; the rest are counted (`--json` has all).
const SKIPS_LISTED_PER_REASON: usize = 5;

/// The plan as text: per policy, each release with why and each skip with why, then
/// `Plan: N to release, M skipped, K policies refused.` ANSI colours only when `color`.
pub fn render_text(plan: &Plan, color: bool) -> String {
    render_text_with(
        plan,
        &TextOptions {
            color,
            ..TextOptions::default()
        },
    )
}

/// Skips grouped by reason, in the order each reason first appears, with their count.
fn by_reason(skips: &[super::Skip]) -> Vec<(&'static str, Vec<&super::Skip>)> {
    let mut groups: Vec<(&'static str, Vec<&super::Skip>)> = Vec::new();
    for s in skips {
        let code = s.reason.code();
        match groups.iter_mut().find(|(c, _)| *c == code) {
            Some((_, v)) => v.push(s),
            None => groups.push((code, vec![s])),
        }
    }
    groups
}

/// A reason's code in words, for counts.
fn reason_words(code: &str) -> String {
    code.replace('_', " ")
}

/// The plan as text, as much of it as `o` asks for.
pub fn render_text_with(plan: &Plan, o: &TextOptions) -> String {
    let p = Paint { on: o.color };
    if o.summary {
        return render_summary(plan, &p);
    }
    let now = plan.generated_at;
    let mut out = String::new();
    for pp in &plan.policies {
        let mut header = format!("policy {}", pp.policy);
        if let Some(a) = &pp.account {
            header.push_str(&format!(" (account {a})"));
        }
        if pp.dry_run {
            header.push_str(" (dry run: nothing will be released)");
        }
        let _ = writeln!(out, "{}", p.bold(&header));
        if let Some(r) = &pp.refused {
            let _ = writeln!(out, "  {}", p.red(&format!("! {}", r.message())));
        }
        if let Some(e) = &pp.error {
            let _ = writeln!(out, "  {}", p.red(&format!("! not planned: {e}")));
        }
        for r in pp.releases.iter().filter(|r| !r.is_pending(now)) {
            let name = if r.instance_name.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.instance_name)
            };
            let _ = writeln!(
                out,
                "  {} {}{name} in {} {}",
                p.red("-"),
                r.instance_id,
                r.region,
                if pp.dry_run {
                    "would be released (dry run)"
                } else {
                    "will be released"
                }
            );
            let mut flags = Vec::new();
            if r.force {
                flags.push("force");
            }
            if r.terminate_subscription {
                flags.push("terminate_subscription");
            }
            if !flags.is_empty() {
                let _ = writeln!(
                    out,
                    "      {}",
                    p.dim(&format!("with {}", flags.join(", ")))
                );
            }
            let _ = writeln!(out, "      {}", p.dim(&facts_line(r, now)));
            if let Some(line) = saving_line(r) {
                let _ = writeln!(out, "      {line}");
            }
            if let Some(line) = staying_line(r) {
                let _ = writeln!(out, "      {}", p.yellow(&format!("! {line}")));
            }
            let _ = writeln!(out, "      because {}", r.reasons.join("; "));
            for w in r.warnings() {
                let _ = writeln!(out, "      {}", p.red(&format!("! {w}")));
            }
            if !r.also_matched_by.is_empty() {
                let _ = writeln!(
                    out,
                    "      {}",
                    p.dim(&format!("also matched by {}", r.also_matched_by.join(", ")))
                );
            }
        }
        for (code, group) in by_reason(&pp.skips).into_iter().filter(|_| !o.hide_skips) {
            let mark = match group[0].reason {
                SkipReason::GracePending { .. } => p.yellow("~"),
                _ => p.yellow("•"),
            };
            if group.len() > SKIPS_LISTED_PER_REASON {
                let _ = writeln!(
                    out,
                    "  {mark} {} skipped: {}",
                    group.len(),
                    reason_words(code)
                );
            }
            for s in group.iter().take(SKIPS_LISTED_PER_REASON) {
                let _ = writeln!(
                    out,
                    "  {mark} {} in {} skipped: {}",
                    s.instance_id, s.region, s.detail
                );
            }
            if group.len() > SKIPS_LISTED_PER_REASON {
                let _ = writeln!(
                    out,
                    "    {}",
                    p.dim(&format!(
                        "... and {} more {} (all in --json)",
                        group.len() - SKIPS_LISTED_PER_REASON,
                        reason_words(code)
                    ))
                );
            }
        }
        // Every missing mark, never cut short: the release goes ahead, its owners are not told.
        for r in &pp.releases {
            if let Some(line) = r.mark.as_ref().and_then(super::MarkNote::missing_line) {
                let _ = writeln!(
                    out,
                    "  {} {} in {}: {line}",
                    p.yellow("!"),
                    r.instance_id,
                    r.region
                );
            }
        }
        let sub = SavingsTotals::of(&pp.releases, now);
        if sub.priced {
            let due = pp.releases.iter().filter(|r| !r.is_pending(now)).count();
            let _ = writeln!(
                out,
                "  {}",
                p.bold(&format!(
                    "subtotal: {due} {}, {}",
                    if pp.dry_run {
                        "in a dry run"
                    } else {
                        "to release"
                    },
                    sum_words(
                        &sub.due,
                        sub.unknown,
                        &sub,
                        if pp.dry_run { "if released" } else { "saved" }
                    )
                ))
            );
        }
        if pp.releases.is_empty()
            && pp.skips.is_empty()
            && pp.refused.is_none()
            && pp.error.is_none()
        {
            let _ = writeln!(out, "  {}", p.dim("no matching instances"));
        }
        out.push('\n');
    }
    totals(plan, &p, &mut out);
    out
}

fn skip_json(reason: &SkipReason) -> Value {
    let mut v = json!({ "code": reason.code() });
    match reason {
        SkipReason::Protected { tag } => v["tag"] = json!(tag),
        SkipReason::GracePending { until } => v["until"] = json!(crate::timefmt::text(*until)),
        SkipReason::StoppedSinceUnknown { first_seen } => {
            v["first_seen_stopped"] = json!(first_seen.map(crate::timefmt::text))
        }
        SkipReason::AlsoMatchedBy { policy } => v["policy"] = json!(policy),
        SkipReason::RequiresForce { status } => v["status"] = json!(status.as_str()),
        SkipReason::Released { at } => v["released_at"] = json!(crate::timefmt::text(*at)),
        SkipReason::SubscriptionNotExpired { expires } => {
            v["expires"] = json!(crate::timefmt::text(*expires))
        }
        SkipReason::Exempt { until, by, reason } => {
            v["until"] = json!(crate::timefmt::text(*until));
            v["reason"] = json!(reason);
            match by {
                super::exempt::ExemptBy::Tag { key } => v["tag"] = json!(key),
                super::exempt::ExemptBy::Operator { by } => v["by"] = json!(by),
            }
        }
        SkipReason::ExemptionInvalid {
            tag,
            value,
            problem,
        } => {
            v["tag"] = json!(tag);
            v["value"] = json!(value);
            v["problem"] = json!(problem);
        }
        _ => {}
    }
    v
}

/// The plan as a stable JSON document (format version [`JSON_FORMAT_VERSION`]).
pub fn render_json(plan: &Plan) -> Value {
    let now = plan.generated_at;
    let s = plan.summary();
    let policies: Vec<Value> = plan
        .policies
        .iter()
        .map(|pp| {
            json!({
                "name": pp.policy,
                "account": pp.account,
                "dry_run": pp.dry_run,
                "refused": pp.refused.map(|r| json!({
                    "count": r.count,
                    "limit": r.limit,
                    "message": r.message(),
                })),
                "error": pp.error,
                "releases": pp.releases.iter().map(|r| json!({
                    "instance_id": r.instance_id,
                    "region": r.region,
                    "instance_name": r.instance_name,
                    "force": r.force,
                    "terminate_subscription": r.terminate_subscription,
                    "not_before": crate::timefmt::text(r.not_before),
                    "pending": r.is_pending(now),
                    "reasons": r.reasons,
                    "also_matched_by": r.also_matched_by,
                    "security_locked": r.security_locked,
                    "warnings": r.warnings(),
                    "instance_type": r.instance_type,
                    "status": r.status.as_str(),
                    "stopped_mode": r.stopped_mode,
                    "charge_type": r.charge_type.as_str(),
                    "created_at": r.created_at.map(crate::timefmt::text),
                    "saving": r.saving.as_deref().map(saving_json),
                    "mark": r.mark.as_ref().map(super::MarkNote::json),
                })).collect::<Vec<_>>(),
                "savings": totals_json(&SavingsTotals::of(&pp.releases, now)),
                "skips": pp.skips.iter().map(|k| json!({
                    "instance_id": k.instance_id,
                    "region": k.region,
                    "reason": skip_json(&k.reason),
                    "detail": k.detail,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "version": JSON_FORMAT_VERSION,
        "generated_at": crate::timefmt::text(now),
        "policies": policies,
        "summary": {
            "to_release": s.to_release,
            "pending": s.pending,
            "skipped": s.skipped,
            "policies_refused": s.policies_refused,
            "dry_run": s.dry_run,
            "savings": totals_json(&plan.savings()),
            "dry_run_savings": totals_json(&plan.dry_run_savings()),
        },
    })
}

/// `{"amount": "350.40", "currency": "CNY"}`: the amount a decimal string, never a float.
pub fn money_json(m: &Money) -> Value {
    json!({ "amount": m.decimal(), "currency": m.currency })
}

fn totals_list(t: &Totals) -> Value {
    Value::Array(t.iter().map(|m| money_json(&m)).collect())
}

/// Sums per currency: list prices for a month of 730 hours.
fn totals_json(t: &SavingsTotals) -> Value {
    json!({
        "priced": t.priced,
        "monthly_due": totals_list(&t.due),
        "monthly_pending": totals_list(&t.pending),
        "renewal_avoided": totals_list(&t.renewal_avoided),
        "staying_monthly": totals_list(&t.staying),
        "staying_disks": t.staying_disks,
        "unknown": t.unknown,
        "pending_unknown": t.pending_unknown,
    })
}

fn saving_json(s: &super::Saving) -> Value {
    json!({
        "basis": s.basis.code(),
        "monthly": s.monthly.as_ref().map(money_json),
        "renewal_avoided": s.renewal_avoided.as_ref().map(money_json),
        "staying": {
            "disks": s.staying_disks,
            "monthly": s.staying_monthly.as_ref().map(money_json),
        },
        "sources": s.sources().iter().map(|x| x.code()).collect::<Vec<_>>(),
        "unknown": s.unknown,
        "list_price": true,
        "hours_per_month": crate::money::HOURS_PER_MONTH,
        "resources": s.lines.iter().map(|l| json!({
            "resource": l.resource,
            "id": l.id,
            "detail": l.detail,
            "released": l.released,
            "counted": l.counted,
            "monthly": l.monthly.as_ref().map(money_json),
            "source": l.source.map(|x| x.code()),
            "unknown": l.unknown,
        })).collect::<Vec<_>>(),
    })
}

/// `ecs.g6.large, Stopped (KeepCharging), PostPaid, 30d old`.
fn facts_line(r: &PlannedRelease, now: chrono::DateTime<chrono::Utc>) -> String {
    let status = if r.status == crate::ecs::InstanceStatus::Stopped
        && !r.stopped_mode.is_empty()
        && r.stopped_mode != "Not-applicable"
    {
        format!("{} ({})", r.status, r.stopped_mode)
    } else {
        r.status.to_string()
    };
    let age = match r.created_at {
        Some(t) => {
            let d = now - t;
            if d.num_days() >= 1 {
                format!("{}d old", d.num_days())
            } else {
                format!("{}h old", d.num_hours().max(0))
            }
        }
        None => "age unknown".to_string(),
    };
    let ty = if r.instance_type.is_empty() {
        "type unknown"
    } else {
        &r.instance_type
    };
    format!("{ty}, {status}, {}, {age}", r.charge_type)
}

/// `saves ≈ ¥390.40/month (compute + disks; list price, describe_price)`, or why unknown.
fn saving_line(r: &PlannedRelease) -> Option<String> {
    let s = r.saving.as_deref()?;
    let sources = s
        .sources()
        .iter()
        .map(|x| x.code())
        .collect::<Vec<_>>()
        .join(", ");
    let mut line = match &s.monthly {
        Some(m) => format!(
            "saves ≈ {}/month ({}; list price from {sources})",
            m.display(),
            s.basis.words()
        ),
        None => format!(
            "saves: unknown ({}; {})",
            s.basis.words(),
            s.unknown.join("; ")
        ),
    };
    if let Some(m) = &s.renewal_avoided {
        line.push_str(&format!("; renewal avoided ≈ {}/month", m.display()));
    } else if s.basis == super::Basis::RenewalAvoided {
        line.push_str("; renewal avoided: unknown");
    }
    Some(line)
}

/// `2 disks stay and keep billing ≈ ¥200.02/month (DeleteWithInstance=false)`.
fn staying_line(r: &PlannedRelease) -> Option<String> {
    let s = r.saving.as_deref()?;
    if s.staying_disks == 0 {
        return None;
    }
    let n = s.staying_disks;
    let disks = if n == 1 {
        "disk stays and keeps"
    } else {
        "disks stay and keep"
    };
    let cost = match &s.staying_monthly {
        Some(m) => format!("≈ {}/month", m.display()),
        None => "an unknown amount".to_string(),
    };
    Some(format!(
        "{n} {disks} billing {cost} (DeleteWithInstance=false)"
    ))
}

/// The first currency any figure of `t` is in (for a sum that is empty).
fn currency_of(t: &SavingsTotals) -> String {
    [&t.due, &t.pending, &t.renewal_avoided, &t.staying]
        .iter()
        .find_map(|x| x.iter().next().map(|m| m.currency))
        .unwrap_or_else(|| "CNY".to_string())
}

/// `≈ ¥12,300/month saved`, `≈ ¥12,300/month saved (2 unknown)`, or `savings unknown`.
fn saved_words(due: &Totals, unknown: usize, all: &SavingsTotals) -> String {
    sum_words(due, unknown, all, "saved")
}

/// `≈ ¥X/month {what} (N unknown)`, or `saving unknown (N unpriced)` when none was priced.
fn sum_words(sum: &Totals, unknown: usize, all: &SavingsTotals, what: &str) -> String {
    if sum.is_empty() && unknown > 0 {
        return format!("saving unknown ({unknown} unpriced)");
    }
    let mut w = format!("≈ {}/month {what}", sum.display_whole(&currency_of(all)));
    if unknown > 0 {
        w.push_str(&format!(" ({unknown} unknown)"));
    }
    w
}

/// The last line of every text plan: `Plan: N to release, ≈ ¥X/month saved, M skipped, K
/// policies refused.` (without the saving when the plan was not priced), after a line of what
/// else the figures hold when there is any.
fn totals(plan: &Plan, p: &Paint, out: &mut String) {
    let s = plan.summary();
    let sv = plan.savings();
    let saved = if sv.priced {
        format!("{}, ", saved_words(&sv.due, sv.unknown, &sv))
    } else {
        String::new()
    };
    let dry = plan.dry_run_savings();
    if sv.priced || dry.priced {
        let c = currency_of(&sv);
        let mut also = Vec::new();
        if !sv.pending.is_empty() || sv.pending_unknown > 0 {
            let more = sum_words(&sv.pending, sv.pending_unknown, &sv, "more");
            also.push(format!(
                "{more} from {} still waiting out a grace period",
                crate::money::plural(s.pending, "release", "releases"),
            ));
        }
        if s.dry_run > 0 && dry.priced {
            also.push(format!(
                "{} in dry runs, not in the total ({})",
                crate::money::plural(s.dry_run, "release", "releases"),
                sum_words(&dry.due, dry.unknown, &dry, "if released")
            ));
        }
        if !sv.renewal_avoided.is_empty() {
            also.push(format!(
                "≈ {} of subscription renewal avoided (one month, not in the total)",
                sv.renewal_avoided.display_whole(&c)
            ));
        }
        if sv.staying_disks > 0 {
            let n = sv.staying_disks;
            also.push(format!(
                "{} and keep{} billing ≈ {}/month",
                crate::money::plural(n, "disk stays", "disks stay"),
                if n == 1 { "s" } else { "" },
                sv.staying.display_whole(&c)
            ));
        }
        let mut line = "List prices for a month of 730 hours, before discounts".to_string();
        if !also.is_empty() {
            line.push_str(&format!("; {}", also.join("; ")));
        }
        let _ = writeln!(out, "{}", p.dim(&format!("{line}.")));
    }
    let _ = writeln!(
        out,
        "{}",
        p.bold(&format!(
            "Plan: {} to release, {saved}{} skipped, {} refused{}.",
            s.to_release,
            s.skipped,
            crate::money::plural(s.policies_refused, "policy", "policies"),
            if s.policies_failed > 0 {
                format!(
                    ", {} not planned (a region could not be listed)",
                    crate::money::plural(s.policies_failed, "policy", "policies")
                )
            } else {
                String::new()
            }
        ))
    );
}

/// `plan --summary`: per policy, what it releases, what waits, and its skips counted by reason.
fn render_summary(plan: &Plan, p: &Paint) -> String {
    let now = plan.generated_at;
    let mut out = String::new();
    for pp in &plan.policies {
        if let Some(e) = &pp.error {
            let _ = writeln!(
                out,
                "{}: {}",
                p.bold(&pp.policy),
                p.red(&format!("not planned: {e}"))
            );
            continue;
        }
        let due = pp.releases.iter().filter(|r| !r.is_pending(now)).count();
        let waiting = pp.releases.len() - due;
        let skips: Vec<String> = by_reason(&pp.skips)
            .into_iter()
            .map(|(code, g)| format!("{} {}", g.len(), reason_words(code)))
            .collect();
        let (what, saved) = if pp.dry_run {
            ("in a dry run", "if released")
        } else {
            ("to release", "saved")
        };
        let mut line = format!("{}: {due} {what}", p.bold(&pp.policy));
        let sub = SavingsTotals::of(&pp.releases, now);
        if sub.priced {
            line.push_str(&format!(
                ", {}",
                sum_words(&sub.due, sub.unknown, &sub, saved)
            ));
        }
        if waiting > 0 {
            // A dry run queues nothing: its releases would wait, none does.
            line.push_str(&if pp.dry_run {
                format!(", {waiting} would wait out their grace")
            } else {
                format!(", {waiting} waiting out their grace")
            });
            if !sub.pending.is_empty() {
                line.push_str(&format!(
                    " (≈ {}/month)",
                    sub.pending.display_whole(&currency_of(&sub))
                ));
            }
        }
        let unmarked = pp
            .releases
            .iter()
            .filter(|r| matches!(r.mark, Some(super::MarkNote::Missing { .. })))
            .count();
        if unmarked > 0 {
            line.push_str(&format!(
                ", {unmarked} without their mark (see the full plan)"
            ));
        }
        if !skips.is_empty() {
            line.push_str(&format!("; skipped: {}", skips.join(", ")));
        }
        if let Some(r) = &pp.refused {
            line.push_str(&format!("; {}", p.red(&r.message())));
        }
        if pp.dry_run {
            line.push_str(" (dry run)");
        }
        let _ = writeln!(out, "{line}");
    }
    totals(plan, p, &mut out);
    out
}
