//! Operators' exemptions: an instance kept out of every policy until a time, with who and why.
//! Writing one also cancels the instance's pending releases that no batch holds yet; a release
//! already in a batch is cancelled by the re-check before its call, which reads the same table.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::audit::{insert_event, who_and_why, NewEvent};
use super::db::Sql;
use super::{from_ms, ms, Store, StoreError};
use crate::plan::exempt::Exemption;

/// One operator's exemption, as `exempt --list` and the API show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExemptionRow {
    pub instance_id: String,
    #[serde(with = "crate::timefmt")]
    pub until: DateTime<Utc>,
    pub by: String,
    pub reason: String,
    #[serde(with = "crate::timefmt")]
    pub created_at: DateTime<Utc>,
}

/// What [`Store::exempt`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exempted {
    /// The pending releases of the instance it cancelled.
    pub cancelled: Vec<super::ReleaseId>,
    /// It replaced an earlier exemption of the instance.
    pub replaced: bool,
}

impl Store {
    /// Exempts `instance_id` from every policy until `until`, replacing an earlier exemption,
    /// and cancels its pending releases not yet in a batch. Recorded with who and why. The
    /// caller checks `until` (`plan::exempt::check_new`).
    pub async fn exempt(
        &self,
        instance_id: &str,
        until: DateTime<Utc>,
        by: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Exempted, StoreError> {
        let mut tx = self.pool.begin().await?;
        let before: Option<(i64,)> = tx
            .fetch_optional(
                Sql::new("SELECT until FROM exemptions WHERE instance_id = $1").bind(instance_id),
            )
            .await?;
        tx.execute(
            Sql::new(
                "INSERT INTO exemptions (instance_id, until, by_whom, reason, created_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (instance_id) DO UPDATE SET until = excluded.until,
                     by_whom = excluded.by_whom, reason = excluded.reason,
                     created_at = excluded.created_at",
            )
            .bind(instance_id)
            .bind(ms(until))
            .bind(by)
            .bind(reason)
            .bind(ms(now)),
        )
        .await?;
        let pending: Vec<(super::ReleaseId, String)> = tx
            .fetch_all(
                Sql::new(
                    "SELECT id, policy FROM releases
                     WHERE instance_id = $1 AND state = 'pending' AND batch_id IS NULL
                     ORDER BY id",
                )
                .bind(instance_id),
            )
            .await?;
        let why = format!(
            "exempted until {} {}",
            until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            who_and_why(by, reason)
        );
        for (id, _) in &pending {
            tx.execute(
                Sql::new(
                    "UPDATE releases SET state = 'cancelled', last_message = $2, updated_at = $3
                     WHERE id = $1 AND state = 'pending' AND batch_id IS NULL",
                )
                .bind(*id)
                .bind(&why)
                .bind(ms(now)),
            )
            .await?;
        }
        insert_event(
            &mut tx,
            NewEvent {
                kind: "exempted",
                instance_id: Some(instance_id.to_string()),
                detail: match pending.len() {
                    0 => why.clone(),
                    n => format!("{why}; cancelled {n} pending release(s)"),
                },
                ..NewEvent::default()
            },
            now,
        )
        .await?;
        for (id, policy) in &pending {
            insert_event(
                &mut tx,
                NewEvent {
                    kind: "cancelled",
                    release_id: Some(*id),
                    policy: Some(policy.clone()),
                    instance_id: Some(instance_id.to_string()),
                    detail: why.clone(),
                    ..NewEvent::default()
                },
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Exempted {
            cancelled: pending.into_iter().map(|(id, _)| id).collect(),
            replaced: before.is_some(),
        })
    }

    /// Ends `instance_id`'s exemption now; `false` when it had none. Recorded with who and why.
    pub async fn remove_exemption(
        &self,
        instance_id: &str,
        by: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let n = tx
            .execute(Sql::new("DELETE FROM exemptions WHERE instance_id = $1").bind(instance_id))
            .await?;
        if n > 0 {
            insert_event(
                &mut tx,
                NewEvent {
                    kind: "exemption_removed",
                    instance_id: Some(instance_id.to_string()),
                    detail: who_and_why(by, reason),
                    ..NewEvent::default()
                },
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    /// The exemptions in force at `now`, soonest to end first.
    pub async fn exemptions(&self, now: DateTime<Utc>) -> Result<Vec<ExemptionRow>, StoreError> {
        let rows: Vec<(String, i64, String, String, i64)> = self
            .pool
            .fetch_all(
                Sql::new(
                    "SELECT instance_id, until, by_whom, reason, created_at FROM exemptions
                     WHERE until > $1 ORDER BY until, instance_id",
                )
                .bind(ms(now)),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(instance_id, until, by, reason, created_at)| ExemptionRow {
                    instance_id,
                    until: from_ms(until),
                    by,
                    reason,
                    created_at: from_ms(created_at),
                },
            )
            .collect())
    }

    /// The exemptions in force at `now`, by instance id, as plans and the re-check read them.
    pub async fn exemption_map(
        &self,
        now: DateTime<Utc>,
    ) -> Result<HashMap<String, Exemption>, StoreError> {
        Ok(self
            .exemptions(now)
            .await?
            .into_iter()
            .map(|r| {
                (
                    r.instance_id,
                    Exemption {
                        until: r.until,
                        by: r.by,
                        reason: r.reason,
                    },
                )
            })
            .collect())
    }
}

/// A tag exemption a pass saw keep an instance out of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeenExemption {
    pub instance_id: String,
    pub region: String,
    pub policy: String,
    /// The tag's value as written.
    pub value: String,
    /// When it ends; `None` when the value is invalid (and so protects).
    #[serde(with = "crate::timefmt::option")]
    pub until: Option<DateTime<Utc>>,
    pub reason: String,
    /// Why the value is invalid.
    pub problem: Option<String>,
    #[serde(with = "crate::timefmt")]
    pub seen_at: DateTime<Utc>,
}

impl SeenExemption {
    /// The tag exemptions among `plan`'s skips, one per instance.
    pub fn of_plan(plan: &crate::plan::Plan, now: DateTime<Utc>) -> Vec<SeenExemption> {
        use crate::plan::exempt::ExemptBy;
        use crate::plan::SkipReason;
        let mut out: Vec<SeenExemption> = Vec::new();
        for s in plan.policies.iter().flat_map(|p| &p.skips) {
            let (value, until, reason, problem) = match &s.reason {
                SkipReason::Exempt {
                    until,
                    by: ExemptBy::Tag { .. },
                    reason,
                } => (String::new(), Some(*until), reason.clone(), None),
                SkipReason::ExemptionInvalid { value, problem, .. } => {
                    (value.clone(), None, String::new(), Some(problem.clone()))
                }
                _ => continue,
            };
            if out.iter().any(|e| e.instance_id == s.instance_id) {
                continue;
            }
            out.push(SeenExemption {
                instance_id: s.instance_id.clone(),
                region: s.region.clone(),
                policy: s.policy.clone(),
                value: if value.is_empty() {
                    until.map(crate::timefmt::text).unwrap_or_default()
                } else {
                    value
                },
                until,
                reason,
                problem,
                seen_at: now,
            });
        }
        out
    }
}

impl Store {
    /// Records the tag exemptions a pass saw, and forgets those of instances it listed that no
    /// longer have one (`listed` says which instances the pass listed).
    pub async fn record_seen_exemptions(
        &self,
        seen: &[SeenExemption],
        listed: impl Fn(&str) -> bool,
    ) -> Result<(), StoreError> {
        let known: Vec<(String,)> = self
            .pool
            .fetch_all(Sql::new("SELECT instance_id FROM seen_exemptions"))
            .await?;
        let gone: Vec<String> = known
            .into_iter()
            .map(|(id,)| id)
            .filter(|id| listed(id) && !seen.iter().any(|s| &s.instance_id == id))
            .collect();
        if gone.is_empty() && seen.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for id in &gone {
            tx.execute(Sql::new("DELETE FROM seen_exemptions WHERE instance_id = $1").bind(id))
                .await?;
        }
        for s in seen {
            tx.execute(
                Sql::new(
                    "INSERT INTO seen_exemptions
                         (instance_id, region, policy, value, until, reason, problem, seen_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (instance_id) DO UPDATE SET region = excluded.region,
                         policy = excluded.policy, value = excluded.value, until = excluded.until,
                         reason = excluded.reason, problem = excluded.problem,
                         seen_at = excluded.seen_at",
                )
                .bind(&s.instance_id)
                .bind(&s.region)
                .bind(&s.policy)
                .bind(&s.value)
                .bind(s.until.map(ms))
                .bind(&s.reason)
                .bind(s.problem.clone())
                .bind(ms(s.seen_at)),
            )
            .await?;
        }
        tx.commit().await
    }

    /// The tag exemptions passes saw, invalid ones first, then soonest to end.
    pub async fn seen_exemptions(&self) -> Result<Vec<SeenExemption>, StoreError> {
        #[allow(clippy::type_complexity)]
        let rows: Vec<(
            String,
            String,
            String,
            String,
            Option<i64>,
            String,
            Option<String>,
            i64,
        )> = self
            .pool
            .fetch_all(Sql::new(
                "SELECT instance_id, region, policy, value, until, reason, problem, seen_at
                     FROM seen_exemptions
                     ORDER BY CASE WHEN problem IS NULL THEN 1 ELSE 0 END, until, instance_id",
            ))
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(instance_id, region, policy, value, until, reason, problem, seen_at)| {
                    SeenExemption {
                        instance_id,
                        region,
                        policy,
                        value,
                        until: until.map(from_ms),
                        reason,
                        problem,
                        seen_at: from_ms(seen_at),
                    }
                },
            )
            .collect())
    }
}
