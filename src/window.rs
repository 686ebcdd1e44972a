//! The operating window: the days and hours in which releases may execute. Outside it, plans and
//! scheduling go on and releases wait; this module only answers "is it open at `t`?" and "when
//! does it next open after `t`?", as pure functions of the window and an instant.
//!
//! A window is one interval per listed day: from `start` on that day to `end` on the same day, or
//! on the next day when `end` is not after `start` (22:00–06:00 crosses midnight and belongs to the
//! day it starts on; `start == end` means a full day from `start`). Each interval is computed in
//! the window's time zone and turned into a pair of instants, so a day with a clock change behaves
//! sanely in zones that have one:
//! - a local time the clocks skip (a spring-forward gap) means the first minute after the gap;
//! - a local time that happens twice (a fall-back overlap) means its first occurrence;
//! - an interval that lies wholly inside a gap does not open that day.
//!
//! Time zones are `UTC`, a fixed offset such as `+08:00`, or an IANA name such as
//! `Asia/Shanghai` or `Europe/Berlin` (which follows daylight saving).

use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, Days, FixedOffset, LocalResult, NaiveDate, NaiveDateTime, NaiveTime,
    TimeZone, Timelike, Utc, Weekday, WeekdaySet,
};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

/// The longest offset accepted, as in ISO 8601 practice (real zones span −12:00 to +14:00).
const MAX_OFFSET_SECS: i32 = 18 * 3600;

/// Days before and after the local date of `now` that can hold a relevant interval. An interval
/// lasts at most a day plus a clock change, so two days back is enough; two weeks ahead finds the
/// next opening even when the nearest listed day's interval falls inside a gap.
const LOOK_BEHIND_DAYS: u64 = 2;
const LOOK_AHEAD_DAYS: u64 = 15;

/// Why an operating window's configuration was rejected. The text names the field, the value and
/// what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("operating window `days`: {0:?} is not a day of the week; write mon, tue, wed, thu, fri, sat or sun (or full names), ranges such as \"mon-fri\", or daily, weekdays, weekends")]
    Day(String),
    #[error("operating window `days` is empty, so releases would never run; list at least one day or leave `days` out for every day")]
    NoDays,
    #[error("operating window `{field}`: {value:?} is not a time of day; write HH:MM in 24-hour form, such as \"22:00\"{hint}")]
    Time {
        field: &'static str,
        value: String,
        hint: &'static str,
    },
    #[error("operating window `timezone`: {value:?} {reason}; write an IANA name such as \"Asia/Shanghai\", \"UTC\", or a fixed offset from UTC such as \"+08:00\"")]
    TimeZone { value: String, reason: &'static str },
}

/// The time zone a window's hours are read in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum WindowTimeZone {
    Utc,
    /// A fixed offset from UTC; it does not follow daylight saving.
    Fixed(FixedOffset),
    /// An IANA zone, with its daylight saving rules.
    Named(chrono_tz::Tz),
}

impl fmt::Debug for WindowTimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for WindowTimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WindowTimeZone::Utc => f.write_str("UTC"),
            WindowTimeZone::Fixed(o) => write!(f, "{o}"),
            WindowTimeZone::Named(tz) => f.write_str(tz.name()),
        }
    }
}

impl FromStr for WindowTimeZone {
    type Err = WindowError;

    /// Accepts `UTC`, `GMT`, `Z`, and offsets `+08:00`, `+0800`, `+08`, optionally prefixed by
    /// `UTC` or `GMT` (`UTC+8`, `UTC+05:30`), and IANA names (`Asia/Shanghai`).
    fn from_str(s: &str) -> Result<Self, WindowError> {
        let err = |reason| WindowError::TimeZone {
            value: s.to_string(),
            reason,
        };
        let t = s.trim();
        if t.contains('/') {
            return chrono_tz::Tz::from_str(t)
                .map(WindowTimeZone::Named)
                .map_err(|_| err("is not a known IANA time zone (names are case-sensitive, such as \"Asia/Shanghai\")"));
        }
        let upper = t.to_ascii_uppercase();
        let rest = upper
            .strip_prefix("UTC")
            .or_else(|| upper.strip_prefix("GMT"))
            .unwrap_or(&upper);
        if rest.is_empty() || rest == "Z" {
            return if t.is_empty() {
                Err(err("is empty"))
            } else {
                Ok(WindowTimeZone::Utc)
            };
        }
        let (sign, digits) = match rest.as_bytes()[0] {
            b'+' => (1, &rest[1..]),
            b'-' => (-1, &rest[1..]),
            _ => return Err(err("is not a time zone this build understands")),
        };
        let (h, m) = match digits.split_once(':') {
            Some((h, m)) => (h, m),
            None if digits.len() == 4 => digits.split_at(2),
            None => (digits, "0"),
        };
        let valid =
            |x: &str| !x.is_empty() && x.len() <= 2 && x.bytes().all(|b| b.is_ascii_digit());
        if !valid(h) || !valid(m) {
            return Err(err("is not a valid offset"));
        }
        let (h, m): (i32, i32) = (h.parse().unwrap_or(99), m.parse().unwrap_or(99));
        let secs = h * 3600 + m * 60;
        if m >= 60 || secs > MAX_OFFSET_SECS {
            return Err(err("is out of range (offsets go up to ±18:00)"));
        }
        if secs == 0 {
            return Ok(WindowTimeZone::Utc);
        }
        FixedOffset::east_opt(sign * secs)
            .map(WindowTimeZone::Fixed)
            .ok_or_else(|| err("is out of range (offsets go up to ±18:00)"))
    }
}

/// When releases may execute. See the module documentation for the exact meaning.
///
/// From YAML: `{days: [mon, tue] | "mon-fri", start: "22:00", end: "06:00", timezone: "+08:00"}`;
/// `days` may be left out for every day, `end: "24:00"` means midnight.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub struct OperatingWindow {
    /// The days an interval starts on (a 22:00–06:00 Friday interval ends on Saturday).
    pub days: WeekdaySet,
    pub start: NaiveTime,
    /// Not after `start` means the interval ends the next day.
    pub end: NaiveTime,
    pub timezone: WindowTimeZone,
}

impl OperatingWindow {
    /// A window from its parts; refuses an empty set of days, which would never open.
    pub fn new(
        days: WeekdaySet,
        start: NaiveTime,
        end: NaiveTime,
        timezone: WindowTimeZone,
    ) -> Result<Self, WindowError> {
        if days.is_empty() {
            return Err(WindowError::NoDays);
        }
        Ok(OperatingWindow {
            days,
            start,
            end,
            timezone,
        })
    }

    /// True when releases may execute at `now`.
    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        match self.timezone {
            WindowTimeZone::Utc => self.is_open_in(&Utc, now),
            WindowTimeZone::Fixed(o) => self.is_open_in(&o, now),
            WindowTimeZone::Named(tz) => self.is_open_in(&tz, now),
        }
    }

    /// The first instant at or after `now` when the window is open: `now` itself when it is open,
    /// else the next opening. `None` only when no listed day ever opens.
    pub fn next_open(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self.timezone {
            WindowTimeZone::Utc => self.next_open_in(&Utc, now),
            WindowTimeZone::Fixed(o) => self.next_open_in(&o, now),
            WindowTimeZone::Named(tz) => self.next_open_in(&tz, now),
        }
    }

    /// [`Self::is_open`] with the hours read in `tz` instead of `self.timezone`.
    pub fn is_open_in<Z: TimeZone>(&self, tz: &Z, now: DateTime<Utc>) -> bool {
        let today = now.with_timezone(tz).date_naive();
        (0..=LOOK_BEHIND_DAYS)
            .filter_map(|k| today.checked_sub_days(Days::new(k)))
            .filter_map(|d| self.interval_in(tz, d))
            .any(|(s, e)| s <= now && now < e)
    }

    /// [`Self::next_open`] with the hours read in `tz` instead of `self.timezone`.
    pub fn next_open_in<Z: TimeZone>(&self, tz: &Z, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let today = now.with_timezone(tz).date_naive();
        let first = today.checked_sub_days(Days::new(LOOK_BEHIND_DAYS))?;
        // Intervals are disjoint and ordered by their day, so the first that has not ended yet
        // is either open now or the next to open.
        first
            .iter_days()
            .take((LOOK_BEHIND_DAYS + LOOK_AHEAD_DAYS) as usize)
            .filter_map(|d| self.interval_in(tz, d))
            .find(|&(_, e)| e > now)
            .map(|(s, _)| s.max(now))
    }

    /// The interval that starts on local `date`, as instants `[start, end)`; `None` when `date`
    /// is not a listed day or the interval is empty (wholly inside a clock change's gap).
    pub fn interval_in<Z: TimeZone>(
        &self,
        tz: &Z,
        date: NaiveDate,
    ) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        if !self.days.contains(date.weekday()) {
            return None;
        }
        let end_date = if self.end <= self.start {
            date.succ_opt()?
        } else {
            date
        };
        let start = resolve(tz, date.and_time(self.start))?;
        let end = resolve(tz, end_date.and_time(self.end))?;
        (start < end).then_some((start, end))
    }
}

/// A local time as an instant: the first occurrence when it happens twice, and the first
/// existing minute after it when the clocks skip it.
fn resolve<Z: TimeZone>(tz: &Z, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    // Gaps in real zones are at most a few hours and start on a whole minute, so stepping by
    // minutes finds the end of the gap exactly; a day of steps bounds the search.
    let mut t = local;
    for _ in 0..=24 * 60 {
        match tz.from_local_datetime(&t) {
            LocalResult::Single(dt) => return Some(dt.with_timezone(&Utc)),
            LocalResult::Ambiguous(a, b) => {
                return Some(a.with_timezone(&Utc).min(b.with_timezone(&Utc)))
            }
            LocalResult::None => {
                let next = t + chrono::Duration::minutes(1);
                // The minute after a skipped time, truncated so a gap ending at :00 is hit.
                t = next.with_second(0)?.with_nanosecond(0)?;
            }
        }
    }
    None
}

impl fmt::Debug for OperatingWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for OperatingWindow {
    /// `mon-fri 22:00-06:00 +08:00`, for logs and "releases wait until …" messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}-{} {}",
            DaysDisplay(self.days),
            hhmm(self.start),
            hhmm(self.end),
            self.timezone
        )
    }
}

fn hhmm(t: NaiveTime) -> String {
    if t.second() == 0 {
        t.format("%H:%M").to_string()
    } else {
        t.format("%H:%M:%S").to_string()
    }
}

/// Days as runs from Monday: `mon-fri`, `mon,wed,fri`, `sat-sun`.
struct DaysDisplay(WeekdaySet);

impl fmt::Display for DaysDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut runs: Vec<(Weekday, Weekday)> = Vec::new();
        for d in self.0.iter(Weekday::Mon) {
            match runs.last_mut() {
                Some((_, last)) if last.succ() == d && d != Weekday::Mon => *last = d,
                _ => runs.push((d, d)),
            }
        }
        let parts: Vec<String> = runs
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    day_name(a).to_string()
                } else {
                    format!("{}-{}", day_name(a), day_name(b))
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

fn day_name(d: Weekday) -> &'static str {
    match d {
        Weekday::Mon => "mon",
        Weekday::Tue => "tue",
        Weekday::Wed => "wed",
        Weekday::Thu => "thu",
        Weekday::Fri => "fri",
        Weekday::Sat => "sat",
        Weekday::Sun => "sun",
    }
}

/// Parses one `days` item: a day (`mon`, `Monday`), an inclusive range that may wrap (`mon-fri`,
/// `fri-mon`), a comma-separated list of those, or `daily`, `weekdays`, `weekends`.
pub fn parse_days(s: &str) -> Result<WeekdaySet, WindowError> {
    let mut set = WeekdaySet::EMPTY;
    for item in s.split(',').map(str::trim) {
        set = set.union(parse_day_item(item)?);
    }
    Ok(set)
}

fn parse_day_item(item: &str) -> Result<WeekdaySet, WindowError> {
    let day = |s: &str| {
        let s = s.trim();
        // chrono accepts three-letter and full English names, in any case.
        Weekday::from_str(s).map_err(|_| WindowError::Day(s.to_string()))
    };
    match item.to_ascii_lowercase().as_str() {
        "daily" => return Ok(WeekdaySet::ALL),
        "weekdays" => {
            return Ok(WeekdaySet::from_array([
                Weekday::Mon,
                Weekday::Tue,
                Weekday::Wed,
                Weekday::Thu,
                Weekday::Fri,
            ]))
        }
        "weekends" => return Ok(WeekdaySet::from_array([Weekday::Sat, Weekday::Sun])),
        _ => {}
    }
    match item.split_once('-') {
        None => Ok(WeekdaySet::single(day(item)?)),
        Some((a, b)) => {
            let (a, b) = (day(a)?, day(b)?);
            let mut set = WeekdaySet::single(a);
            let mut d = a;
            while d != b {
                d = d.succ();
                set.insert(d);
            }
            Ok(set)
        }
    }
}

fn parse_time(field: &'static str, s: &str) -> Result<NaiveTime, WindowError> {
    let t = s.trim();
    let err = |hint| WindowError::Time {
        field,
        value: s.to_string(),
        hint,
    };
    if t == "24:00" || t == "24:00:00" {
        return if field == "end" {
            Ok(NaiveTime::MIN)
        } else {
            Err(err(
                " (24:00 is only allowed as `end`; use 00:00 to start at midnight)",
            ))
        };
    }
    let well_formed = |p: &str| {
        let parts: Vec<&str> = p.split(':').collect();
        (parts.len() == 2 || parts.len() == 3)
            && parts
                .iter()
                .all(|x| !x.is_empty() && x.len() <= 2 && x.bytes().all(|b| b.is_ascii_digit()))
    };
    if !well_formed(t) {
        return Err(err(""));
    }
    NaiveTime::parse_from_str(t, "%H:%M:%S")
        .or_else(|_| NaiveTime::parse_from_str(t, "%H:%M"))
        .map_err(|_| err(""))
}

/// The set of days as configured: one string or a list of strings.
struct DaysField(WeekdaySet);

impl<'de> Deserialize<'de> for DaysField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DaysField;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "days of the week: a list such as [mon, tue] or a string such as \"mon-fri\"",
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<DaysField, E> {
                parse_days(s).map(DaysField).map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<DaysField, A::Error> {
                let mut set = WeekdaySet::EMPTY;
                while let Some(item) = seq.next_element::<String>()? {
                    set = set.union(parse_days(&item).map_err(de::Error::custom)?);
                }
                Ok(DaysField(set))
            }
        }
        d.deserialize_any(V)
    }
}

impl OperatingWindow {
    /// A window from its configuration (`{days, start, end, timezone}`), every problem at once
    /// rather than the first: each with the key it is about (`None`: the window as a whole).
    pub fn from_config(v: &serde_json::Value) -> Result<Self, Vec<(Option<String>, String)>> {
        const EXAMPLE: &str =
            "e.g. {days: mon-fri, start: \"22:00\", end: \"06:00\", timezone: \"+08:00\"}";
        let Some(obj) = v.as_object() else {
            return Err(vec![(
                None,
                format!("`window` must be a mapping ({EXAMPLE})"),
            )]);
        };
        let mut problems: Vec<(Option<String>, String)> = Vec::new();
        for k in obj.keys() {
            if !["days", "start", "end", "timezone"].contains(&k.as_str()) {
                problems.push((
                    Some(k.clone()),
                    format!(
                        "`window`: unknown key `{k}`; the keys are days, start, end and timezone"
                    ),
                ));
            }
        }
        let mut text = |field: &'static str| match obj.get(field) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(other) => {
                problems.push((
                    Some(field.to_string()),
                    format!("`window.{field}` must be a string, found {other}"),
                ));
                None
            }
            None => {
                problems.push((None, format!("`window` needs `{field}` ({EXAMPLE})")));
                None
            }
        };
        let (start, end, timezone) = (text("start"), text("end"), text("timezone"));
        let days = match obj.get("days") {
            None => Some(WeekdaySet::ALL),
            Some(d) => match serde_json::from_value::<DaysField>(d.clone()) {
                Ok(d) => Some(d.0),
                Err(e) => {
                    problems.push((Some("days".into()), format!("`window`: {e}")));
                    None
                }
            },
        };
        /// The value of a field given as text, or its problem noted.
        fn part<T>(
            problems: &mut Vec<(Option<String>, String)>,
            field: &str,
            r: Option<Result<T, WindowError>>,
        ) -> Option<T> {
            match r? {
                Ok(v) => Some(v),
                Err(e) => {
                    problems.push((Some(field.to_string()), format!("`window`: {e}")));
                    None
                }
            }
        }
        let start = part(
            &mut problems,
            "start",
            start.map(|t| parse_time("start", &t)),
        );
        let end = part(&mut problems, "end", end.map(|t| parse_time("end", &t)));
        let timezone = part(&mut problems, "timezone", timezone.map(|t| t.parse()));
        match (days, start, end, timezone) {
            (Some(d), Some(s), Some(e), Some(z)) if problems.is_empty() => {
                OperatingWindow::new(d, s, e, z)
                    .map_err(|e| vec![(Some("days".into()), format!("`window`: {e}"))])
            }
            _ => Err(problems),
        }
    }
}

/// Through [`OperatingWindow::from_config`]: every problem, in one message.
impl TryFrom<serde_json::Value> for OperatingWindow {
    type Error = String;

    fn try_from(v: serde_json::Value) -> Result<Self, String> {
        OperatingWindow::from_config(&v).map_err(|problems| {
            problems
                .into_iter()
                .map(|(_, m)| m)
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{MappedLocalTime, Offset};
    use proptest::prelude::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn window(days: &str, start: &str, end: &str, tz: &str) -> OperatingWindow {
        OperatingWindow::new(
            parse_days(days).unwrap(),
            parse_time("start", start).unwrap(),
            parse_time("end", end).unwrap(),
            tz.parse().unwrap(),
        )
        .unwrap()
    }

    /// A zone with Central European daylight saving for 2024 only: +01:00, then +02:00 from
    /// 2024-03-31T01:00Z (02:00 local jumps to 03:00), then +01:00 from 2024-10-27T01:00Z
    /// (03:00 local falls back to 02:00, so 02:00–03:00 happens twice).
    #[derive(Debug, Clone, Copy)]
    struct Cet2024;

    const SPRING: i64 = 1_711_846_800; // 2024-03-31T01:00:00Z
    const AUTUMN: i64 = 1_729_990_800; // 2024-10-27T01:00:00Z

    impl Cet2024 {
        fn offset_at(utc_secs: i64) -> FixedOffset {
            let h = if (SPRING..AUTUMN).contains(&utc_secs) {
                2
            } else {
                1
            };
            FixedOffset::east_opt(h * 3600).unwrap()
        }
    }

    impl TimeZone for Cet2024 {
        type Offset = FixedOffset;
        fn from_offset(_: &FixedOffset) -> Self {
            Cet2024
        }
        fn offset_from_local_date(&self, local: &NaiveDate) -> MappedLocalTime<FixedOffset> {
            self.offset_from_local_datetime(&local.and_time(NaiveTime::MIN))
        }
        fn offset_from_local_datetime(
            &self,
            local: &NaiveDateTime,
        ) -> MappedLocalTime<FixedOffset> {
            // An offset fits a local time when the instant it gives has that offset.
            let fits: Vec<FixedOffset> = [1, 2]
                .into_iter()
                .map(|h| FixedOffset::east_opt(h * 3600).unwrap())
                .filter(|o| {
                    let secs = local.and_utc().timestamp() - i64::from(o.local_minus_utc());
                    Self::offset_at(secs) == *o
                })
                .collect();
            match fits[..] {
                [o] => MappedLocalTime::Single(o),
                [a, b] => MappedLocalTime::Ambiguous(b, a),
                _ => MappedLocalTime::None,
            }
        }
        fn offset_from_utc_date(&self, utc: &NaiveDate) -> FixedOffset {
            self.offset_from_utc_datetime(&utc.and_time(NaiveTime::MIN))
        }
        fn offset_from_utc_datetime(&self, utc: &NaiveDateTime) -> FixedOffset {
            Self::offset_at(utc.and_utc().timestamp()).fix()
        }
    }

    #[test]
    fn table() {
        // 2024-05-06 is a Monday.
        let cases = [
            // (days, start, end, tz, now, open, next_open)
            (
                "mon-fri",
                "09:00",
                "17:00",
                "UTC",
                "2024-05-06T08:59:59Z",
                false,
                Some("2024-05-06T09:00:00Z"),
            ),
            (
                "mon-fri",
                "09:00",
                "17:00",
                "UTC",
                "2024-05-06T09:00:00Z",
                true,
                Some("2024-05-06T09:00:00Z"),
            ),
            (
                "mon-fri",
                "09:00",
                "17:00",
                "UTC",
                "2024-05-06T17:00:00Z",
                false,
                Some("2024-05-07T09:00:00Z"),
            ),
            // Friday evening waits for Monday.
            (
                "mon-fri",
                "09:00",
                "17:00",
                "UTC",
                "2024-05-10T18:00:00Z",
                false,
                Some("2024-05-13T09:00:00Z"),
            ),
            (
                "mon-fri",
                "09:00",
                "17:00",
                "UTC",
                "2024-05-11T12:00:00Z",
                false,
                Some("2024-05-13T09:00:00Z"),
            ),
            // Crossing midnight: Friday's window runs into Saturday morning; Saturday's does not exist.
            (
                "mon-fri",
                "22:00",
                "06:00",
                "UTC",
                "2024-05-11T05:59:00Z",
                true,
                Some("2024-05-11T05:59:00Z"),
            ),
            (
                "mon-fri",
                "22:00",
                "06:00",
                "UTC",
                "2024-05-11T06:00:00Z",
                false,
                Some("2024-05-13T22:00:00Z"),
            ),
            (
                "mon-fri",
                "22:00",
                "06:00",
                "UTC",
                "2024-05-11T23:00:00Z",
                false,
                Some("2024-05-13T22:00:00Z"),
            ),
            // Monday 03:00 belongs to Sunday's window, which is not listed.
            (
                "mon-fri",
                "22:00",
                "06:00",
                "UTC",
                "2024-05-06T03:00:00Z",
                false,
                Some("2024-05-06T22:00:00Z"),
            ),
            (
                "mon-fri",
                "22:00",
                "06:00",
                "UTC",
                "2024-05-07T03:00:00Z",
                true,
                Some("2024-05-07T03:00:00Z"),
            ),
            // Weekends only.
            (
                "weekends",
                "00:00",
                "24:00",
                "UTC",
                "2024-05-10T23:59:59Z",
                false,
                Some("2024-05-11T00:00:00Z"),
            ),
            (
                "sat,sun",
                "00:00",
                "00:00",
                "UTC",
                "2024-05-12T23:59:59Z",
                true,
                Some("2024-05-12T23:59:59Z"),
            ),
            (
                "sat-sun",
                "00:00",
                "00:00",
                "UTC",
                "2024-05-13T00:00:00Z",
                false,
                Some("2024-05-18T00:00:00Z"),
            ),
            // A wrapping range.
            (
                "fri-mon",
                "10:00",
                "11:00",
                "UTC",
                "2024-05-07T10:30:00Z",
                false,
                Some("2024-05-10T10:00:00Z"),
            ),
            // Shanghai is +08:00: Monday 22:00 local is Monday 14:00 UTC.
            (
                "mon",
                "22:00",
                "06:00",
                "+08:00",
                "2024-05-06T14:00:00Z",
                true,
                Some("2024-05-06T14:00:00Z"),
            ),
            (
                "mon",
                "22:00",
                "06:00",
                "+08:00",
                "2024-05-06T13:59:00Z",
                false,
                Some("2024-05-06T14:00:00Z"),
            ),
            (
                "mon",
                "22:00",
                "06:00",
                "+08:00",
                "2024-05-06T22:00:00Z",
                false,
                Some("2024-05-13T14:00:00Z"),
            ),
            // Sunday 20:00 UTC is Monday 04:00 local: Sunday's local window, not listed.
            (
                "mon",
                "00:00",
                "06:00",
                "+08:00",
                "2024-05-05T20:00:00Z",
                true,
                Some("2024-05-05T20:00:00Z"),
            ),
            (
                "mon",
                "00:00",
                "06:00",
                "UTC-05:00",
                "2024-05-06T04:00:00Z",
                false,
                Some("2024-05-06T05:00:00Z"),
            ),
            // Every day, all day.
            (
                "daily",
                "00:00",
                "00:00",
                "+05:30",
                "2024-05-06T12:34:56Z",
                true,
                Some("2024-05-06T12:34:56Z"),
            ),
        ];
        for (days, start, end, tz, now, open, next) in cases {
            let w = window(days, start, end, tz);
            let now = utc(now);
            assert_eq!(w.is_open(now), open, "is_open {w} at {now}");
            assert_eq!(w.next_open(now), next.map(utc), "next_open {w} at {now}");
        }
    }

    #[test]
    fn spring_forward_gap() {
        let tz = Cet2024;
        // Sunday 2024-03-31: 02:00 local does not exist; clocks go 01:59 → 03:00 (01:00Z).
        let w = window("sun", "02:30", "04:00", "UTC");
        assert_eq!(
            w.next_open_in(&tz, utc("2024-03-30T12:00:00Z")),
            Some(utc("2024-03-31T01:00:00Z")),
            "a start inside the gap opens when the gap ends"
        );
        assert!(w.is_open_in(&tz, utc("2024-03-31T01:00:00Z")));
        assert!(
            !w.is_open_in(&tz, utc("2024-03-31T02:00:00Z")),
            "04:00 CEST = 02:00Z"
        );
        // A window wholly inside the gap does not open that day; the next Sunday it does.
        let w = window("sun", "02:10", "02:50", "UTC");
        assert_eq!(
            w.next_open_in(&tz, utc("2024-03-30T12:00:00Z")),
            Some(utc("2024-04-07T00:10:00Z"))
        );
        // An overnight window shortened by the gap: Sat 22:00 (+01) → Sun 06:00 (+02) is 7 hours.
        let w = window("sat", "22:00", "06:00", "UTC");
        let (s, e) = w
            .interval_in(&tz, NaiveDate::from_ymd_opt(2024, 3, 30).unwrap())
            .unwrap();
        assert_eq!(
            (s, e),
            (utc("2024-03-30T21:00:00Z"), utc("2024-03-31T04:00:00Z"))
        );
    }

    #[test]
    fn fall_back_overlap() {
        let tz = Cet2024;
        // Sunday 2024-10-27: 02:00–03:00 local happens twice (00:00Z–01:00Z at +02, then
        // 01:00Z–02:00Z at +01). A start at 02:30 means the first 02:30.
        let w = window("sun", "02:30", "05:00", "UTC");
        let d = NaiveDate::from_ymd_opt(2024, 10, 27).unwrap();
        assert_eq!(
            w.interval_in(&tz, d),
            Some((utc("2024-10-27T00:30:00Z"), utc("2024-10-27T04:00:00Z")))
        );
        // An end inside the repeated hour closes at its first occurrence: one interval, not two.
        let w = window("sun", "01:00", "02:30", "UTC");
        assert_eq!(
            w.interval_in(&tz, d),
            Some((utc("2024-10-26T23:00:00Z"), utc("2024-10-27T00:30:00Z")))
        );
        assert!(
            !w.is_open_in(&tz, utc("2024-10-27T01:15:00Z")),
            "the second 02:15 is outside"
        );
        // A full-day window lasts 25 hours that day and the next day's starts where it ends.
        let w = window("daily", "00:00", "00:00", "UTC");
        let (s, e) = w.interval_in(&tz, d).unwrap();
        assert_eq!(e - s, chrono::Duration::hours(25));
        assert_eq!(w.interval_in(&tz, d.succ_opt().unwrap()).unwrap().0, e);
    }

    #[test]
    fn iana_zones_follow_daylight_saving() {
        let w = window("sun", "02:30", "04:00", "Europe/Berlin");
        // The same answers as the hand-made Cet2024 zone, from the real rules.
        assert_eq!(
            w.next_open(utc("2024-03-30T12:00:00Z")),
            Some(utc("2024-03-31T01:00:00Z"))
        );
        assert!(!w.is_open(utc("2024-03-31T02:00:00Z")));
        let d = NaiveDate::from_ymd_opt(2024, 10, 27).unwrap();
        assert_eq!(
            w.interval_in(&chrono_tz::Europe::Berlin, d),
            Some((utc("2024-10-27T00:30:00Z"), utc("2024-10-27T03:00:00Z")))
        );
        // Shanghai has no daylight saving: Monday 22:00 local is always 14:00Z.
        let w = window("mon", "22:00", "06:00", "Asia/Shanghai");
        assert_eq!(
            w.next_open(utc("2024-05-06T00:00:00Z")),
            Some(utc("2024-05-06T14:00:00Z"))
        );
        // New York, winter and summer.
        let w = window("mon-fri", "09:00", "17:00", "America/New_York");
        assert_eq!(
            w.next_open(utc("2024-01-06T00:00:00Z")),
            Some(utc("2024-01-08T14:00:00Z"))
        );
        assert_eq!(
            w.next_open(utc("2024-07-06T00:00:00Z")),
            Some(utc("2024-07-08T13:00:00Z"))
        );
    }

    #[test]
    fn time_zones_parse() {
        let ok = [
            ("UTC", "UTC"),
            ("utc", "UTC"),
            ("Z", "UTC"),
            ("GMT", "UTC"),
            ("+00:00", "UTC"),
            ("+08:00", "+08:00"),
            ("+0800", "+08:00"),
            ("+8", "+08:00"),
            ("UTC+8", "+08:00"),
            ("UTC-05:30", "-05:30"),
            ("gmt+14", "+14:00"),
        ];
        for (s, shown) in ok {
            assert_eq!(
                s.parse::<WindowTimeZone>().unwrap().to_string(),
                shown,
                "{s}"
            );
        }
        for s in [
            "", "+25:00", "+08:60", "+8:0:0", "CST", "08:00", "+abc", "+123",
        ] {
            assert!(
                s.parse::<WindowTimeZone>().is_err(),
                "{s:?} should be rejected"
            );
        }
        assert_eq!(
            "Asia/Shanghai"
                .parse::<WindowTimeZone>()
                .unwrap()
                .to_string(),
            "Asia/Shanghai"
        );
        let e = "Asia/Shangai"
            .parse::<WindowTimeZone>()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"Asia/Shangai\" is not a known IANA time zone"),
            "{e}"
        );
    }

    #[test]
    fn days_parse_and_display() {
        let cases = [
            ("mon-fri", "mon-fri"),
            ("Monday, Wednesday,fri", "mon,wed,fri"),
            ("fri-mon", "mon,fri-sun"),
            ("sun-sat", "mon-sun"),
            ("weekdays", "mon-fri"),
            ("weekends", "sat-sun"),
            ("daily", "mon-sun"),
            ("sat", "sat"),
        ];
        for (s, shown) in cases {
            assert_eq!(
                DaysDisplay(parse_days(s).unwrap()).to_string(),
                shown,
                "{s}"
            );
        }
        for s in ["", "mon-", "funday", "mon--fri", "mon fri"] {
            assert!(parse_days(s).is_err(), "{s:?} should be rejected");
        }
    }

    #[test]
    fn from_yaml() {
        let w: OperatingWindow = serde_saphyr::from_str(
            "days: [mon, tue, wed]\nstart: \"22:00\"\nend: \"06:00\"\ntimezone: \"+08:00\"\n",
        )
        .unwrap();
        assert_eq!(w.to_string(), "mon-wed 22:00-06:00 +08:00");
        let w: OperatingWindow =
            serde_saphyr::from_str("days: mon-fri\nstart: 22:00\nend: 24:00\ntimezone: UTC\n")
                .unwrap();
        assert_eq!(w.to_string(), "mon-fri 22:00-00:00 UTC");
        let w: OperatingWindow =
            serde_saphyr::from_str("start: '09:30'\nend: '17:00:30'\ntimezone: UTC+8\n").unwrap();
        assert_eq!(w.to_string(), "mon-sun 09:30-17:00:30 +08:00");
    }

    #[test]
    fn yaml_errors_say_what_to_write() {
        let cases = [
            (
                "days: [mon, funday]\nstart: '22:00'\nend: '06:00'\ntimezone: UTC\n",
                "\"funday\" is not a day of the week",
            ),
            (
                "days: []\nstart: '22:00'\nend: '06:00'\ntimezone: UTC\n",
                "`days` is empty",
            ),
            (
                "start: '25:00'\nend: '06:00'\ntimezone: UTC\n",
                "`start`: \"25:00\" is not a time of day",
            ),
            (
                "start: '24:00'\nend: '06:00'\ntimezone: UTC\n",
                "24:00 is only allowed as `end`",
            ),
            (
                "start: '22:00'\nend: 6pm\ntimezone: UTC\n",
                "`end`: \"6pm\" is not a time of day",
            ),
            (
                "start: '22:00'\nend: '06:00'\ntimezone: Mars/Olympus\n",
                "not a known IANA time zone",
            ),
            ("start: '22:00'\nend: '06:00'\n", "timezone"),
            (
                "start: '22:00'\nend: '06:00'\ntimezone: UTC\nzone: x\n",
                "zone",
            ),
        ];
        for (yaml, want) in cases {
            let e = serde_saphyr::from_str::<OperatingWindow>(yaml)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{yaml:?}: error {e:?} lacks {want:?}");
        }
    }

    fn arb_window() -> impl Strategy<Value = OperatingWindow> {
        (1u8..128, 0u32..24 * 4, 0u32..24 * 4, -14 * 4..=14 * 4i32).prop_map(|(days, s, e, o)| {
            let days: WeekdaySet = (0..7)
                .filter(|i| days & (1 << i) != 0)
                .map(|i| Weekday::try_from(i as u8).unwrap())
                .collect();
            let t = |q: u32| NaiveTime::from_hms_opt(q / 4, (q % 4) * 15, 0).unwrap();
            let tz = match o {
                0 => WindowTimeZone::Utc,
                o => WindowTimeZone::Fixed(FixedOffset::east_opt(o * 900).unwrap()),
            };
            OperatingWindow::new(days, t(s), t(e), tz).unwrap()
        })
    }

    /// 2020–2030, to the second.
    fn arb_instant() -> impl Strategy<Value = DateTime<Utc>> {
        (1_577_836_800i64..1_893_456_000).prop_map(|s| DateTime::from_timestamp(s, 0).unwrap())
    }

    /// The obvious reading for a fixed offset: the local wall clock is inside today's interval,
    /// or inside yesterday's when it crosses midnight.
    fn oracle(w: &OperatingWindow, now: DateTime<Utc>) -> bool {
        let local = match w.timezone {
            WindowTimeZone::Utc => now.naive_utc(),
            WindowTimeZone::Fixed(o) => now.with_timezone(&o).naive_local(),
            WindowTimeZone::Named(_) => unreachable!("the oracle is for fixed offsets"),
        };
        let (day, t) = (local.weekday(), local.time());
        if w.start < w.end {
            w.days.contains(day) && w.start <= t && t < w.end
        } else {
            (w.days.contains(day) && t >= w.start) || (w.days.contains(day.pred()) && t < w.end)
        }
    }

    proptest! {
        #[test]
        fn next_open_is_open_and_not_before_now(w in arb_window(), t in arb_instant()) {
            let n = w.next_open(t).expect("a window with days always opens again");
            prop_assert!(n >= t);
            prop_assert!(w.is_open(n), "{w}: next_open({t}) = {n} is not open");
            prop_assert!(n - t <= chrono::Duration::days(8));
            if w.is_open(t) {
                prop_assert_eq!(n, t);
            } else {
                // Nothing in between is open: the second before the opening is closed.
                prop_assert!(!w.is_open(n - chrono::Duration::seconds(1)));
            }
        }

        #[test]
        fn is_open_matches_the_wall_clock(w in arb_window(), t in arb_instant()) {
            prop_assert_eq!(w.is_open(t), oracle(&w, t), "{} at {}", w, t);
        }

        #[test]
        fn iana_zones_keep_the_properties(w in arb_window(), t in arb_instant(), z in 0usize..4) {
            let tz = [chrono_tz::Europe::Berlin, chrono_tz::America::New_York,
                      chrono_tz::Australia::Lord_Howe, chrono_tz::Asia::Shanghai][z];
            let w = OperatingWindow { timezone: WindowTimeZone::Named(tz), ..w };
            let n = w.next_open(t).unwrap();
            prop_assert!(n >= t);
            prop_assert!(w.is_open(n));
            if n > t {
                prop_assert!(!w.is_open(n - chrono::Duration::seconds(1)));
            }
        }

        #[test]
        fn dst_zone_keeps_the_properties(w in arb_window(), t in 1_704_067_200i64..1_735_689_600) {
            // All of 2024, where the test zone changes its clocks twice.
            let t = DateTime::from_timestamp(t, 0).unwrap();
            let n = w.next_open_in(&Cet2024, t).unwrap();
            prop_assert!(n >= t);
            prop_assert!(w.is_open_in(&Cet2024, n));
            if n > t {
                prop_assert!(!w.is_open_in(&Cet2024, n - chrono::Duration::seconds(1)));
            }
        }
    }
}
