//! Capped exponential backoff with full jitter. The random source is a parameter, so tests and
//! simulations are reproducible from a seed.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;

/// `delay(n)` is uniform in `[0, min(cap, base · 2^n)]` ("full jitter"), where `n` counts the
/// retries already made (0 before the first retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Backoff { base, cap }
    }

    /// The upper bound of the delay before retry number `retries + 1`.
    pub fn ceiling(&self, retries: u32) -> Duration {
        // 2^retries, saturating: from 64 retries on the product is past any cap.
        let factor = 1u64.checked_shl(retries).unwrap_or(u64::MAX);
        let base_ms = self.base.as_millis().min(u64::MAX as u128) as u64;
        let ms = base_ms.saturating_mul(factor);
        Duration::from_millis(ms).min(self.cap)
    }

    /// A delay drawn uniformly from `[0, ceiling(retries)]`, never below `floor` (a wait the
    /// server asked for, such as a throttling `TimeLeft`) and never above `cap`: the floor is
    /// clamped to the cap first, so no header value can make a caller wait (or compute a time)
    /// past it.
    pub fn delay(&self, retries: u32, floor: Option<Duration>, rng: &mut impl Rng) -> Duration {
        let ceil = u64::try_from(self.ceiling(retries).as_millis()).unwrap_or(u64::MAX);
        let d = Duration::from_millis(rng.gen_range(0..=ceil));
        match floor.map(|f| f.min(self.cap)) {
            Some(f) if f > d => f,
            _ => d,
        }
    }
}

/// `now + d`, saturating at the latest time chrono can hold instead of panicking, for any
/// `d` (a backoff, a server's `TimeLeft`, a lease). `DateTime + TimeDelta` panics on overflow.
pub fn add_capped(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    let delta = TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX);
    now.checked_add_signed(delta)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    #[test]
    fn ceiling_doubles_until_the_cap() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        assert_eq!(b.ceiling(0), Duration::from_secs(1));
        assert_eq!(b.ceiling(3), Duration::from_secs(8));
        assert_eq!(b.ceiling(9), Duration::from_secs(300));
        assert_eq!(b.ceiling(200), Duration::from_secs(300));
    }

    #[test]
    fn a_huge_floor_waits_the_cap_and_the_time_saturates() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let floor = Duration::from_millis(9_000_000_000_000_000);
        assert_eq!(b.delay(0, Some(floor), &mut rng), Duration::from_secs(300));
        let now = Utc::now();
        assert_eq!(add_capped(now, floor), DateTime::<Utc>::MAX_UTC);
        assert_eq!(add_capped(now, Duration::MAX), DateTime::<Utc>::MAX_UTC);
        assert_eq!(
            add_capped(now, Duration::from_secs(5)),
            now + TimeDelta::seconds(5)
        );
    }

    #[test]
    fn same_seed_same_delays() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let run = |seed| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            (0..8)
                .map(|n| b.delay(n, None, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
    }

    proptest! {
        #[test]
        fn delay_stays_within_floor_and_ceiling(
            base_ms in 1u64..10_000, cap_ms in 1u64..600_000, retries in 0u32..100,
            floor_ms in proptest::option::of(0u64..20_000), seed: u64,
        ) {
            let b = Backoff::new(Duration::from_millis(base_ms), Duration::from_millis(cap_ms));
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let floor = floor_ms.map(Duration::from_millis);
            let d = b.delay(retries, floor, &mut rng);
            let ceil = b.ceiling(retries);
            prop_assert!(ceil <= Duration::from_millis(cap_ms));
            prop_assert!(d <= ceil.max(floor.unwrap_or_default()));
            prop_assert!(d <= b.cap, "{d:?} is past the cap {:?}", b.cap);
            if let Some(f) = floor { prop_assert!(d >= f.min(b.cap)); }
        }

        #[test]
        fn add_capped_never_panics_and_never_goes_back(
            secs in proptest::num::i64::ANY, nanos in 0u32..1_000_000_000,
            d_secs: u64, d_nanos in 0u32..1_000_000_000,
        ) {
            let Some(now) = DateTime::<Utc>::from_timestamp(secs % 8_000_000_000_000, nanos) else {
                return Ok(());
            };
            let d = Duration::new(d_secs, d_nanos);
            let at = add_capped(now, d);
            prop_assert!(at >= now);
        }
    }
}
