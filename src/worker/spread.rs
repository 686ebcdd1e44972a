//! Whether a claim should ask for its batch outside the (account, region) pairs this process
//! already has batches in. Asking walks the pending releases in id order past every one of a
//! busy pair; with every pair busy (more batches in flight than regions with work, the usual
//! state of a long drain) that is the whole queue, each claim: 25 ms a claim with 100,000
//! releases queued on SQLite, which held a drain at a real API's round trip to 35 batches a
//! second whatever the batches in flight (BENCHMARKS.md, twelfth round).

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};

/// An (account, region) pair.
pub(super) type Pair = (String, String);

/// What the last claims learnt: that nothing was due outside a set of busy pairs.
#[derive(Debug, Default)]
pub(super) struct Spread {
    /// The pairs a claim avoided and went into anyway (nothing was due elsewhere), and when.
    nothing_elsewhere: Option<(BTreeSet<Pair>, DateTime<Utc>)>,
}

impl Spread {
    /// How long a claim that found nothing due elsewhere is taken at its word: releases
    /// queued for another pair meanwhile wait at most this long to be preferred.
    pub(super) const RECHECK_AFTER: Duration = Duration::seconds(5);

    /// The pairs a claim at `now` should avoid: those `busy`, unless a claim found nothing due
    /// outside pairs that are all still busy, less than [`Self::RECHECK_AFTER`] ago (then none:
    /// the claim takes the oldest due release, wherever it is).
    pub(super) fn avoid(&self, busy: Vec<Pair>, now: DateTime<Utc>) -> Vec<Pair> {
        match &self.nothing_elsewhere {
            Some((pairs, at))
                if now - *at < Self::RECHECK_AFTER && pairs.iter().all(|p| busy.contains(p)) =>
            {
                Vec::new()
            }
            _ => busy,
        }
    }

    /// Notes where a claim that avoided `avoided` took its batch: into one of them means
    /// nothing was due elsewhere; anywhere else, that something was.
    pub(super) fn claimed(
        &mut self,
        avoided: &[Pair],
        account: &str,
        region: &str,
        now: DateTime<Utc>,
    ) {
        if avoided.is_empty() {
            return;
        }
        self.nothing_elsewhere = avoided
            .iter()
            .any(|(a, r)| a == account && r == region)
            .then(|| (avoided.iter().cloned().collect(), now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(regions: &[&str]) -> Vec<Pair> {
        regions
            .iter()
            .map(|r| (String::new(), r.to_string()))
            .collect()
    }

    #[test]
    fn a_claim_stops_asking_for_elsewhere_while_every_pair_it_found_busy_still_is() {
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let mut s = Spread::default();
        let ab = pairs(&["a", "b"]);
        assert_eq!(
            s.avoid(ab.clone(), t0),
            ab,
            "nothing learnt yet: avoid the busy pairs"
        );
        // It avoided a and b and still went into a: nothing was due elsewhere.
        s.claimed(&ab, "", "a", t0);
        assert!(s.avoid(ab.clone(), t0).is_empty());
        assert!(
            s.avoid(pairs(&["a", "b", "c"]), t0).is_empty(),
            "busier still: nothing elsewhere"
        );
        // b is free now: it may have due work, so ask again.
        assert_eq!(s.avoid(pairs(&["a"]), t0), pairs(&["a"]));
        // Releases queued for another pair meanwhile are preferred again after a while.
        let later = t0 + Spread::RECHECK_AFTER;
        assert_eq!(s.avoid(ab.clone(), later), ab);
        // A claim that went elsewhere: something was due there, so keep asking.
        s.claimed(&ab, "", "c", later);
        assert_eq!(s.avoid(ab.clone(), later), ab);
        // A claim that avoided nothing teaches nothing.
        s.claimed(&ab, "", "a", later);
        s.claimed(&[], "", "c", later);
        assert!(s.avoid(ab, later).is_empty());
    }
}
