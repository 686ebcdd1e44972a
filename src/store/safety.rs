//! The store's safety switches: the pause (kill switch) with who and why, holds and quarantines
//! that keep an instance out of enqueue, a run's scope, and what the worker's decision reads
//! right before a call (releases already done elsewhere).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::QueryBuilder;

use super::{from_ms, ms, Fence, NewEvent, Pool, Store, StoreError};

/// The settings keys of the pause. `paused` is `true` or `false`.
const PAUSED: &str = "paused";
const PAUSED_BY: &str = "paused_by";
const PAUSED_REASON: &str = "paused_reason";
const PAUSED_AT: &str = "paused_at";
const DATABASE_ID: &str = "database_id";

/// Who paused releases, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PauseInfo {
    pub by: String,
    pub reason: String,
    pub at: Option<DateTime<Utc>>,
}

impl PauseInfo {
    /// One line for people: "paused by alice at 2026-12-01 10:00 UTC: migration".
    pub fn describe(&self) -> String {
        let at = self
            .at
            .map(|t| format!(" at {}", t.format("%Y-%m-%d %H:%M:%S UTC")))
            .unwrap_or_default();
        let why = if self.reason.is_empty() {
            "no reason given".to_string()
        } else {
            self.reason.clone()
        };
        format!("paused by {}{at}: {why}", self.by)
    }
}

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
    pub until: Option<DateTime<Utc>>,
    pub by: String,
    pub reason: String,
    /// How many quarantines in a row (1 for a hold).
    pub repeats: i64,
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

impl Store {
    /// Pauses releases on every replica and command; recorded in the audit log with who and why.
    pub async fn pause(
        &self,
        by: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        for (k, v) in [
            (PAUSED_BY, by.to_string()),
            (PAUSED_REASON, reason.to_string()),
            (PAUSED_AT, now.to_rfc3339()),
            (PAUSED, "true".to_string()),
        ] {
            self.set_setting(k, &v).await?;
        }
        self.record_event(
            NewEvent {
                kind: "paused",
                detail: format!("by {by}: {reason}"),
                ..NewEvent::default()
            },
            now,
        )
        .await
    }

    /// Lifts the pause; recorded in the audit log with who.
    pub async fn resume(&self, by: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.set_setting(PAUSED, "false").await?;
        self.record_event(
            NewEvent {
                kind: "resumed",
                detail: format!("by {by}"),
                ..NewEvent::default()
            },
            now,
        )
        .await
    }

    /// `Some` while releases are paused. One query: workers read this before every call.
    pub async fn pause_state(&self) -> Result<Option<PauseInfo>, StoreError> {
        let rows: Vec<(String, String)> = with_pool!(self, p => sqlx::query_as(
            "SELECT key, value FROM settings WHERE key IN ($1, $2, $3, $4)",
        )
        .bind(PAUSED)
        .bind(PAUSED_BY)
        .bind(PAUSED_REASON)
        .bind(PAUSED_AT)
        .fetch_all(p)
        .await)?;
        let get = |k: &str| {
            rows.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        if get(PAUSED).as_deref() != Some("true") {
            return Ok(None);
        }
        Ok(Some(PauseInfo {
            by: get(PAUSED_BY).unwrap_or_else(|| "an unknown operator".into()),
            reason: get(PAUSED_REASON).unwrap_or_default(),
            at: get(PAUSED_AT)
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc)),
        }))
    }

    /// This database's identity, made on first use: a saved plan records it, so that a plan
    /// made against one database is not applied to another.
    pub async fn database_id(&self) -> Result<String, StoreError> {
        with_pool!(self, p => sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(DATABASE_ID)
        .bind(super::new_client_token())
        .execute(p)
        .await
        .map(|_| ()))?;
        Ok(self.setting(DATABASE_ID).await?.unwrap_or_default())
    }

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
        )> = with_pool!(self, p => sqlx::query_as(
                "SELECT instance_id, policy, kind, until, by_whom, reason, repeats, created_at
                 FROM holds WHERE until IS NULL OR until > $1 ORDER BY instance_id, policy, kind",
            )
            .bind(ms(now))
            .fetch_all(p)
            .await)?;
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
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            match (only, policies) {
                (None, None) => {
                    n += sqlx::query(
                        "INSERT INTO scope_members (scope, release_id)
                         SELECT $1, id FROM releases WHERE state IN ('pending', 'in_flight')
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(scope)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                }
                (None, Some(policies)) => {
                    for chunk in policies.chunks(200) {
                        let mut q = QueryBuilder::new(
                            "INSERT INTO scope_members (scope, release_id) SELECT ",
                        );
                        q.push_bind(scope);
                        q.push(", id FROM releases WHERE state IN ('pending', 'in_flight') AND policy IN (");
                        let mut sep = q.separated(", ");
                        for p in chunk {
                            sep.push_bind(p.clone());
                        }
                        q.push(") ON CONFLICT DO NOTHING");
                        n += q.build().execute(&mut *tx).await?.rows_affected();
                    }
                }
                (Some(pairs), _) => {
                    for chunk in pairs.chunks(300) {
                        let mut q = QueryBuilder::new(
                            "INSERT INTO scope_members (scope, release_id) SELECT ",
                        );
                        q.push_bind(scope);
                        q.push(", r.id FROM releases r JOIN (");
                        q.push_values(chunk, |mut b, (i, pol)| {
                            b.push_bind(i.clone()).push_bind(pol.clone());
                        });
                        q.push(") AS v ON r.instance_id = v.column1 AND r.policy = v.column2
                                 WHERE r.state IN ('pending', 'in_flight') ON CONFLICT DO NOTHING");
                        n += q.build().execute(&mut *tx).await?.rows_affected();
                    }
                }
            }
            tx.commit().await
        })?;
        Ok(n)
    }

    /// Takes the releases of `account` out of a run's scope (its work stops for the run).
    pub async fn shrink_scope(&self, scope: &str, account: &str) -> Result<(), StoreError> {
        with_pool!(self, p => sqlx::query(
            "DELETE FROM scope_members WHERE scope = $1
               AND release_id IN (SELECT id FROM releases WHERE account = $2)",
        )
        .bind(scope)
        .bind(account)
        .execute(p)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    /// Forgets a run's scope.
    pub async fn drop_scope(&self, scope: &str) -> Result<(), StoreError> {
        with_pool!(self, p => sqlx::query("DELETE FROM scope_members WHERE scope = $1")
            .bind(scope)
            .execute(p)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// Of `ids`, those some release already released, with that release's id: ECS may list an
    /// instance for a while after a successful DeleteInstances, and no second release of it may
    /// be sent.
    pub async fn released_among(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, super::ReleaseId>, StoreError> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(400) {
            let rows: Vec<(String, super::ReleaseId)> = with_pool!(self, p => {
                let mut q = QueryBuilder::new(
                    "SELECT instance_id, MIN(id) FROM releases WHERE state = 'succeeded' AND instance_id IN (",
                );
                let mut sep = q.separated(", ");
                for id in chunk {
                    sep.push_bind(id.clone());
                }
                q.push(") GROUP BY instance_id");
                q.build_query_as().fetch_all(p).await
            })?;
            out.extend(rows);
        }
        Ok(out)
    }

    /// Instances released since `since`, with when: a plan shows them as released while ECS
    /// still lists them, instead of planning them again.
    pub async fn released_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<HashMap<String, DateTime<Utc>>, StoreError> {
        let rows: Vec<(String, i64)> = with_pool!(self, p => sqlx::query_as(
            "SELECT instance_id, MAX(updated_at) FROM releases
             WHERE state = 'succeeded' AND updated_at >= $1 GROUP BY instance_id",
        )
        .bind(ms(since))
        .fetch_all(p)
        .await)?;
        Ok(rows.into_iter().map(|(i, t)| (i, from_ms(t))).collect())
    }

    /// Gives a batch back untouched until `at` (paused, window closed): no try is counted and
    /// its token and members stay as they are. Fenced.
    pub async fn postpone(
        &self,
        fence: &Fence,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let n = with_pool!(self, p => sqlx::query(
            "UPDATE batches SET next_attempt_at = $4, lease_owner = NULL, lease_expires_at = NULL,
                    updated_at = $5
             WHERE id = $1 AND lease_owner = $2 AND claims = $3 AND state = 'open'",
        )
        .bind(fence.batch_id)
        .bind(&fence.owner)
        .bind(fence.claims)
        .bind(ms(at))
        .bind(ms(now))
        .execute(p)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }
}
