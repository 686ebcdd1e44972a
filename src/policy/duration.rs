//! Policy durations: `30s`, `15m`, `2h`, `7d`, `1w` and combinations such as `1d12h`.
//!
//! Durations are whole seconds and never negative, so "at least this long ago" comparisons
//! cannot be turned around by a stray minus sign.

use std::fmt;

/// The longest duration a policy may state (100 years). Anything longer is certainly a typo and
/// would overflow time arithmetic.
const MAX_SECS: u64 = 100 * 365 * 86_400;

/// A non-negative span of whole seconds, written in policy files as `1d12h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration {
    secs: u64,
}

impl Duration {
    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Duration {
        Duration { secs }
    }

    /// Whole seconds.
    pub const fn as_secs(self) -> u64 {
        self.secs
    }

    /// The same span as a chrono duration, for time arithmetic.
    pub fn to_chrono(self) -> chrono::Duration {
        // MAX_SECS keeps this far inside i64 range.
        chrono::Duration::seconds(i64::try_from(self.secs).unwrap_or(i64::MAX / 1000))
    }

    /// Parses `30s`, `15m`, `2h`, `7d`, `1w` and combinations (`1w2d`, `1d12h30m`): each part a
    /// whole number and a unit, units from largest to smallest, each at most once.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let s = text.trim();
        if s.is_empty() {
            return Err(
                "empty duration; write a number and a unit, e.g. 30s, 15m, 2h, 7d, 1w".into(),
            );
        }
        if s.starts_with('-') {
            return Err(format!(
                "duration {text:?} is negative; durations are never negative"
            ));
        }
        let units: [(char, u64); 5] = [
            ('w', 604_800),
            ('d', 86_400),
            ('h', 3_600),
            ('m', 60),
            ('s', 1),
        ];
        let mut total: u64 = 0;
        let mut last_unit: Option<usize> = None;
        let mut digits = String::new();
        for ch in s.chars() {
            if ch.is_ascii_digit() {
                digits.push(ch);
                continue;
            }
            let Some(idx) = units.iter().position(|(u, _)| *u == ch) else {
                return Err(format!(
                    "duration {text:?} has {ch:?} where a digit or a unit (w, d, h, m, s) was expected"
                ));
            };
            if digits.is_empty() {
                return Err(format!(
                    "duration {text:?}: unit {ch:?} has no number before it"
                ));
            }
            if last_unit.is_some_and(|l| idx <= l) {
                return Err(format!(
                    "duration {text:?}: units must go from largest to smallest, each once (w d h m s)"
                ));
            }
            last_unit = Some(idx);
            let n: u64 = digits
                .parse()
                .map_err(|_| format!("duration {text:?} is too long"))?;
            digits.clear();
            total = n
                .checked_mul(units[idx].1)
                .and_then(|v| total.checked_add(v))
                .filter(|v| *v <= MAX_SECS)
                .ok_or_else(|| format!("duration {text:?} is longer than 100 years"))?;
        }
        if !digits.is_empty() {
            return Err(format!(
                "duration {text:?} ends with a number without a unit; add one of w, d, h, m, s (e.g. {digits}s)"
            ));
        }
        Ok(Duration { secs: total })
    }
}

impl fmt::Display for Duration {
    /// The canonical form: `0s`, or the largest units first (`1d12h`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.secs == 0 {
            return f.write_str("0s");
        }
        let mut rest = self.secs;
        for (unit, size) in [
            ('w', 604_800),
            ('d', 86_400),
            ('h', 3_600),
            ('m', 60),
            ('s', 1),
        ] {
            let n = rest / size;
            if n > 0 {
                write!(f, "{n}{unit}")?;
                rest %= size;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table() {
        let ok = [
            ("0s", 0),
            ("30s", 30),
            ("15m", 900),
            ("2h", 7_200),
            ("7d", 604_800),
            ("1w", 604_800),
            ("1d12h", 129_600),
            ("1w2d3h4m5s", 604_800 + 2 * 86_400 + 3 * 3_600 + 4 * 60 + 5),
        ];
        for (text, secs) in ok {
            assert_eq!(
                Duration::parse(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
        for bad in [
            "",
            "-1d",
            "5",
            "d",
            "1x",
            "1h1d",
            "1d1d",
            "1.5h",
            "99999999999999999999s",
            "1000000w",
        ] {
            assert!(Duration::parse(bad).is_err(), "{bad} should be refused");
        }
        assert!(Duration::parse("-1d").unwrap_err().contains("negative"));
    }

    proptest! {
        #[test]
        fn display_round_trips(secs in 0u64..MAX_SECS) {
            let d = Duration::from_secs(secs);
            prop_assert_eq!(Duration::parse(&d.to_string()), Ok(d));
        }

        #[test]
        fn never_panics(s in "\\PC{0,12}") {
            let _ = Duration::parse(&s);
        }
    }
}
