//! The snapshot stage of a release (`release.snapshot`): a durable step between "due" and
//! "batched for DeleteInstances". A due release whose policy asks for snapshots is claimed
//! under a lease by one worker at a time (`stage_owner`, `stage_until`); its disks' snapshots
//! get a row each, with a ClientToken written before the first CreateSnapshot; once every one
//! is `accomplished` the release is `ready` and only then may a batch take it (see
//! `queue::SNAPSHOTS_READY`). A failed snapshot fails the release: it is never released without
//! its snapshots. Every write is fenced by the lease, so a worker that lost it changes nothing.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::audit::{insert_event, NewEvent};
use super::db::Sql;
use super::{ms, new_client_token, ReleaseId, Store, StoreError};
use crate::policy::SnapshotDisks;

/// A release in its snapshot stage, claimed by one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedRelease {
    pub id: ReleaseId,
    pub instance_id: String,
    pub account: String,
    pub region: String,
    pub policy: String,
    pub retention_days: u32,
    pub disks: SnapshotDisks,
    /// When its stage began (the first claim).
    pub stage_started: DateTime<Utc>,
    /// The snapshots recorded so far (none before the disks were chosen).
    pub snapshots: Vec<SnapshotRow>,
}

/// One disk's snapshot for a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotRow {
    pub release_id: ReleaseId,
    pub disk_id: String,
    pub client_token: String,
    /// ECS's id, once CreateSnapshot answered.
    pub snapshot_id: Option<String>,
    /// `creating` (no answer yet), `progressing`, `accomplished` or `failed`.
    pub state: String,
    /// CreateSnapshot calls that did not answer with an id.
    pub attempts: i64,
    pub code: Option<String>,
    pub message: Option<String>,
    #[serde(with = "crate::timefmt")]
    pub created_at: DateTime<Utc>,
}

type RawSnapshot = (
    ReleaseId,
    String,
    String,
    Option<String>,
    String,
    i64,
    Option<String>,
    Option<String>,
    i64,
);

/// The columns of a snapshot row, in [`RawSnapshot`]'s order.
const SNAPSHOT_SELECT: &str = "SELECT release_id, disk_id, client_token, snapshot_id, state,
        attempts, code, message, created_at FROM snapshots";

fn snapshot_row(r: RawSnapshot) -> SnapshotRow {
    let (release_id, disk_id, client_token, snapshot_id, state, attempts, code, message, at) = r;
    SnapshotRow {
        release_id,
        disk_id,
        client_token,
        snapshot_id,
        state,
        attempts,
        code,
        message,
        created_at: super::from_ms(at),
    }
}

/// What a call said of one disk's snapshot, for [`Store::record_snapshot`].
#[derive(Debug, Clone, Copy)]
pub struct SnapshotUpdate<'a> {
    /// ECS's id, once CreateSnapshot answered with it.
    pub snapshot_id: Option<&'a str>,
    /// `creating`, `progressing`, `accomplished` or `failed`.
    pub state: &'a str,
    /// A call that failed: its code and message (counted as an attempt).
    pub failure: Option<(&'a str, &'a str)>,
}

/// The lease condition every stage write carries: still ours, still waiting for snapshots.
const FENCE: &str = "id = $1 AND stage_owner = $2 AND state = 'pending'
                     AND snapshot_stage = 'snapshotting'";

/// Inside a retry's `tx`: every failed snapshot of release `id` is made again with a new token,
/// and every one still being created gets its attempts back (keeping its token: a lost answer
/// may have made it). The rows stay, so the disks chosen the first time are all snapshotted:
/// none is forgotten because it failed.
pub(super) async fn reset_failed(tx: &mut super::db::Tx, id: ReleaseId) -> Result<(), StoreError> {
    tx.execute(
        Sql::new(
            "UPDATE snapshots SET attempts = 0, code = NULL, message = NULL
             WHERE release_id = $1 AND state = 'creating'",
        )
        .bind(id),
    )
    .await?;
    let left: Vec<(String,)> = tx
        .fetch_all(
            Sql::new("SELECT disk_id FROM snapshots WHERE release_id = $1 AND state = 'failed'")
                .bind(id),
        )
        .await?;
    for (disk,) in left {
        tx.execute(
            Sql::new(
                "UPDATE snapshots SET state = 'creating', client_token = $3, snapshot_id = NULL,
                        attempts = 0, code = NULL, message = NULL
                 WHERE release_id = $1 AND disk_id = $2",
            )
            .bind(id)
            .bind(&disk)
            .bind(new_client_token()),
        )
        .await?;
    }
    Ok(())
}

/// A release waiting for its snapshots: pending, with a retention to snapshot with.
pub(super) const WAITING: &str = "state = 'pending' AND snapshot_days IS NOT NULL";

impl Store {
    /// Claims up to `max` due releases whose snapshots are not all accomplished yet (nobody
    /// holds them, or their holder's lease ran out), for `lease`. With `scope`, only that
    /// run's releases. Workers call it only when [`Store::before_claim`] has seen a release
    /// waiting for its snapshots: that read spares the steps of most queues this transaction.
    pub async fn claim_snapshot_stage(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        max: usize,
        scope: Option<&str>,
    ) -> Result<Vec<StagedRelease>, StoreError> {
        let until = ms(now) + lease.as_millis() as i64;
        let lock = if self.is_postgres() {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let mut tx = self.pool.begin().await?;
        let ids: Vec<(ReleaseId,)> = tx
            .fetch_all(
                Sql::new(format!(
                    "SELECT id FROM releases
                     WHERE {WAITING}
                       AND (snapshot_stage IS NULL OR snapshot_stage = 'snapshotting')
                       AND not_before <= $1 AND (stage_until IS NULL OR stage_until <= $1)
                       AND ($2 = '' OR EXISTS (SELECT 1 FROM scope_members s WHERE s.scope = $2 AND s.release_id = releases.id))
                     ORDER BY id LIMIT $3{lock}"
                ))
                .bind(ms(now))
                .bind(scope.unwrap_or_default())
                .bind(max as i64),
            )
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for (id,) in ids {
            #[allow(clippy::type_complexity)]
            let row: Option<(String, String, String, String, i64, String, i64)> = tx
                .fetch_optional(
                    Sql::new(
                        "UPDATE releases SET snapshot_stage = 'snapshotting', stage_owner = $2,
                                stage_until = $3, stage_started = COALESCE(stage_started, $4)
                         WHERE id = $1 AND state = 'pending'
                         RETURNING instance_id, account, region, policy, snapshot_days,
                                   snapshot_disks, stage_started",
                    )
                    .bind(id)
                    .bind(owner)
                    .bind(until)
                    .bind(ms(now)),
                )
                .await?;
            let Some((instance_id, account, region, policy, days, disks, started)) = row else {
                continue;
            };
            let snaps: Vec<RawSnapshot> = tx
                .fetch_all(
                    Sql::new(format!(
                        "{SNAPSHOT_SELECT} WHERE release_id = $1 ORDER BY disk_id"
                    ))
                    .bind(id),
                )
                .await?;
            out.push(StagedRelease {
                id,
                instance_id,
                account,
                region,
                policy,
                retention_days: u32::try_from(days).unwrap_or(1),
                disks: SnapshotDisks::parse(&disks).unwrap_or(SnapshotDisks::Data),
                stage_started: super::from_ms(started),
                snapshots: snaps.into_iter().map(snapshot_row).collect(),
            });
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Records the disks to snapshot, each with a new ClientToken, before any CreateSnapshot
    /// (disks already recorded keep theirs). `false` when the lease was lost.
    pub async fn plan_snapshots(
        &self,
        id: ReleaseId,
        owner: &str,
        disk_ids: &[String],
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let ours: Option<(ReleaseId,)> = tx
            .fetch_optional(
                Sql::new(format!("SELECT id FROM releases WHERE {FENCE}"))
                    .bind(id)
                    .bind(owner),
            )
            .await?;
        if ours.is_none() {
            return Ok(false);
        }
        for disk in disk_ids {
            tx.execute(
                Sql::new(
                    "INSERT INTO snapshots (release_id, disk_id, client_token, state, created_at,
                                            updated_at)
                     VALUES ($1, $2, $3, 'creating', $4, $4)
                     ON CONFLICT (release_id, disk_id) DO NOTHING",
                )
                .bind(id)
                .bind(disk)
                .bind(new_client_token())
                .bind(ms(now)),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// What one CreateSnapshot or DescribeSnapshots said of a disk's snapshot: its id (once
    /// known), its state, and for a call that failed, the code and message (counted as an
    /// attempt). Fenced: written only while `owner` holds the release's stage.
    pub async fn record_snapshot(
        &self,
        id: ReleaseId,
        owner: &str,
        disk_id: &str,
        update: SnapshotUpdate<'_>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.pool
            .execute(
                Sql::new(
                    "UPDATE snapshots SET snapshot_id = COALESCE($3, snapshot_id), state = $4,
                            attempts = attempts + $5, code = $6, message = $7, updated_at = $8
                     WHERE release_id = $1 AND disk_id = $2
                       AND EXISTS (SELECT 1 FROM releases WHERE id = $1 AND stage_owner = $9
                                   AND state = 'pending' AND snapshot_stage = 'snapshotting')",
                )
                .bind(id)
                .bind(disk_id)
                .bind(update.snapshot_id)
                .bind(update.state)
                .bind(i64::from(update.failure.is_some()))
                .bind(update.failure.map(|f| f.0))
                .bind(update.failure.map(|f| f.1))
                .bind(ms(now))
                .bind(owner),
            )
            .await?;
        Ok(())
    }

    /// Every snapshot is accomplished: the release may be batched. Recorded in the audit log
    /// with the snapshot ids. `false` when the lease was lost.
    pub async fn snapshots_ready(
        &self,
        id: ReleaseId,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done: Vec<(String, Option<String>, String)> = tx
            .fetch_all(
                Sql::new(
                    "SELECT disk_id, snapshot_id, state FROM snapshots WHERE release_id = $1
                     ORDER BY disk_id",
                )
                .bind(id),
            )
            .await?;
        if done.iter().any(|(_, _, st)| st != "accomplished") {
            return Ok(false);
        }
        let row: Option<(String, String)> = tx
            .fetch_optional(
                Sql::new(format!(
                    "UPDATE releases SET snapshot_stage = 'ready', stage_owner = NULL,
                            stage_until = NULL, last_message = NULL, updated_at = $3
                     WHERE {FENCE} RETURNING policy, instance_id"
                ))
                .bind(id)
                .bind(owner)
                .bind(ms(now)),
            )
            .await?;
        let Some((policy, instance_id)) = row else {
            return Ok(false);
        };
        let list: Vec<String> = done
            .iter()
            .map(|(d, s, _)| format!("{d} → {}", s.as_deref().unwrap_or("?")))
            .collect();
        insert_event(
            &mut tx,
            NewEvent {
                kind: "snapshotted",
                release_id: Some(id),
                policy: Some(policy),
                instance_id: Some(instance_id),
                detail: if list.is_empty() {
                    "no disk to snapshot".into()
                } else {
                    format!("every snapshot accomplished: {}", list.join(", "))
                },
                ..NewEvent::default()
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Not ready yet: gives the release back until `until` (nobody looks at it before), with
    /// what it waits for in words.
    pub async fn snapshot_wait(
        &self,
        id: ReleaseId,
        owner: &str,
        until: DateTime<Utc>,
        why: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let n = self
            .pool
            .execute(
                Sql::new(format!(
                    "UPDATE releases SET stage_owner = NULL, stage_until = $3, last_message = $4,
                            updated_at = $5
                     WHERE {FENCE}"
                ))
                .bind(id)
                .bind(owner)
                .bind(ms(until))
                .bind(why)
                .bind(ms(now)),
            )
            .await?;
        Ok(n == 1)
    }

    /// A snapshot failed or could not be made: the release fails with `code` and is never
    /// released without its snapshots (`queue retry` starts the stage again: [`reset_failed`]
    /// gives each failed disk a new token, and keeps the disks chosen).
    pub async fn snapshot_failed(
        &self,
        id: ReleaseId,
        owner: &str,
        code: &str,
        message: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(String, String)> = tx
            .fetch_optional(
                Sql::new(format!(
                    "UPDATE releases SET state = 'failed', snapshot_stage = NULL,
                            stage_owner = NULL, stage_until = NULL, last_code = $3,
                            last_message = $4, updated_at = $5
                     WHERE {FENCE} RETURNING policy, instance_id"
                ))
                .bind(id)
                .bind(owner)
                .bind(code)
                .bind(message)
                .bind(ms(now)),
            )
            .await?;
        let Some((policy, instance_id)) = row else {
            return Ok(false);
        };
        insert_event(
            &mut tx,
            NewEvent {
                kind: "failed",
                release_id: Some(id),
                policy: Some(policy),
                instance_id: Some(instance_id),
                code: Some(code.to_string()),
                detail: message.to_string(),
                ..NewEvent::default()
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The snapshots of the releases `ids`, in one query (the check before a batch's call).
    pub async fn snapshots_of_releases(
        &self,
        ids: &[ReleaseId],
    ) -> Result<Vec<SnapshotRow>, StoreError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(400) {
            let mut q = Sql::new(format!("{SNAPSHOT_SELECT} WHERE release_id IN "));
            q.push_list(chunk.iter().copied());
            q.push(" ORDER BY release_id, disk_id");
            let rows: Vec<RawSnapshot> = self.pool.fetch_all(q).await?;
            out.extend(rows.into_iter().map(snapshot_row));
        }
        Ok(out)
    }

    /// The snapshots of one release (for `queue show`, the stage and tests).
    pub async fn snapshots_of(&self, id: ReleaseId) -> Result<Vec<SnapshotRow>, StoreError> {
        let rows: Vec<RawSnapshot> = self
            .pool
            .fetch_all(
                Sql::new(format!(
                    "{SNAPSHOT_SELECT} WHERE release_id = $1 ORDER BY disk_id"
                ))
                .bind(id),
            )
            .await?;
        Ok(rows.into_iter().map(snapshot_row).collect())
    }
}
