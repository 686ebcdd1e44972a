//! Policy runs: one replica takes each (policy, tick) and closes it with its outcome.
//!
//! The run's counts are kept with it; the API and the dashboard read them back.

use chrono::{DateTime, Utc};

use super::db::Sql;
use super::{ms, RunRow, RunStatus, Store, StoreError};

/// How one policy run ended, for [`Store::finish_run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunEnd<'a> {
    pub policy: &'a str,
    /// The tick, as [`Store::begin_run`] was given it.
    pub scheduled_for: DateTime<Utc>,
    pub outcome: RunStatus,
    pub planned: i64,
    pub enqueued: i64,
    pub cancelled: i64,
    /// 1 when ECS refused the account as a whole, else 0.
    pub refused: i64,
}

impl<'a> RunEnd<'a> {
    /// A run whose pass failed: nothing counted.
    pub fn error(policy: &'a str, scheduled_for: DateTime<Utc>) -> RunEnd<'a> {
        RunEnd {
            policy,
            scheduled_for,
            outcome: RunStatus::Error,
            planned: 0,
            enqueued: 0,
            cancelled: 0,
            refused: 0,
        }
    }
}

/// Which unfinished run [`Store::close_run`] may close.
enum CloseIf<'a> {
    /// One whose lease ended unrenewed.
    LeaseEnded,
    /// One this replica began.
    OwnedBy(&'a str),
}

/// A run whose replica stopped mid-pass: its lease ended unrenewed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbandonedRun {
    pub policy: String,
    pub scheduled_for: DateTime<Utc>,
    /// The replica that stopped.
    pub owner: String,
    /// A later tick of the policy has begun since: this one need not be reconciled again.
    pub superseded: bool,
}

impl Store {
    /// Records that `policy`'s tick `scheduled_for` is being reconciled by `owner`, under a
    /// lease of `lease` (renewed by [`Store::renew_runs`] while the pass runs). False when some
    /// replica already took it and either finished it or still holds its lease: each tick is
    /// reconciled once, and a tick whose replica stopped mid-pass is taken over once its lease
    /// ends.
    pub async fn begin_run(
        &self,
        policy: &str,
        scheduled_for: DateTime<Utc>,
        owner: &str,
        now: DateTime<Utc>,
        lease: chrono::Duration,
    ) -> Result<bool, StoreError> {
        let n = self
            .pool
            .execute(
                Sql::new(
                    "INSERT INTO policy_runs (policy, scheduled_for, owner, started_at, lease_expires_at)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (policy, scheduled_for) DO UPDATE
                     SET owner = excluded.owner, started_at = excluded.started_at,
                         lease_expires_at = excluded.lease_expires_at
                     WHERE policy_runs.finished_at IS NULL
                       AND COALESCE(policy_runs.lease_expires_at, 0) <= $4",
                )
                .bind(policy)
                .bind(ms(scheduled_for))
                .bind(owner)
                .bind(ms(now))
                .bind(ms(now + lease)),
            )
            .await?;
        Ok(n == 1)
    }

    /// Extends `owner`'s lease on its unfinished runs of `policies` for the tick
    /// `scheduled_for` to `now + lease`. A run another replica took over is not extended.
    pub async fn renew_runs(
        &self,
        policies: &[String],
        scheduled_for: DateTime<Utc>,
        owner: &str,
        now: DateTime<Utc>,
        lease: chrono::Duration,
    ) -> Result<(), StoreError> {
        if policies.is_empty() {
            return Ok(());
        }
        let mut q = Sql::new("UPDATE policy_runs SET lease_expires_at = ");
        q.push_bind(ms(now + lease))
            .push(" WHERE scheduled_for = ")
            .push_bind(ms(scheduled_for))
            .push(" AND owner = ")
            .push_bind(owner)
            .push(" AND finished_at IS NULL AND policy IN ")
            .push_list(policies.iter().cloned());
        self.pool.execute(q).await?;
        Ok(())
    }

    /// Closes as failed the run of `policy` at `tick` while it is still abandoned (unfinished,
    /// its lease ended), with a `run_failed` event saying `why`; nothing when another replica
    /// took it over or closed it first.
    pub async fn close_abandoned(
        &self,
        policy: &str,
        tick: DateTime<Utc>,
        why: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.close_run(policy, tick, CloseIf::LeaseEnded, why, now)
            .await
    }

    /// Closes as failed `owner`'s unfinished runs of `policies` at `tick` (a one-shot pass
    /// stopped before it ended), each with a `run_failed` event saying `why`.
    pub async fn abandon_runs(
        &self,
        policies: &[String],
        tick: DateTime<Utc>,
        owner: &str,
        why: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        for policy in policies {
            self.close_run(policy, tick, CloseIf::OwnedBy(owner), why, now)
                .await?;
        }
        Ok(())
    }

    /// Closes an unfinished run as failed when `only` holds, with its `run_failed` event, in one
    /// transaction; whether it did.
    async fn close_run(
        &self,
        policy: &str,
        tick: DateTime<Utc>,
        only: CloseIf<'_>,
        why: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut q = Sql::new("UPDATE policy_runs SET finished_at = ");
        q.push_bind(ms(now))
            .push(", outcome = ")
            .push_bind(RunStatus::Error.as_str())
            .push(" WHERE policy = ")
            .push_bind(policy)
            .push(" AND scheduled_for = ")
            .push_bind(ms(tick))
            .push(" AND finished_at IS NULL");
        match only {
            CloseIf::LeaseEnded => q
                .push(" AND COALESCE(lease_expires_at, 0) <= ")
                .push_bind(ms(now)),
            CloseIf::OwnedBy(owner) => q.push(" AND owner = ").push_bind(owner),
        };
        let mut tx = self.pool.begin().await?;
        let closed = tx.execute(q).await? == 1;
        if closed {
            let event = super::NewEvent {
                kind: "run_failed",
                policy: Some(policy.to_string()),
                detail: why.to_string(),
                ..Default::default()
            };
            super::audit::insert_event(&mut tx, event, now).await?;
        }
        tx.commit().await?;
        Ok(closed)
    }

    /// Runs left unfinished by a replica that stopped renewing their lease, oldest first, each
    /// with whether a later tick of its policy has begun since.
    pub async fn abandoned_runs(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<AbandonedRun>, StoreError> {
        let rows: Vec<(String, i64, String, bool)> = self
            .pool
            .fetch_all(
                Sql::new(
                    "SELECT r.policy, r.scheduled_for, r.owner,
                            EXISTS (SELECT 1 FROM policy_runs n
                                    WHERE n.policy = r.policy AND n.scheduled_for > r.scheduled_for)
                     FROM policy_runs r
                     WHERE r.finished_at IS NULL AND COALESCE(r.lease_expires_at, 0) <= $1
                     ORDER BY r.scheduled_for, r.policy",
                )
                .bind(ms(now)),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(policy, at, owner, superseded)| AbandonedRun {
                policy,
                scheduled_for: super::from_ms(at),
                owner,
                superseded,
            })
            .collect())
    }

    /// Closes a run with its outcome and counts.
    pub async fn finish_run(&self, end: &RunEnd<'_>, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.pool
            .execute(
                Sql::new(
                    "UPDATE policy_runs SET finished_at = $3, outcome = $4, planned = $5,
                            enqueued = $6, cancelled = $7, refused = $8
                     WHERE policy = $1 AND scheduled_for = $2 AND finished_at IS NULL",
                )
                .bind(end.policy)
                .bind(ms(end.scheduled_for))
                .bind(ms(now))
                .bind(end.outcome.as_str())
                .bind(end.planned)
                .bind(end.enqueued)
                .bind(end.cancelled)
                .bind(end.refused),
            )
            .await?;
        Ok(())
    }

    /// Every run, newest first (at most `limit`).
    pub async fn runs(&self, limit: i64) -> Result<Vec<RunRow>, StoreError> {
        self.pool
            .fetch_all(
                Sql::new(
                    "SELECT policy, scheduled_for, owner, started_at, finished_at, outcome, planned,
                            enqueued, cancelled, refused
                     FROM policy_runs ORDER BY scheduled_for DESC, policy LIMIT $1",
                )
                .bind(limit),
            )
            .await
    }

    /// Why each of `policies` whose latest run in `runs` (newest first) ended in error failed:
    /// the `run_failed` event of that run. A run that failed otherwise (the database) wrote
    /// none, and an older event is not its cause.
    pub async fn why_runs_failed(
        &self,
        runs: &[RunRow],
        policies: &[&str],
    ) -> Result<std::collections::HashMap<String, String>, StoreError> {
        let mut errors = std::collections::HashMap::new();
        for &policy in policies {
            let Some(run) = runs
                .iter()
                .find(|r| r.policy == policy)
                .filter(|r| r.outcome == Some(RunStatus::Error))
            else {
                continue;
            };
            let last = self
                .events_where(&super::EventFilter {
                    policy: Some(policy.to_string()),
                    kind: Some("run_failed".into()),
                    limit: Some(1),
                    ..Default::default()
                })
                .await?;
            if let Some(e) = last.into_iter().find(|e| e.at >= run.started_at) {
                errors.insert(policy.to_string(), e.detail);
            }
        }
        Ok(errors)
    }
}
