//! What keeps an instance from being queued or released: holds, quarantines, scopes, releases.
//!
//! Operators' holds and quarantines after a permanent refusal keep an instance out of enqueue; a
//! run's scope limits what it claims; and the releases already done mean no instance is released
//! twice.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::db::{Sql, Tx};
use super::{from_ms, ms, BatchMember, Store, StoreError};

/// What keeps an instance out of a policy's enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldKind {
    /// An operator's cancel.
    Hold,
    /// A permanent refusal, waited out before trying again.
    Quarantine,
}

/// One active hold or quarantine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HoldRow {
    pub instance_id: String,
    pub policy: String,
    pub kind: HoldKind,
    /// `None`: until `queue retry`.
    #[serde(with = "crate::timefmt::option")]
    pub until: Option<DateTime<Utc>>,
    pub by: String,
    pub reason: String,
    /// How many quarantines in a row (1 for a hold).
    pub repeats: i64,
    #[serde(with = "crate::timefmt")]
    pub created_at: DateTime<Utc>,
}

impl HoldRow {
    /// Why a plan leaves the instance alone, in words.
    pub fn describe(&self) -> String {
        let until = match self.until {
            Some(t) => format!("until {}", t.format("%Y-%m-%d %H:%M UTC")),
            None => "until `queue retry`".to_string(),
        };
        match self.kind {
            HoldKind::Hold => format!("held by {} {until}: {}", self.by, self.reason),
            HoldKind::Quarantine => format!(
                "quarantined {until} (refusal {} in a row): {}; `queue retry` tries sooner",
                self.repeats, self.reason
            ),
        }
    }
}

/// An operator's hold on `instance_id` for `policy`, inside `tx`: until `until`, or until
/// `queue retry` when `None`. Replaces an earlier hold of the same instance and policy.
pub(super) async fn hold(
    tx: &mut Tx,
    instance_id: &str,
    policy: &str,
    until: Option<DateTime<Utc>>,
    by: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    tx.execute(
        Sql::new(
            "INSERT INTO holds (instance_id, policy, kind, until, by_whom, reason, repeats, created_at)
             VALUES ($1, $2, 'hold', $3, $4, $5, 1, $6)
             ON CONFLICT (instance_id, policy, kind) DO UPDATE SET until = excluded.until,
                 by_whom = excluded.by_whom, reason = excluded.reason,
                 created_at = excluded.created_at",
        )
        .bind(instance_id)
        .bind(policy)
        .bind(until.map(ms))
        .bind(by)
        .bind(reason)
        .bind(ms(now)),
    )
    .await?;
    Ok(())
}

/// Quarantines member `m` after a permanent refusal (`code`: `message`), inside `tx`: its
/// instance stays out of its policy's enqueue for `base`, doubled for each quarantine it
/// already had (at most 2^10 times).
pub(super) async fn quarantine(
    tx: &mut Tx,
    m: &BatchMember,
    code: &str,
    message: &str,
    base: chrono::Duration,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let before: Option<(i64,)> = tx
        .fetch_optional(
            Sql::new(
                "SELECT repeats FROM holds
                 WHERE instance_id = $1 AND policy = $2 AND kind = 'quarantine'",
            )
            .bind(&m.instance_id)
            .bind(&m.policy),
        )
        .await?;
    let repeats = before.map_or(0, |(r,)| r) + 1;
    let until = quarantine_until(now, base, repeats);
    tx.execute(
        Sql::new(
            "INSERT INTO holds (instance_id, policy, kind, until, by_whom, reason, repeats, created_at)
             VALUES ($1, $2, 'quarantine', $3, 'ecs-janitor', $4, $5, $6)
             ON CONFLICT (instance_id, policy, kind) DO UPDATE SET until = excluded.until,
                 reason = excluded.reason, repeats = excluded.repeats, created_at = excluded.created_at",
        )
        .bind(&m.instance_id)
        .bind(&m.policy)
        .bind(until)
        .bind(format!("refused with {code}: {message}"))
        .bind(repeats)
        .bind(ms(now)),
    )
    .await?;
    Ok(())
}

/// When the `repeats`-th quarantine in a row started at `now` ends (stored milliseconds):
/// `base`, doubled for each earlier one, at most 2^10 times.
fn quarantine_until(now: DateTime<Utc>, base: chrono::Duration, repeats: i64) -> i64 {
    let factor = 1i64 << (repeats - 1).clamp(0, 10);
    ms(now).saturating_add(base.num_milliseconds().saturating_mul(factor))
}

impl Store {
    /// Holds and quarantines in force at `now`.
    pub async fn holds(&self, now: DateTime<Utc>) -> Result<Vec<HoldRow>, StoreError> {
        #[allow(clippy::type_complexity)]
        let rows: Vec<(
            String,
            String,
            String,
            Option<i64>,
            String,
            String,
            i64,
            i64,
        )> = self
            .pool
            .fetch_all(
                Sql::new(
                    "SELECT instance_id, policy, kind, until, by_whom, reason, repeats, created_at
                     FROM holds WHERE until IS NULL OR until > $1
                     ORDER BY instance_id, policy, kind",
                )
                .bind(ms(now)),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(instance_id, policy, kind, until, by, reason, repeats, created_at)| HoldRow {
                    instance_id,
                    policy,
                    kind: if kind == "quarantine" {
                        HoldKind::Quarantine
                    } else {
                        HoldKind::Hold
                    },
                    until: until.map(from_ms),
                    by,
                    reason,
                    repeats,
                    created_at: from_ms(created_at),
                },
            )
            .collect())
    }

    /// Makes a run's scope: the active releases of `policies` (all of them when `None`),
    /// narrowed to the `(instance, policy)` pairs of `only` when given (a saved plan). Returns
    /// how many are in it.
    pub async fn create_scope(
        &self,
        scope: &str,
        policies: Option<&[String]>,
        only: Option<&[(String, String)]>,
    ) -> Result<u64, StoreError> {
        let mut n = 0;
        let mut tx = self.pool.begin().await?;
        match (only, policies) {
            (None, None) => {
                n += tx
                    .execute(
                        Sql::new(
                            "INSERT INTO scope_members (scope, release_id)
                             SELECT $1, id FROM releases WHERE state IN ('pending', 'in_flight')
                             ON CONFLICT DO NOTHING",
                        )
                        .bind(scope),
                    )
                    .await?;
            }
            (None, Some(policies)) => {
                for chunk in policies.chunks(200) {
                    let mut q = Sql::new("INSERT INTO scope_members (scope, release_id) SELECT ");
                    q.push_bind(scope);
                    q.push(
                        ", id FROM releases WHERE state IN ('pending', 'in_flight') AND policy IN ",
                    );
                    q.push_list(chunk);
                    q.push(" ON CONFLICT DO NOTHING");
                    n += tx.execute(q).await?;
                }
            }
            (Some(pairs), _) => {
                for chunk in pairs.chunks(300) {
                    let mut q = Sql::new("INSERT INTO scope_members (scope, release_id) SELECT ");
                    q.push_bind(scope);
                    q.push(", r.id FROM releases r JOIN (");
                    q.push_values(chunk, |(i, pol)| [i.into(), pol.into()]);
                    q.push(
                        ") AS v ON r.instance_id = v.column1 AND r.policy = v.column2
                         WHERE r.state IN ('pending', 'in_flight') ON CONFLICT DO NOTHING",
                    );
                    n += tx.execute(q).await?;
                }
            }
        }
        tx.commit().await?;
        Ok(n)
    }

    /// Takes the releases of `account` out of a run's scope (its work stops for the run).
    pub async fn shrink_scope(&self, scope: &str, account: &str) -> Result<(), StoreError> {
        self.pool
            .execute(
                Sql::new(
                    "DELETE FROM scope_members WHERE scope = $1
                       AND release_id IN (SELECT id FROM releases WHERE account = $2)",
                )
                .bind(scope)
                .bind(account),
            )
            .await?;
        Ok(())
    }

    /// Forgets a run's scope.
    pub async fn drop_scope(&self, scope: &str) -> Result<(), StoreError> {
        self.pool
            .execute(Sql::new("DELETE FROM scope_members WHERE scope = $1").bind(scope))
            .await?;
        Ok(())
    }

    /// Instances released since `since`, with when: a plan shows them as released while ECS
    /// still lists them, instead of planning them again.
    pub async fn released_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<HashMap<String, DateTime<Utc>>, StoreError> {
        let rows: Vec<(String, i64)> = self
            .pool
            .fetch_all(
                Sql::new(
                    "SELECT instance_id, MAX(updated_at) FROM releases
                     WHERE state = 'succeeded' AND updated_at >= $1 GROUP BY instance_id",
                )
                .bind(ms(since)),
            )
            .await?;
        Ok(rows.into_iter().map(|(i, t)| (i, from_ms(t))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_quarantine_in_a_row_doubles_up_to_1024_times() {
        let now = from_ms(1_000);
        let hour = chrono::Duration::hours(1);
        let h = hour.num_milliseconds();
        assert_eq!(quarantine_until(now, hour, 1), 1_000 + h);
        assert_eq!(quarantine_until(now, hour, 2), 1_000 + 2 * h);
        assert_eq!(quarantine_until(now, hour, 11), 1_000 + 1024 * h);
        assert_eq!(quarantine_until(now, hour, 40), 1_000 + 1024 * h);
    }
}
