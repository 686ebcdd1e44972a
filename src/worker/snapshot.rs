//! The snapshot stage a worker runs before a release can be batched (`release.snapshot`):
//! choose the disks (DescribeDisks by instance), record one ClientToken per disk, then
//! CreateSnapshot each (the same token after a crash answers the same SnapshotId, so nothing is
//! taken twice), then poll DescribeSnapshots until every one is `accomplished`. Only then is the
//! release `ready` for a DeleteInstances batch: a snapshot still progressing is deleted with its
//! disk (../shared/ecs-more.md 2.3). A snapshot that fails, or cannot be made after the batch's
//! attempts, fails the release; so does a stage not done [`SNAPSHOT_TIMEOUT`] after it began.
//!
//! The switches hold here as well: the worker loop runs this only when not paused, inside the
//! window and not in a dry run, so a dry run takes no snapshot.

use std::time::Duration;

use super::{WorkerError, Workers};
use crate::ecs::client::SnapshotRequest;
use crate::ecs::{DiskKind, ErrorClass};
use crate::policy::SnapshotDisks;
use crate::store::{SnapshotRow, SnapshotUpdate, StagedRelease};

/// How long a release's snapshot stage may last before the release fails (ECS bounds a
/// snapshot's time nowhere).
pub const SNAPSHOT_TIMEOUT: chrono::Duration = chrono::Duration::hours(24);

/// Releases one worker takes into the stage at a time.
const STAGE_CLAIM: usize = 4;

/// What one look at a staged release ended with.
enum Stage {
    Ready,
    Wait(String),
    Failed { code: String, message: String },
}

impl Workers {
    /// Advances the snapshot stage of the due releases that need one; `true` when it claimed
    /// any.
    pub(super) async fn snapshot_step(&self) -> Result<bool, WorkerError> {
        let now = self.ctx.clock.now();
        let staged = self
            .ctx
            .store
            .claim_snapshot_stage(
                &self.cfg.owner,
                now,
                self.cfg.lease,
                STAGE_CLAIM,
                self.scope.as_deref(),
            )
            .await?;
        if staged.is_empty() {
            return Ok(false);
        }
        self.note_claimed(staged.iter().map(|r| r.id));
        let policies = self.policies_now();
        for r in staged {
            // No snapshot for a release its policy no longer makes: cancelled, as the re-check
            // before DeleteInstances would cancel it.
            let why = match policies.iter().find(|p| p.name == r.policy) {
                None => Some(format!("policy {} is no longer loaded", r.policy)),
                Some(p) if p.dry_run => Some(format!(
                    "policy {} is now dry_run: it releases nothing",
                    r.policy
                )),
                Some(_) => None,
            };
            if let Some(why) = why {
                let now = self.ctx.clock.now();
                self.ctx
                    .store
                    .cancel_pending(&[(r.id, format!("before its snapshots: {why}"))], now)
                    .await?;
                continue;
            }
            let outcome = if self.ctx.clock.now() - r.stage_started > SNAPSHOT_TIMEOUT {
                Stage::Failed {
                    code: "Janitor.SnapshotTimeout".into(),
                    message: format!(
                        "its snapshots were not all accomplished {}h after the stage began; the instance is not released (`queue retry` tries again)",
                        SNAPSHOT_TIMEOUT.num_hours()
                    ),
                }
            } else {
                self.advance(&r).await?
            };
            let now = self.ctx.clock.now();
            let owner = &self.cfg.owner;
            match outcome {
                Stage::Ready => {
                    self.ctx.store.snapshots_ready(r.id, owner, now).await?;
                }
                Stage::Wait(why) => {
                    let age = (now - r.stage_started).to_std().unwrap_or_default();
                    let until =
                        now + chrono::Duration::from_std(self.poll(age)).unwrap_or_default();
                    self.ctx
                        .store
                        .snapshot_wait(r.id, owner, until, &why, now)
                        .await?;
                }
                Stage::Failed { code, message } => {
                    tracing::warn!(release = %r.id, instance = %r.instance_id, %code, %message, "snapshot stage failed; the instance is not released");
                    self.ctx
                        .store
                        .snapshot_failed(r.id, owner, &code, &message, now)
                        .await?;
                }
            }
        }
        Ok(true)
    }

    /// Before a batch's call: for each member queued with snapshots, whether every one of them
    /// still exists, accomplished (by DescribeSnapshots); instance id → why not. The outer error
    /// is the store's, the inner ECS's (the batch is then retried).
    pub(super) async fn snapshots_gone(
        &self,
        b: &crate::store::ClaimedBatch,
    ) -> Result<Result<std::collections::HashMap<String, String>, crate::ecs::EcsError>, WorkerError>
    {
        let mut gone = std::collections::HashMap::new();
        let members: std::collections::HashMap<_, _> = b
            .members
            .iter()
            .filter(|m| m.snapshot_days.is_some())
            .map(|m| (m.release_id, m.instance_id.clone()))
            .collect();
        if members.is_empty() {
            return Ok(Ok(gone));
        }
        let ids: Vec<_> = members.keys().copied().collect();
        let mut wanted: Vec<(String, SnapshotRow)> = Vec::new();
        for r in self.ctx.store.snapshots_of_releases(&ids).await? {
            let instance = members[&r.release_id].clone();
            match &r.snapshot_id {
                Some(_) if r.state == "accomplished" => wanted.push((instance, r)),
                _ => {
                    gone.insert(
                        instance,
                        format!("the snapshot of disk {} is not accomplished", r.disk_id),
                    );
                }
            }
        }
        if wanted.is_empty() {
            return Ok(Ok(gone));
        }
        let client = self.ctx.accounts.client(&b.account);
        for chunk in wanted.chunks(100) {
            let ids: Vec<String> = chunk
                .iter()
                .filter_map(|(_, r)| r.snapshot_id.clone())
                .collect();
            let listed = match client.describe_snapshots(&b.region, &ids).await {
                Ok(v) => v,
                Err(e) => return Ok(Err(e)),
            };
            for (instance, r) in chunk {
                let id = r.snapshot_id.clone().unwrap_or_default();
                let ok = listed
                    .iter()
                    .any(|(sid, st)| *sid == id && st == "accomplished");
                if !ok {
                    gone.entry(instance.clone()).or_insert_with(|| {
                        format!("its snapshot {id} of disk {} no longer exists", r.disk_id)
                    });
                }
            }
        }
        Ok(Ok(gone))
    }

    /// Records what DescribeSnapshots said of `s` (fenced by the stage's lease), in `s` too.
    async fn record(
        &self,
        r: &StagedRelease,
        s: &mut SnapshotRow,
        state: &str,
    ) -> Result<(), WorkerError> {
        let update = SnapshotUpdate {
            snapshot_id: None,
            state,
            failure: None,
        };
        let now = self.ctx.clock.now();
        self.ctx
            .store
            .record_snapshot(r.id, &self.cfg.owner, &s.disk_id, update, now)
            .await?;
        s.state = state.to_string();
        Ok(())
    }

    /// How long to wait between looks at a stage `age` old: twice the backoff's base at first,
    /// then a tenth of its age (a snapshot that takes an hour is looked at every few minutes),
    /// at most a minute.
    fn poll(&self, age: Duration) -> Duration {
        (self.cfg.backoff.base * 2)
            .max(age / 10)
            .clamp(Duration::from_millis(200), Duration::from_secs(60))
    }

    async fn advance(&self, r: &StagedRelease) -> Result<Stage, WorkerError> {
        let client = self.ctx.accounts.client(&r.account);
        let mut rows = r.snapshots.clone();
        if rows.is_empty() {
            let disks = match client.describe_disks(&r.region, Some(&r.instance_id)).await {
                Ok(d) => d,
                Err(e) if e.class() == ErrorClass::Retryable => {
                    return Ok(Stage::Wait(format!("cannot list its disks yet: {e}")))
                }
                Err(e) => return Ok(refused("DescribeDisks", &e)),
            };
            let chosen: Vec<String> = disks
                .into_iter()
                .filter(|d| r.disks == SnapshotDisks::All || d.kind == DiskKind::Data)
                .map(|d| d.disk_id)
                .collect();
            let now = self.ctx.clock.now();
            if !self
                .ctx
                .store
                .plan_snapshots(r.id, &self.cfg.owner, &chosen, now)
                .await?
            {
                return Ok(Stage::Wait("the stage's lease was lost".into()));
            }
            rows = self.ctx.store.snapshots_of(r.id).await?;
        }
        // Create what has no id yet (the stored token makes a resend safe).
        for s in rows.iter_mut().filter(|s| s.state == "creating") {
            if let Some(failed) = self.create(&client, r, s).await? {
                return Ok(failed);
            }
        }
        // Look at every snapshot made: those progressing, and those accomplished, which must
        // still exist (a retry long after may find them expired by their RetentionDays).
        let made: Vec<String> = rows.iter().filter_map(|s| s.snapshot_id.clone()).collect();
        if !made.is_empty() {
            let listed = match client.describe_snapshots(&r.region, &made).await {
                Ok(v) => v,
                Err(e) if e.class() == ErrorClass::Retryable => {
                    return Ok(Stage::Wait(format!("cannot read its snapshots yet: {e}")))
                }
                Err(e) => return Ok(refused("DescribeSnapshots", &e)),
            };
            for s in rows.iter_mut().filter(|s| s.snapshot_id.is_some()) {
                let id = s.snapshot_id.clone().unwrap_or_default();
                let status = listed
                    .iter()
                    .find(|(sid, _)| *sid == id)
                    .map(|(_, st)| st.as_str());
                match status {
                    Some("accomplished") if s.state == "accomplished" => {}
                    Some("accomplished") => {
                        self.record(r, s, "accomplished").await?;
                    }
                    Some("failed") => {
                        self.record(r, s, "failed").await?;
                        return Ok(Stage::Failed {
                            code: "Janitor.SnapshotFailed".into(),
                            message: format!(
                                "snapshot {id} of disk {} failed; the instance is not released without it (`queue retry` takes a new one)",
                                s.disk_id
                            ),
                        });
                    }
                    Some(_) => {}
                    None => {
                        return Ok(Stage::Failed {
                            code: "Janitor.SnapshotMissing".into(),
                            message: format!(
                                "snapshot {id} of disk {} is no longer listed by DescribeSnapshots (deleted?); the instance is not released",
                                s.disk_id
                            ),
                        });
                    }
                }
            }
        }
        let left: Vec<&SnapshotRow> = rows.iter().filter(|s| s.state != "accomplished").collect();
        if left.is_empty() {
            return Ok(Stage::Ready);
        }
        Ok(Stage::Wait(format!(
            "waiting for {} of {} snapshots: {}",
            left.len(),
            rows.len(),
            left.iter()
                .map(|s| format!(
                    "{} {}",
                    s.disk_id,
                    s.snapshot_id.as_deref().unwrap_or("(being created)")
                ))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }

    /// One CreateSnapshot for `s` with its stored token: `Some(failed)` when the release must
    /// fail, `None` otherwise (created, or to be tried again).
    async fn create(
        &self,
        client: &crate::ecs::EcsClient,
        r: &StagedRelease,
        s: &mut SnapshotRow,
    ) -> Result<Option<Stage>, WorkerError> {
        let prefix = &self.ctx.protection.tag_prefix;
        let req = SnapshotRequest {
            disk_id: s.disk_id.clone(),
            client_token: s.client_token.clone(),
            retention_days: r.retention_days,
            name: format!("janitor-{}-{}", r.instance_id, s.disk_id),
            description: format!(
                "Taken by ecs-janitor before releasing {} (policy {}).",
                r.instance_id, r.policy
            ),
            tags: vec![
                (format!("{prefix}source-instance"), r.instance_id.clone()),
                (format!("{prefix}policy"), r.policy.clone()),
            ],
        };
        let answer = client.create_snapshot(&r.region, &req).await;
        let now = self.ctx.clock.now();
        match answer {
            Ok(id) => {
                self.ctx
                    .store
                    .record_snapshot(
                        r.id,
                        &self.cfg.owner,
                        &s.disk_id,
                        SnapshotUpdate {
                            snapshot_id: Some(&id),
                            state: "progressing",
                            failure: None,
                        },
                        now,
                    )
                    .await?;
                s.snapshot_id = Some(id);
                s.state = "progressing".into();
                Ok(None)
            }
            Err(e) => {
                let code = e.code().to_string();
                let message = format!("CreateSnapshot of disk {}: {e}", s.disk_id);
                let permanent = e.class() != ErrorClass::Retryable;
                let out_of_tries = s.attempts + 1 >= i64::from(self.cfg.max_attempts.max(1));
                let state = if permanent { "failed" } else { "creating" };
                self.ctx
                    .store
                    .record_snapshot(
                        r.id,
                        &self.cfg.owner,
                        &s.disk_id,
                        SnapshotUpdate {
                            snapshot_id: None,
                            state,
                            failure: Some((&code, &message)),
                        },
                        now,
                    )
                    .await?;
                s.attempts += 1;
                if permanent || out_of_tries {
                    return Ok(Some(Stage::Failed {
                        code,
                        message: format!(
                            "{message}; the instance is not released without its snapshot"
                        ),
                    }));
                }
                Ok(None)
            }
        }
    }
}

/// A refusal that waiting does not cure (permissions, a bad request): the release fails with
/// ECS's code, so the stage never waits on it forever.
fn refused(action: &str, e: &crate::ecs::EcsError) -> Stage {
    Stage::Failed {
        code: e.code().to_string(),
        message: format!(
            "{action} was refused: {e}; the instance is not released without its snapshots"
        ),
    }
}
