//! Pacing of one account's calls, per (region, API): ECS throttles each account per region and
//! per API, per minute ("if a call is throttled in minute T it can be called again in minute
//! T+1"; the thresholds are per API in Quota Center, ../shared/ecs-api.md 4). Each key has its
//! own bucket: it starts at a generous rate with a second's worth of burst (a token bucket: ECS
//! counts per minute, so a short pass need not be spread out), halves on a throttling answer
//! (once per burst of them) and holds every call of the key until the time ECS said
//! (`TimeLeft`) or, without one, the end of the minute, then grows back by a tenth with each
//! success. An optional ceiling caps every key (`--calls-per-second`), spacing every call.
//! Waits use tokio time, so they can be tested in paused time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use tokio::time::Instant;

/// How calls are paced.
#[derive(Debug, Clone, PartialEq)]
pub struct PaceConfig {
    /// Calls per second a key starts at, and grows back to.
    pub start_per_second: f64,
    /// Calls per second no key exceeds (`--calls-per-second`), if any; keys start at it.
    pub ceiling: Option<f64>,
    /// The lowest rate a key is halved to.
    pub floor_per_second: f64,
    /// A key's rate is multiplied by this after each success, up to the start (or the ceiling).
    pub growth_per_success: f64,
    /// Throttles closer together than this halve a key's rate once: one decrease per burst.
    pub decrease_spacing: Duration,
    /// The longest a throttle holds a key, whatever ECS said.
    pub max_hold: Duration,
    /// How many seconds' worth of calls a key that has been idle may send at once (a token
    /// bucket's depth: at 50 calls per second, a burst of 50). ECS counts calls per minute, so
    /// a short pass need not be spread out; a throttle halves the rate, and so the burst. Not
    /// with a ceiling, which spaces every call.
    pub burst_seconds: f64,
}

impl Default for PaceConfig {
    fn default() -> Self {
        PaceConfig {
            start_per_second: 50.0,
            ceiling: None,
            floor_per_second: 0.5,
            growth_per_success: 1.1,
            decrease_spacing: Duration::from_secs(1),
            max_hold: Duration::from_secs(60),
            burst_seconds: 1.0,
        }
    }
}

impl PaceConfig {
    /// The rate a key starts at and grows back to: the ceiling when one is set (an operator who
    /// knows the account's quota sets it, above the default start or below it), else the start.
    fn top(&self) -> f64 {
        self.ceiling
            .unwrap_or(self.start_per_second)
            .max(f64::MIN_POSITIVE)
    }

    /// How far ahead of now a key's schedule may run before a call waits: the burst, less the
    /// one call it always allows.
    fn tolerance(&self, rate: f64) -> Duration {
        if self.ceiling.is_some() {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((self.burst_seconds - 1.0 / rate).max(0.0))
    }
}

#[derive(Debug, Clone)]
struct Bucket {
    rate: f64,
    /// When the next call would start if the key's calls were evenly spaced at `rate` (the
    /// theoretical arrival time of the generic cell rate algorithm): a call starts once this is
    /// within the burst's tolerance of now.
    next: Instant,
    /// No call of the key starts before this (a throttle's hold).
    held: Instant,
    throttled: u64,
    /// When the rate was last halved.
    decreased: Option<Instant>,
}

/// The pacer of one account's client; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Pacer {
    cfg: Arc<PaceConfig>,
    keys: Arc<Mutex<HashMap<(String, &'static str), Bucket>>>,
}

/// What a key's bucket holds now (for tests and logs).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyState {
    pub rate: f64,
    pub throttled: u64,
}

impl Pacer {
    pub fn new(cfg: PaceConfig) -> Pacer {
        Pacer {
            cfg: Arc::new(cfg),
            keys: Arc::default(),
        }
    }

    /// Waits for the turn of a call of `action` in `region`, and takes it.
    pub async fn wait(&self, region: &str, action: &'static str) {
        let at = {
            let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let b = keys
                .entry((region.to_string(), action))
                .or_insert_with(|| Bucket {
                    rate: self.cfg.top(),
                    next: now,
                    held: now,
                    throttled: 0,
                    decreased: None,
                });
            let due = b.next.max(now);
            let at = due
                .checked_sub(self.cfg.tolerance(b.rate))
                .unwrap_or(now)
                .max(now)
                .max(b.held);
            b.next = due.max(at) + Duration::from_secs_f64(1.0 / b.rate);
            at
        };
        tokio::time::sleep_until(at).await;
    }

    /// A call of the key succeeded: its rate grows back a little.
    pub fn succeeded(&self, region: &str, action: &'static str) {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = keys.get_mut(&(region.to_string(), action)) {
            b.rate = (b.rate * self.cfg.growth_per_success).min(self.cfg.top());
        }
    }

    /// ECS throttled a call of the key at wall-clock time `now`: its rate halves, and no call
    /// of the key starts before `time_left` has passed or, when ECS gave none, before the next
    /// minute begins.
    pub fn throttled(
        &self,
        region: &str,
        action: &'static str,
        time_left: Option<Duration>,
        now: DateTime<Utc>,
    ) {
        let wait = time_left
            .unwrap_or_else(|| until_next_minute(now))
            .min(self.cfg.max_hold);
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let cfg = &self.cfg;
        let b = keys
            .entry((region.to_string(), action))
            .or_insert_with(|| Bucket {
                rate: cfg.top(),
                next: Instant::now(),
                held: Instant::now(),
                throttled: 0,
                decreased: None,
            });
        let now_t = Instant::now();
        if b.decreased
            .is_none_or(|at| now_t.duration_since(at) >= cfg.decrease_spacing)
        {
            b.rate = (b.rate / 2.0).max(cfg.floor_per_second.min(cfg.top()));
            b.decreased = Some(now_t);
        }
        b.throttled += 1;
        let until = now_t + wait;
        // Said once a hold, not at each throttled answer: a pass that waits out a quota is
        // not silent, and one that meets many throttles is not flooded.
        if b.held <= now_t {
            tracing::info!(
                region,
                api = action,
                wait_secs = wait.as_secs_f64(),
                rate = b.rate,
                "ECS throttled {action} in {region} (the account's quota for it): its calls wait \
                 {:.1} s, then go on at {:.1} a second",
                wait.as_secs_f64(),
                b.rate
            );
        }
        b.held = b.held.max(until);
        b.next = b.next.max(until);
    }

    /// The state of a key, if it has been used.
    pub fn state(&self, region: &str, action: &'static str) -> Option<KeyState> {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.get(&(region.to_string(), action)).map(|b| KeyState {
            rate: b.rate,
            throttled: b.throttled,
        })
    }
}

/// From `now` to the start of the next wall-clock minute.
pub fn until_next_minute(now: DateTime<Utc>) -> Duration {
    let into = Duration::from_secs(u64::from(now.second()))
        + Duration::from_nanos(u64::from(now.nanosecond().min(999_999_999)));
    Duration::from_secs(60).saturating_sub(into)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_key_sends_a_seconds_worth_at_once_then_keeps_to_its_rate() {
        let p = Pacer::new(PaceConfig {
            start_per_second: 10.0,
            ..PaceConfig::default()
        });
        let start = Instant::now();
        for _ in 0..10 {
            p.wait("cn-hangzhou", "DescribeInstances").await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "a burst of ten");
        for _ in 0..20 {
            p.wait("cn-hangzhou", "DescribeInstances").await;
        }
        // Thirty calls at ten per second with a burst of ten: the last starts at 2 s, so no
        // second holds more than twenty and no minute more than its 600 and the burst.
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        // Idle again, the burst is back.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let again = Instant::now();
        for _ in 0..10 {
            p.wait("cn-hangzhou", "DescribeInstances").await;
        }
        assert_eq!(again.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn calls_of_one_key_are_spaced_and_other_keys_do_not_wait() {
        let p = Pacer::new(PaceConfig {
            start_per_second: 10.0,
            burst_seconds: 0.0,
            ..PaceConfig::default()
        });
        let start = Instant::now();
        for _ in 0..11 {
            p.wait("cn-hangzhou", "DeleteInstances").await;
        }
        // Eleven calls at ten per second: the last one starts a second after the first.
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        let other = Instant::now();
        p.wait("cn-shanghai", "DeleteInstances").await;
        p.wait("cn-hangzhou", "DescribeInstances").await;
        assert_eq!(
            other.elapsed(),
            Duration::ZERO,
            "another region or API has its own bucket"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_halves_the_rate_and_holds_the_key_for_what_ecs_said() {
        let p = Pacer::new(PaceConfig {
            start_per_second: 8.0,
            burst_seconds: 0.0,
            ..PaceConfig::default()
        });
        p.wait("cn-hangzhou", "DescribeInstances").await;
        let now = t("2026-12-01T10:00:20Z");
        p.throttled(
            "cn-hangzhou",
            "DescribeInstances",
            Some(Duration::from_millis(2000)),
            now,
        );
        assert_eq!(
            p.state("cn-hangzhou", "DescribeInstances").unwrap().rate,
            4.0
        );
        // A second throttle of the same burst holds the key but does not halve it again.
        p.throttled(
            "cn-hangzhou",
            "DescribeInstances",
            Some(Duration::from_millis(2000)),
            now,
        );
        assert_eq!(
            p.state("cn-hangzhou", "DescribeInstances").unwrap().rate,
            4.0
        );
        let start = Instant::now();
        p.wait("cn-hangzhou", "DescribeInstances").await;
        assert_eq!(start.elapsed(), Duration::from_millis(2000), "TimeLeft");
        // Without a TimeLeft, the key waits for the next minute (40 s from 10:00:20).
        p.throttled("cn-hangzhou", "DescribeInstances", None, now);
        let start = Instant::now();
        p.wait("cn-hangzhou", "DescribeInstances").await;
        assert_eq!(start.elapsed(), Duration::from_secs(40));
        assert_eq!(
            p.state("cn-hangzhou", "DescribeInstances").unwrap().rate,
            2.0
        );
        // Successes grow it back, never past the start.
        for _ in 0..100 {
            p.succeeded("cn-hangzhou", "DescribeInstances");
        }
        assert_eq!(
            p.state("cn-hangzhou", "DescribeInstances").unwrap().rate,
            8.0
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_ceiling_caps_every_key() {
        let p = Pacer::new(PaceConfig {
            ceiling: Some(2.0),
            ..PaceConfig::default()
        });
        let start = Instant::now();
        for _ in 0..5 {
            p.wait("cn-hangzhou", "DeleteInstances").await;
        }
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_ceiling_above_the_start_is_the_rate_keys_run_at() {
        let p = Pacer::new(PaceConfig {
            ceiling: Some(200.0),
            ..PaceConfig::default()
        });
        let start = Instant::now();
        for _ in 0..201 {
            p.wait("cn-hangzhou", "DeleteInstances").await;
        }
        // 200 a second, evenly spaced: the 201st call starts a second after the first, where
        // the default start of 50 a second would have taken four.
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert_eq!(
            p.state("cn-hangzhou", "DeleteInstances").unwrap().rate,
            200.0
        );
    }

    #[test]
    fn the_next_minute_starts_at_second_zero() {
        assert_eq!(
            until_next_minute(t("2026-12-01T10:00:59.500Z")),
            Duration::from_millis(500)
        );
        assert_eq!(
            until_next_minute(t("2026-12-01T10:00:00Z")),
            Duration::from_secs(60)
        );
    }
}
