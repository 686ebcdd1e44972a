//! The list prices a process has already asked ECS for, kept between passes: list prices do not
//! change from one pass to the next, so the daemon's passes (and `apply`'s plan then pass) ask
//! DescribePrice and DescribeRenewalPrice once per configuration, not once per pass.
//!
//! Each figure is kept per (account, region, [`Lookup`]) for a time to live
//! ([`DEFAULT_TTL`], six hours), after which the next pass asks again, so a price change reaches
//! the figures within that time. Only answers are kept: a lookup that failed (throttled, refused,
//! a type ECS does not sell) is asked again on the next pass. The price file's figures are never
//! cached, since reading them costs no call. Time is the caller's `now` (the injected clock).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use crate::money::Money;
use crate::plan::savings::Source;

use super::Lookup;

/// How long a list price is kept before it is asked again: six hours.
pub const DEFAULT_TTL: chrono::Duration = chrono::Duration::hours(6);

/// (account, region, what).
type Key = (String, String, Lookup);

/// A figure ECS answered, where it came from, and when.
type Kept = (Money, Source, DateTime<Utc>);

/// Prices already answered, shared by every clone (the context holds one for the process).
#[derive(Debug, Clone)]
pub struct PriceCache {
    ttl: chrono::Duration,
    entries: Arc<Mutex<HashMap<Key, Kept>>>,
}

impl Default for PriceCache {
    fn default() -> Self {
        PriceCache::new(DEFAULT_TTL)
    }
}

impl PriceCache {
    /// An empty cache whose figures are kept for `ttl`.
    pub fn new(ttl: chrono::Duration) -> PriceCache {
        PriceCache {
            ttl,
            entries: Arc::default(),
        }
    }

    /// The figure of `what` in `region` of `account`, if one was answered less than the time to
    /// live before `now`.
    pub fn get(
        &self,
        account: &str,
        region: &str,
        what: &Lookup,
        now: DateTime<Utc>,
    ) -> Option<(Money, Source)> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (m, s, at) = entries.get(&(account.to_string(), region.to_string(), what.clone()))?;
        (now - *at < self.ttl).then(|| (m.clone(), *s))
    }

    /// Keeps the figure ECS answered for `what` at `now`; figures past their time to live are
    /// let go on the way.
    pub fn put(
        &self,
        account: &str,
        region: &str,
        what: Lookup,
        figure: (Money, Source),
        now: DateTime<Utc>,
    ) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let ttl = self.ttl;
        entries.retain(|_, (_, _, at)| now - *at < ttl);
        entries.insert(
            (account.to_string(), region.to_string(), what),
            (figure.0, figure.1, now),
        );
    }

    /// How many figures are kept.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_figure_is_kept_for_its_time_to_live_per_account_and_region() {
        let c = PriceCache::default();
        let g6 = Lookup::Instance {
            instance_type: "ecs.g6.large".into(),
        };
        let at = t("2026-12-01T00:00:00Z");
        let figure = (Money::new(35_040, "CNY"), Source::DescribePrice);
        c.put("", "cn-hangzhou", g6.clone(), figure.clone(), at);
        let later = at + chrono::Duration::hours(6) - chrono::Duration::seconds(1);
        assert_eq!(c.get("", "cn-hangzhou", &g6, later), Some(figure.clone()));
        assert_eq!(
            c.get("prod", "cn-hangzhou", &g6, at),
            None,
            "another account"
        );
        assert_eq!(c.get("", "cn-shanghai", &g6, at), None, "another region");
        let disk = Lookup::Disk {
            category: "cloud_essd".into(),
            size_gb: 40,
        };
        assert_eq!(c.get("", "cn-hangzhou", &disk, at), None, "another lookup");
        assert_eq!(
            c.get("", "cn-hangzhou", &g6, at + chrono::Duration::hours(6)),
            None,
            "six hours on, it is asked again"
        );
        // A later answer lets the expired figures go.
        c.put(
            "",
            "cn-hangzhou",
            disk,
            figure,
            at + chrono::Duration::hours(7),
        );
        assert_eq!(c.len(), 1);
    }
}
