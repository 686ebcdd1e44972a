//! Exemptions: an owner's way to keep an instance out of every policy for a while without editing
//! a policy. Either a tag on the instance (`janitor:exempt-until=2027-01-31`, optionally
//! `janitor:exempt-reason=...`) or an operator's database-side exemption (`ecs-janitor exempt`,
//! the API), for instances an operator cannot tag. Until it ends no policy selects the instance;
//! after it, the instance is eligible again.
//!
//! Fail safe: a tag value that is not a date or an RFC 3339 instant protects the instance, and
//! so does one reaching further ahead than `exemption_max_days` (so "forever" is a decision, not
//! an accident); the plan says why, as a problem to fix. Pure: plans and the re-check before
//! every DeleteInstances ask the same function.

use chrono::{DateTime, NaiveDate, Utc};

use super::{fmt_time, EvalContext, SkipReason};
use crate::ecs::Instance;

/// An operator's exemption, stored in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exemption {
    pub until: DateTime<Utc>,
    /// Who, as the audit log records it (`alice@host (cli)`, `token deploy-bot (admin API)`).
    pub by: String,
    pub reason: String,
}

/// Where an exemption came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExemptBy {
    /// The instance's `exempt-until` tag.
    Tag { key: String },
    /// An operator, in the database.
    Operator { by: String },
}

/// The end of an exemption written as `value`: a date means through that day wherever its
/// owner is, so `2027-01-31` ends when that day has ended in every time zone (UTC-12), at
/// `2027-02-01T12:00:00Z`; an RFC 3339 instant ends then. Erring late is the safe side.
pub fn parse_until(value: &str) -> Result<DateTime<Utc>, String> {
    let v = value.trim();
    if let Ok(d) = NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        return d
            .succ_opt()
            .and_then(|next| next.and_hms_opt(12, 0, 0))
            .map(|t| t.and_utc())
            .ok_or_else(|| format!("{v:?} is past the last date there is"));
    }
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            format!(
                "{v:?} is neither a date (YYYY-MM-DD) nor an RFC 3339 time (2027-01-31T18:00:00Z)"
            )
        })
}

/// An operator's new exemption's end, written as `text` (see [`parse_until`]), checked by
/// [`check_new`]: what `ecs-janitor exempt --until` and the API both read.
pub fn new_until(
    text: &str,
    now: DateTime<Utc>,
    max: chrono::Duration,
) -> Result<DateTime<Utc>, String> {
    let until = parse_until(text)?;
    check_new(until, now, max)?;
    Ok(until)
}

/// `raw` when it is an instance id as DescribeInstances shows them (`i-...`), else what one
/// looks like.
pub fn instance_id(raw: &str) -> Result<&str, String> {
    let raw = raw.trim();
    if raw.starts_with("i-") && !raw.contains(char::is_whitespace) {
        Ok(raw)
    } else {
        Err(format!(
            "{raw:?} is not an instance id: give one as DescribeInstances shows it (`i-...`)"
        ))
    }
}

/// Why an operator may not exempt until `until`, or `None`: it must end in the future and within
/// the limit.
pub fn check_new(
    until: DateTime<Utc>,
    now: DateTime<Utc>,
    max: chrono::Duration,
) -> Result<(), String> {
    if until <= now {
        return Err(format!(
            "{} has passed: give a date or time in the future",
            fmt_time(until)
        ));
    }
    if until > now + max {
        return Err(format!(
            "{} is more than {} days ahead, the limit (exemption_max_days, JANITOR_EXEMPTION_MAX_DAYS): \
             choose a nearer end, or raise the limit if a longer exemption is meant",
            fmt_time(until),
            max.num_days()
        ));
    }
    Ok(())
}

/// Whether an exemption keeps `inst` out of every policy at `now`: the skip and its words.
/// An operator's exemption is asked first, then the tag.
pub fn exemption(
    inst: &Instance,
    ctx: &EvalContext,
    now: DateTime<Utc>,
) -> Option<(SkipReason, String)> {
    if let Some(e) = ctx
        .exemptions
        .get(&inst.instance_id)
        .filter(|e| e.until > now)
    {
        let detail = format!(
            "exempt until {} by {}: {}",
            fmt_time(e.until),
            e.by,
            e.reason
        );
        return Some((
            SkipReason::Exempt {
                until: e.until,
                by: ExemptBy::Operator { by: e.by.clone() },
                reason: e.reason.clone(),
            },
            detail,
        ));
    }
    let key = ctx.protection.exempt_until_key();
    let Some(value) = inst.tags.get(&key) else {
        return near_miss(inst, &key);
    };
    let reason = inst
        .tags
        .get(&ctx.protection.exempt_reason_key())
        .cloned()
        .unwrap_or_default();
    let invalid = |problem: String| {
        let detail = format!(
            "protected: its exemption tag {key}={value:?} {problem}; fix or remove the tag"
        );
        Some((
            SkipReason::ExemptionInvalid {
                tag: key.clone(),
                value: value.clone(),
                problem,
            },
            detail,
        ))
    };
    let until = match parse_until(value) {
        Ok(t) => t,
        Err(e) => return invalid(format!("is unreadable: {e}")),
    };
    let max = ctx.protection.max_exemption();
    if until > now + max {
        return invalid(format!(
            "reaches {}, more than {} days ahead (exemption_max_days)",
            fmt_time(until),
            max.num_days()
        ));
    }
    if until <= now {
        return None;
    }
    let why = if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    };
    Some((
        SkipReason::Exempt {
            until,
            by: ExemptBy::Tag { key: key.clone() },
            reason,
        },
        format!("exempt until {} by tag {key}{why}", fmt_time(until)),
    ))
}

/// A tag that looks like an exemption but is not spelled as `key` (`Janitor:Exempt_Until`, or
/// the default prefix after `tag_prefix` changed) protects the instance, as a malformed value
/// does: its owner meant to exempt it.
fn near_miss(inst: &Instance, key: &str) -> Option<(SkipReason, String)> {
    let (k, v) = inst
        .tags
        .iter()
        .find(|(k, _)| super::tag_key_normal(k).ends_with("exempt-until"))?;
    let problem = format!("is not spelled as the exemption tag `{key}`");
    Some((
        SkipReason::ExemptionInvalid {
            tag: k.clone(),
            value: v.clone(),
            problem: problem.clone(),
        },
        format!("protected: the tag {k}={v:?} {problem}; rename it to `{key}` or remove it"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap()
    }

    fn tagged(tags: &[(&str, &str)]) -> Instance {
        let mut i = crate::plan::tests::inst("i-1");
        i.tags.clear();
        for (k, v) in tags {
            i.tags.insert((*k).into(), (*v).into());
        }
        i
    }

    #[test]
    fn a_date_means_through_that_day_and_an_instant_means_then() {
        assert_eq!(
            parse_until("2027-01-31").unwrap(),
            Utc.with_ymd_and_hms(2027, 2, 1, 12, 0, 0).unwrap(),
            "through the 31st in every time zone"
        );
        assert_eq!(
            parse_until(" 2027-01-31T18:00:00+08:00 ").unwrap(),
            Utc.with_ymd_and_hms(2027, 1, 31, 10, 0, 0).unwrap()
        );
        for bad in [
            "tomorrow",
            "2027-13-01",
            "31/01/2027",
            "",
            "2027-01-31 18:00",
        ] {
            assert!(parse_until(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_tag_exempts_until_it_ends_then_the_instance_is_eligible() {
        let ctx = EvalContext::default();
        let i = tagged(&[
            ("janitor:exempt-until", "2026-12-24"),
            ("janitor:exempt-reason", "holiday demo"),
        ]);
        let (reason, detail) = exemption(&i, &ctx, now()).unwrap();
        assert_eq!(
            reason,
            SkipReason::Exempt {
                until: Utc.with_ymd_and_hms(2026, 12, 25, 12, 0, 0).unwrap(),
                by: ExemptBy::Tag {
                    key: "janitor:exempt-until".into()
                },
                reason: "holiday demo".into(),
            }
        );
        assert_eq!(
            detail,
            "exempt until 2026-12-25T12:00:00Z by tag janitor:exempt-until: holiday demo"
        );
        let after = Utc.with_ymd_and_hms(2026, 12, 25, 12, 0, 0).unwrap();
        assert_eq!(exemption(&i, &ctx, after), None, "ended: eligible again");
        assert_eq!(exemption(&tagged(&[]), &ctx, now()), None);
    }

    #[test]
    fn a_malformed_or_too_distant_tag_protects_and_says_why() {
        let ctx = EvalContext::default();
        let (reason, detail) =
            exemption(&tagged(&[("janitor:exempt-until", "soon")]), &ctx, now()).unwrap();
        assert_eq!(reason.code(), "exemption_invalid");
        assert!(
            detail.contains("janitor:exempt-until=\"soon\" is unreadable"),
            "{detail}"
        );
        assert!(detail.contains("fix or remove the tag"), "{detail}");
        let (reason, detail) = exemption(
            &tagged(&[("janitor:exempt-until", "2099-01-01")]),
            &ctx,
            now(),
        )
        .unwrap();
        assert_eq!(reason.code(), "exemption_invalid");
        assert!(detail.contains("more than 90 days ahead"), "{detail}");
        // Exactly at the limit is allowed.
        let limit = (now() + chrono::Duration::days(90)).to_rfc3339();
        let (reason, _) =
            exemption(&tagged(&[("janitor:exempt-until", &limit)]), &ctx, now()).unwrap();
        assert_eq!(reason.code(), "exempt");
    }

    #[test]
    fn the_prefix_and_the_limit_are_the_operators() {
        let mut ctx = EvalContext::default();
        ctx.protection.tag_prefix = "acme/".into();
        ctx.protection.max_exemption_days = 400;
        let i = tagged(&[("acme/exempt-until", "2027-06-30")]);
        assert_eq!(exemption(&i, &ctx, now()).unwrap().0.code(), "exempt");
        // The old prefix's tag still protects: its owner meant it, and the plan says to rename it.
        let default_key = tagged(&[("janitor:exempt-until", "2027-06-30")]);
        let (reason, detail) = exemption(&default_key, &ctx, now()).unwrap();
        assert_eq!(reason.code(), "exemption_invalid");
        assert!(
            detail.contains("rename it to `acme/exempt-until`"),
            "{detail}"
        );
    }

    #[test]
    fn a_misspelt_exemption_tag_protects_and_says_how_to_spell_it() {
        let ctx = EvalContext::default();
        for k in [
            "Janitor:Exempt-Until",
            "janitor:exempt_until",
            "JANITOR:EXEMPT UNTIL",
        ] {
            let (reason, detail) = exemption(&tagged(&[(k, "2026-12-24")]), &ctx, now()).unwrap();
            assert_eq!(reason.code(), "exemption_invalid", "{k}");
            assert!(
                detail.contains("rename it to `janitor:exempt-until`"),
                "{detail}"
            );
        }
        assert_eq!(exemption(&tagged(&[("exempt", "yes")]), &ctx, now()), None);
    }

    #[test]
    fn an_operators_exemption_comes_first_and_ends_too() {
        let mut ctx = EvalContext::default();
        let until = now() + chrono::Duration::days(3);
        ctx.exemptions.insert(
            "i-1".into(),
            Exemption {
                until,
                by: "alice@ops (cli)".into(),
                reason: "migration".into(),
            },
        );
        let i = tagged(&[("janitor:exempt-until", "garbage")]);
        let (reason, detail) = exemption(&i, &ctx, now()).unwrap();
        assert_eq!(reason.code(), "exempt");
        assert_eq!(
            detail,
            "exempt until 2026-12-04T12:00:00Z by alice@ops (cli): migration"
        );
        // Once it ends, the (malformed) tag speaks again.
        let (reason, _) = exemption(&i, &ctx, until).unwrap();
        assert_eq!(reason.code(), "exemption_invalid");
    }

    #[test]
    fn new_exemptions_end_in_the_future_within_the_limit() {
        let max = chrono::Duration::days(90);
        assert!(check_new(now() + chrono::Duration::days(1), now(), max).is_ok());
        assert!(check_new(now(), now(), max)
            .unwrap_err()
            .contains("has passed"));
        let e = check_new(now() + chrono::Duration::days(91), now(), max).unwrap_err();
        assert!(
            e.contains("more than 90 days ahead") && e.contains("exemption_max_days"),
            "{e}"
        );
    }
}
