//! The monthly figure each release was queued with: recording it, reading it back (for the
//! notification of a completed release), and summing it for the status page and the metrics
//! (saved this month, since the start, waiting out grace, per day).
//!
//! Amounts are integers in minor units of their currency, summed per currency in SQL (never as
//! floats); a release whose price was unknown keeps its basis and no amount, and is counted apart.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::db::Sql;
use super::{ms, ReleaseId, ReleaseSaving, Store, StoreError};
use crate::money::{Money, Totals};

/// Savings summed over the queue's history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavingsSummary {
    /// Run-rate released since the start of the month (UTC) of `now`.
    pub this_month: Totals,
    /// Run-rate released since the queue began.
    pub since_start: Totals,
    /// Run-rate of releases still pending (waiting out their grace, or due).
    pub upcoming: Totals,
    /// Releases done whose saving was unknown.
    pub released_unknown: i64,
}

/// One day's releases and what they saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaySavings {
    /// The day, as days since 1970-01-01 (UTC).
    pub day: i64,
    pub releases: i64,
    pub saved: Totals,
}

const DAY_MS: i64 = 86_400_000;

fn totals(rows: &[(Option<String>, Option<i64>)]) -> Totals {
    let mut t = Totals::new();
    for (c, v) in rows {
        if let (Some(c), Some(v)) = (c, v) {
            t.add(&Money::new(*v, c.clone()));
        }
    }
    t
}

impl Store {
    /// The figure each of `ids` was queued with, for those that were priced.
    pub async fn savings_of(
        &self,
        ids: &[ReleaseId],
    ) -> Result<HashMap<ReleaseId, ReleaseSaving>, StoreError> {
        let mut out = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(400) {
            let mut q = Sql::new(
                "SELECT id, saving_basis, saving_minor, saving_currency, renewal_minor
                 FROM releases WHERE saving_basis IS NOT NULL AND id IN ",
            );
            q.push_list(chunk.iter().copied());
            type Columns = (
                ReleaseId,
                Option<String>,
                Option<i64>,
                Option<String>,
                Option<i64>,
            );
            let rows: Vec<Columns> = self.pool.fetch_all(q).await?;
            for (id, basis, minor, currency, renewal) in rows {
                if let Some(s) = ReleaseSaving::from_columns(basis, minor, currency, renewal) {
                    out.insert(id, s);
                }
            }
        }
        Ok(out)
    }

    async fn sum_by_currency(
        &self,
        filter: &str,
        since: Option<i64>,
    ) -> Result<Totals, StoreError> {
        let mut q = Sql::new(format!(
            "SELECT saving_currency, CAST(SUM(saving_minor) AS BIGINT) FROM releases
             WHERE {filter} AND saving_minor IS NOT NULL"
        ));
        if let Some(t) = since {
            q.push(" AND updated_at >= ").push_bind(t);
        }
        q.push(" GROUP BY saving_currency ORDER BY saving_currency");
        let rows: Vec<(Option<String>, Option<i64>)> = self.pool.fetch_all(q).await?;
        Ok(totals(&rows))
    }

    /// Saved this month (UTC) and since the start, and what pending releases will save.
    pub async fn savings_summary(&self, now: DateTime<Utc>) -> Result<SavingsSummary, StoreError> {
        use chrono::Datelike;
        let month_start = now
            .date_naive()
            .with_day(1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|d| d.and_utc())
            .unwrap_or(now);
        let (unknown,): (i64,) = self
            .pool
            .fetch_one(Sql::new(
                "SELECT COUNT(*) FROM releases WHERE state = 'succeeded'
                 AND saving_basis IS NOT NULL AND saving_minor IS NULL",
            ))
            .await?;
        Ok(SavingsSummary {
            this_month: self
                .sum_by_currency("state = 'succeeded'", Some(ms(month_start)))
                .await?,
            since_start: self.sum_by_currency("state = 'succeeded'", None).await?,
            upcoming: self
                .sum_by_currency("state IN ('pending', 'in_flight')", None)
                .await?,
            released_unknown: unknown,
        })
    }

    /// Releases done and their savings, per UTC day, for the `days` days ending with `now`'s
    /// (every day present, empty ones included), oldest first.
    pub async fn savings_by_day(
        &self,
        now: DateTime<Utc>,
        days: i64,
    ) -> Result<Vec<DaySavings>, StoreError> {
        let today = ms(now).div_euclid(DAY_MS);
        let first = today - days + 1;
        let mut q = Sql::new(
            "SELECT updated_at / 86400000, saving_currency, COUNT(*),
                    CAST(SUM(saving_minor) AS BIGINT)
             FROM releases WHERE state = 'succeeded' AND updated_at >= ",
        );
        q.push_bind(first * DAY_MS);
        q.push(" GROUP BY updated_at / 86400000, saving_currency");
        let rows: Vec<(i64, Option<String>, i64, Option<i64>)> = self.pool.fetch_all(q).await?;
        let mut out: Vec<DaySavings> = (first..=today)
            .map(|day| DaySavings {
                day,
                releases: 0,
                saved: Totals::new(),
            })
            .collect();
        for (day, currency, n, sum) in rows {
            let Some(d) = out.iter_mut().find(|d| d.day == day) else {
                continue;
            };
            d.releases += n;
            if let (Some(c), Some(v)) = (currency, sum) {
                d.saved.add(&Money::new(v, c));
            }
        }
        Ok(out)
    }

    /// Per (policy, currency): the run-rate released (done) and the run-rate pending, for the
    /// metrics.
    pub async fn savings_by_policy(&self) -> Result<Vec<PolicySavings>, StoreError> {
        let rows: Vec<(String, String, String, Option<i64>)> = self
            .pool
            .fetch_all(Sql::new(
                "SELECT policy, state, saving_currency, CAST(SUM(saving_minor) AS BIGINT)
                 FROM releases
                 WHERE saving_minor IS NOT NULL AND saving_currency IS NOT NULL
                   AND state IN ('succeeded', 'pending', 'in_flight')
                 GROUP BY policy, state, saving_currency ORDER BY policy, saving_currency",
            ))
            .await?;
        let mut out: Vec<PolicySavings> = Vec::new();
        for (policy, state, currency, sum) in rows {
            let i = match out
                .iter()
                .position(|p| p.policy == policy && p.currency == currency)
            {
                Some(i) => i,
                None => {
                    out.push(PolicySavings {
                        policy: policy.clone(),
                        currency: currency.clone(),
                        released_minor: 0,
                        pending_minor: 0,
                    });
                    out.len() - 1
                }
            };
            let v = sum.unwrap_or(0);
            if state == "succeeded" {
                out[i].released_minor += v;
            } else {
                out[i].pending_minor += v;
            }
        }
        Ok(out)
    }
}

/// One policy's savings in one currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySavings {
    pub policy: String,
    pub currency: String,
    /// Monthly run-rate of the releases done.
    pub released_minor: i64,
    /// Monthly run-rate of the releases still pending or in flight.
    pub pending_minor: i64,
}
