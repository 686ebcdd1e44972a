//! When policies run: "next tick after t" for a cron schedule (pure), and grouping of the
//! policies due at the same tick, so they share one inventory fetch.

use chrono::{DateTime, Utc};

use crate::policy::Policy;

/// The first tick of `policy` strictly after `t` (UTC), or `None` when the schedule has no
/// more ticks (a cron with a past year).
pub fn next_after(policy: &Policy, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    policy.schedule.after(&t).next()
}

/// The earliest next tick among `policies` after `t`, and the names of every policy due then.
pub fn next_group(policies: &[Policy], t: DateTime<Utc>) -> Option<(DateTime<Utc>, Vec<String>)> {
    let mut best: Option<(DateTime<Utc>, Vec<String>)> = None;
    for p in policies {
        let Some(at) = next_after(p, t) else { continue };
        match &mut best {
            Some((b, names)) if at == *b => names.push(p.name.clone()),
            Some((b, _)) if at > *b => {}
            _ => best = Some((at, vec![p.name.clone()])),
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pol(name: &str, cron: &str) -> Policy {
        let yaml = format!(
            "name: {name}\nschedule: \"{cron}\"\nregions: [cn-hangzhou]\nselect:\n  status: Stopped\n"
        );
        crate::policy::load_str("t.yaml", &yaml)
            .unwrap()
            .policies
            .remove(0)
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn next_tick_is_strictly_after() {
        let p = pol("a", "0 */15 * * * *");
        assert_eq!(
            next_after(&p, t("2026-11-26T10:00:00Z")),
            Some(t("2026-11-26T10:15:00Z"))
        );
        assert_eq!(
            next_after(&p, t("2026-11-26T10:14:59Z")),
            Some(t("2026-11-26T10:15:00Z"))
        );
        let daily = pol("b", "0 0 3 * * *");
        assert_eq!(
            next_after(&daily, t("2026-11-26T03:00:00Z")),
            Some(t("2026-11-27T03:00:00Z"))
        );
    }

    #[test]
    fn policies_due_together_form_one_group() {
        let ps = vec![
            pol("a", "0 */15 * * * *"),
            pol("b", "0 0 * * * *"),
            pol("c", "0 */5 * * * *"),
        ];
        let (at, names) = next_group(&ps, t("2026-11-26T10:50:00Z")).unwrap();
        assert_eq!(at, t("2026-11-26T10:55:00Z"));
        assert_eq!(names, ["c"]);
        let (at, names) = next_group(&ps, t("2026-11-26T10:59:00Z")).unwrap();
        assert_eq!(at, t("2026-11-26T11:00:00Z"));
        assert_eq!(names, ["a", "b", "c"]);
        assert!(next_group(&[], t("2026-11-26T10:59:00Z")).is_none());
    }
}
