//! The one time format of every JSON output (plans, saved plans, `queue list --json`, `history
//! --json`, `apply --json`, the API, notifications): RFC 3339 in UTC with millisecond precision,
//! e.g. `2026-12-01T18:59:11.123Z`. Use it with `#[serde(with = "crate::timefmt")]` (or
//! `crate::timefmt::option` for an `Option`); reading accepts any RFC 3339 time.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serializer};

/// `t` in the JSON time format.
pub fn text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&text(*t))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    DateTime::<Utc>::deserialize(d)
}

/// The same for an optional time (`null` when absent).
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&text(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        Option::<DateTime<Utc>>::deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct T {
        #[serde(with = "super")]
        at: DateTime<Utc>,
        #[serde(with = "super::option")]
        maybe: Option<DateTime<Utc>>,
    }

    #[test]
    fn times_are_utc_to_the_millisecond_and_read_back() {
        let at = DateTime::parse_from_rfc3339("2026-12-01T20:59:11.123456789+02:00")
            .unwrap()
            .with_timezone(&Utc);
        let json = serde_json::to_string(&T { at, maybe: None }).unwrap();
        assert_eq!(json, r#"{"at":"2026-12-01T18:59:11.123Z","maybe":null}"#);
        let back: T = serde_json::from_str(&json).unwrap();
        assert_eq!(back.at.timestamp_millis(), at.timestamp_millis());
        assert!(back.maybe.is_none());
    }
}
