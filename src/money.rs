//! Money as ecs-janitor counts it: whole minor units (cents, fen) in an integer, with the
//! currency ECS answered in, so sums never drift and every total equals the sum of its parts.
//!
//! ECS answers prices as JSON numbers per hour (`DescribePrice`) or per month
//! (`DescribeRenewalPrice`); each is read once into millionths ([`micros_of`]) and turned into a
//! monthly figure in minor units with one rounding ([`monthly_from_hourly`]). A month is 730 hours,
//! as Alibaba's console estimates it. Figures are list prices: no discounts, coupons or savings
//! plans, unless the user's price file says otherwise.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Hours in the month every monthly figure is priced for.
pub const HOURS_PER_MONTH: i64 = 730;

/// An amount of one currency, in minor units (1/100 of the unit).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Money {
    /// Minor units: 1234 is 12.34.
    pub minor: i64,
    /// An ISO 4217 code as ECS answers it (`CNY` on the China site, `USD` on the international).
    pub currency: String,
}

impl Money {
    pub fn new(minor: i64, currency: impl Into<String>) -> Money {
        Money {
            minor,
            currency: currency.into(),
        }
    }

    /// The amount as a decimal string with two places (`"1234.50"`), as JSON carries it: a
    /// string, so no reader turns it into a binary float.
    pub fn decimal(&self) -> String {
        decimal(self.minor)
    }

    /// `¥1,234.50`, `$12.00`, or `1,234.50 EUR` for a currency without a symbol here.
    pub fn display(&self) -> String {
        with_symbol(&self.currency, &grouped(self.minor, true))
    }

    /// Rounded to whole units: `¥12,300`.
    pub fn display_whole(&self) -> String {
        with_symbol(&self.currency, &grouped(self.minor, false))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

/// Sums of several currencies, each kept apart (never converted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals(BTreeMap<String, i64>);

impl Totals {
    pub fn new() -> Totals {
        Totals::default()
    }

    pub fn add(&mut self, m: &Money) {
        *self.0.entry(m.currency.clone()).or_insert(0) += m.minor;
    }

    pub fn add_all(&mut self, other: &Totals) {
        for (c, v) in &other.0 {
            *self.0.entry(c.clone()).or_insert(0) += v;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each currency's sum, in currency order.
    pub fn iter(&self) -> impl Iterator<Item = Money> + '_ {
        self.0.iter().map(|(c, v)| Money::new(*v, c.clone()))
    }

    /// `¥12,300`, `¥12,300 + $40`, or `¥0` when nothing was added (`currency_if_empty`).
    pub fn display_whole(&self, currency_if_empty: &str) -> String {
        if self.0.is_empty() {
            return Money::new(0, currency_if_empty).display_whole();
        }
        self.iter()
            .map(|m| m.display_whole())
            .collect::<Vec<_>>()
            .join(" + ")
    }

    /// `¥350.40`, `¥350.40 + $12.00`.
    pub fn display(&self, currency_if_empty: &str) -> String {
        if self.0.is_empty() {
            return Money::new(0, currency_if_empty).display();
        }
        self.iter()
            .map(|m| m.display())
            .collect::<Vec<_>>()
            .join(" + ")
    }
}

/// A price ECS answered (a JSON number) in millionths of the unit. Prices have at most four
/// decimals; the float is only the carrier of the answer, rounded once here.
pub fn micros_of(price: f64) -> Option<i64> {
    if !price.is_finite() || !(0.0..=1e12).contains(&price) {
        return None;
    }
    Some((price * 1_000_000.0).round() as i64)
}

/// Minor units of a month (730 h) at an hourly price given in millionths, rounded half up.
pub fn monthly_from_hourly(hourly_micros: i64) -> i64 {
    round_div(hourly_micros * HOURS_PER_MONTH, 10_000)
}

/// Minor units of a price given in millionths (a monthly price), rounded half up.
pub fn minor_from_micros(micros: i64) -> i64 {
    round_div(micros, 10_000)
}

fn round_div(n: i64, d: i64) -> i64 {
    if n >= 0 {
        (n + d / 2) / d
    } else {
        -((-n + d / 2) / d)
    }
}

/// Parses a decimal text (`"350.4"`, `"12"`) into minor units, exactly; at most two decimals.
pub fn parse_decimal(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let bad = || format!("{s:?} is not an amount like 350.40 (at most two decimals)");
    let (neg, t) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t),
    };
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 2 {
        return Err(bad());
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let w: i64 = whole.parse().map_err(|_| bad())?;
    let f: i64 = format!("{frac:0<2}").parse().map_err(|_| bad())?;
    let v = w
        .checked_mul(100)
        .and_then(|x| x.checked_add(f))
        .ok_or_else(bad)?;
    Ok(if neg { -v } else { v })
}

/// `1 disk stays` or `3 disks stay`.
pub fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

fn decimal(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let a = minor.unsigned_abs();
    format!("{sign}{}.{:02}", a / 100, a % 100)
}

/// `1,234.50` (with cents) or `1,235` (rounded to whole units).
fn grouped(minor: i64, cents: bool) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let a = minor.unsigned_abs();
    let (whole, frac) = if cents {
        (a / 100, Some(a % 100))
    } else {
        ((a + 50) / 100, None)
    };
    let digits = whole.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    match frac {
        Some(f) => format!("{sign}{out}.{f:02}"),
        None => format!("{sign}{out}"),
    }
}

fn with_symbol(currency: &str, amount: &str) -> String {
    match currency {
        "CNY" => format!("¥{amount}"),
        "USD" => format!("${amount}"),
        other => format!("{amount} {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hourly_prices_become_months_with_one_rounding() {
        // ¥0.48 an hour is ¥350.40 a month of 730 hours.
        assert_eq!(monthly_from_hourly(micros_of(0.48).unwrap()), 35_040);
        // Four-decimal prices keep their precision: 0.0548 × 730 = 40.004 → 40.00.
        assert_eq!(monthly_from_hourly(micros_of(0.0548).unwrap()), 4_000);
        assert_eq!(minor_from_micros(micros_of(210.24).unwrap()), 21_024);
        assert_eq!(micros_of(f64::NAN), None);
        assert_eq!(micros_of(-1.0), None);
    }

    #[test]
    fn sums_are_exact_and_kept_per_currency() {
        let mut t = Totals::new();
        for _ in 0..1000 {
            t.add(&Money::new(10, "CNY")); // ¥0.10, a thousand times
        }
        t.add(&Money::new(4_000, "USD"));
        let all: Vec<Money> = t.iter().collect();
        assert_eq!(all[0], Money::new(10_000, "CNY"));
        assert_eq!(t.display_whole("CNY"), "¥100 + $40");
        assert_eq!(Totals::new().display_whole("CNY"), "¥0");
    }

    #[test]
    fn amounts_show_grouped_with_their_symbol() {
        assert_eq!(Money::new(1_230_000, "CNY").display_whole(), "¥12,300");
        assert_eq!(Money::new(35_040, "CNY").display(), "¥350.40");
        assert_eq!(Money::new(123_456_789, "EUR").display(), "1,234,567.89 EUR");
        assert_eq!(Money::new(-5, "USD").decimal(), "-0.05");
        assert_eq!(Money::new(35_040, "CNY").decimal(), "350.40");
    }

    #[test]
    fn decimals_parse_exactly() {
        assert_eq!(parse_decimal("350.4"), Ok(35_040));
        assert_eq!(parse_decimal("12"), Ok(1_200));
        assert_eq!(parse_decimal("0.05"), Ok(5));
        assert!(parse_decimal("1.234").is_err());
        assert!(parse_decimal("abc").is_err());
        assert!(parse_decimal("").is_err());
    }
}
