//! Batches, one DeleteInstances call each: their tokens, leases, attempts, settling, re-forming.
//!
//! A batch is formed with its ClientToken, leased to a worker, counts its attempts, settles its
//! members, is retried, postponed or re-formed into new batches. Every write after the claim is
//! fenced by the lease ([`Fence`]).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::audit::{events_insert, insert_event};
use super::chain::Chain;
use super::db::{Sql, Tx};
use super::rows::BatchRow;
use super::{
    ms, new_client_token, safety, settings, BatchId, BatchMember, BatchState, ClaimedBatch, Fence,
    NewEvent, ReleaseId, ReleaseState, Store, StoreError,
};

/// How one member of a batch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberOutcome {
    Succeeded {
        request_id: Option<String>,
        code: Option<String>,
        /// Kept in the audit log; a success has no error to show, so it is not the release's
        /// last error.
        detail: String,
    },
    Failed {
        code: String,
        message: String,
        request_id: Option<String>,
        /// Refused for good: keep the instance out of its policy's enqueue for this long,
        /// doubled for every earlier quarantine of the same instance and policy.
        quarantine: Option<chrono::Duration>,
    },
    Cancelled {
        reason: String,
    },
    /// Missing from the re-check: not released by us.
    Vanished {
        detail: String,
    },
}

/// What settling one member writes: its release's final state and columns, and its event.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settled {
    state: ReleaseState,
    code: Option<String>,
    /// The release's new last error: `None` for a success.
    last_error: Option<String>,
    request_id: Option<String>,
    /// The event's detail: what happened, in words, success or not.
    detail: String,
}

impl Settled {
    fn of(outcome: &MemberOutcome) -> Settled {
        let (state, code, detail, request_id) = match outcome {
            MemberOutcome::Succeeded {
                request_id,
                code,
                detail,
            } => (ReleaseState::Succeeded, code, detail, request_id),
            MemberOutcome::Failed {
                code,
                message,
                request_id,
                ..
            } => (
                ReleaseState::Failed,
                &Some(code.clone()),
                message,
                request_id,
            ),
            MemberOutcome::Cancelled { reason } => (ReleaseState::Cancelled, &None, reason, &None),
            MemberOutcome::Vanished { detail } => (ReleaseState::Vanished, &None, detail, &None),
        };
        Settled {
            state,
            code: code.clone(),
            // A success has no error to show: its words stay in the audit log only.
            last_error: (state != ReleaseState::Succeeded).then(|| detail.clone()),
            request_id: request_id.clone(),
            detail: detail.clone(),
        }
    }
}

/// What a settled release's row gets: its state, last code, last error and RequestId.
type SettledColumns = (ReleaseState, Option<String>, Option<String>, Option<String>);

/// Makes `ids` the in-flight members of batch `batch`, inside `tx`, and returns them in id order.
pub(super) async fn assign(
    tx: &mut Tx,
    batch: BatchId,
    ids: &[ReleaseId],
    now: DateTime<Utc>,
) -> Result<Vec<BatchMember>, StoreError> {
    let mut q = Sql::new("UPDATE releases SET state = 'in_flight', batch_id = ");
    q.push_bind(batch);
    q.push(", updated_at = ").push_bind(ms(now));
    // A member moving from another batch keeps the calls that named it there (the SET sees the
    // row as it was: its old batch).
    q.push(
        ", attempts = attempts + CASE WHEN state = 'in_flight' THEN COALESCE(
             (SELECT b.attempts FROM batches b WHERE b.id = releases.batch_id), 0) ELSE 0 END",
    );
    q.push(" WHERE state IN ('pending', 'in_flight') AND id IN ");
    q.push_list(ids.iter().copied());
    q.push(" RETURNING id AS release_id, instance_id, instance_name, policy, snapshot_days");
    let mut members: Vec<BatchMember> = tx.fetch_all(q).await?;
    members.sort_by_key(|m| m.release_id);
    Ok(members)
}

/// The account, region and flags every member of a batch shares.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(super) struct BatchKind {
    pub(super) account: String,
    pub(super) region: String,
    pub(super) force: i64,
    pub(super) terminate_subscription: i64,
}

/// What a batch row reads back as.
pub(super) const BATCH_ROW: &str =
    "id, account, region, force, terminate_subscription, client_token,
                         attempts, tries, claims, last_code, uncertain";

/// Inserts an open batch of `kind` with its token, leased to `(owner, until)` (its first claim)
/// when given, inside `tx`.
async fn insert_batch(
    tx: &mut Tx,
    kind: &BatchKind,
    token: &str,
    lease: Option<(&str, i64)>,
    now: DateTime<Utc>,
) -> Result<BatchRow, StoreError> {
    tx.fetch_one(
        Sql::new(format!(
            "INSERT INTO batches (region, force, terminate_subscription,
               client_token, state, next_attempt_at, created_at, updated_at, account,
               lease_owner, lease_expires_at, claims)
             VALUES ($1, $2, $3, $4, 'open', $5, $5, $5, $6, $7, $8, $9)
             RETURNING {BATCH_ROW}"
        ))
        .bind(&kind.region)
        .bind(kind.force)
        .bind(kind.terminate_subscription)
        .bind(token)
        .bind(ms(now))
        .bind(&kind.account)
        .bind(lease.map(|(owner, _)| owner))
        .bind(lease.map(|(_, until)| until))
        .bind(i64::from(lease.is_some())),
    )
    .await
}

/// Creates an open batch of `kind` with its token and makes `ids` its members, inside `tx`: the
/// token and the membership are stored together, before any call. Returns the batch's id.
pub(super) async fn new_batch(
    tx: &mut Tx,
    kind: &BatchKind,
    token: &str,
    ids: &[ReleaseId],
    now: DateTime<Utc>,
) -> Result<BatchId, StoreError> {
    let b = insert_batch(tx, kind, token, None, now).await?;
    assign(tx, b.id(), ids, now).await?;
    Ok(b.id())
}

/// Creates a batch of `kind` with its token, already leased to `owner` until `until` (its first
/// claim), makes `ids` its members and returns it with them, inside `tx`: the token, the
/// membership and the lease are stored together, before any call, in two statements.
pub(super) async fn new_leased_batch(
    tx: &mut Tx,
    kind: &BatchKind,
    token: &str,
    ids: &[ReleaseId],
    owner: &str,
    until: i64,
    now: DateTime<Utc>,
) -> Result<ClaimedBatch, StoreError> {
    let b = insert_batch(tx, kind, token, Some((owner, until)), now).await?;
    let members = assign(tx, b.id(), ids, now).await?;
    Ok(b.into_claimed(owner, members))
}

/// Leases batch `id` to `owner` until `until` (stored milliseconds), counting the claim, and
/// reads it back with its in-flight members, inside `tx`.
pub(super) async fn lease(
    tx: &mut Tx,
    id: BatchId,
    owner: &str,
    until: i64,
    now: DateTime<Utc>,
) -> Result<ClaimedBatch, StoreError> {
    let b: BatchRow = tx
        .fetch_one(lease_sql(Sql::new("$1").bind(id), owner, until, now))
        .await?;
    let members: Vec<BatchMember> = tx.fetch_all(members_of(id)).await?;
    Ok(b.into_claimed(owner, members))
}

/// Leases the batch whose id `which` gives (a bound id, or a query of one) to `owner` until
/// `until`, as a new claim of it, returning its row.
pub(super) fn lease_sql(which: Sql, owner: &str, until: i64, now: DateTime<Utc>) -> Sql {
    let mut q = Sql::new(
        "UPDATE batches SET lease_owner = $1, lease_expires_at = $2, claims = claims + 1,
                updated_at = $3
         WHERE id = (",
    )
    .bind(owner)
    .bind(until)
    .bind(ms(now));
    q.append(which);
    q.push(&format!(") RETURNING {BATCH_ROW}"));
    q
}

/// Reads the in-flight members of batch `id`, in id order.
pub(super) fn members_of(id: BatchId) -> Sql {
    Sql::new(
        "SELECT id AS release_id, instance_id, instance_name, policy, snapshot_days
         FROM releases
         WHERE batch_id = $1 AND state = 'in_flight' ORDER BY id",
    )
    .bind(id)
}

/// Moves the settled members of batch `batch` to their final state, with an event each, inside
/// `tx`; a permanent refusal with a quarantine quarantines its instance. A member no longer in
/// flight in this batch is left as it is.
pub(super) async fn settle(
    tx: &mut Tx,
    batch: BatchId,
    settled: &[(BatchMember, MemberOutcome)],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    quarantine_refused(tx, settled, now).await?;
    for q in settle_writes(batch, settled, now) {
        tx.execute(q).await?;
    }
    Ok(())
}

/// Quarantines the instances of the members refused for good with a quarantine, inside `tx`.
async fn quarantine_refused(
    tx: &mut Tx,
    settled: &[(BatchMember, MemberOutcome)],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    for (m, outcome) in settled {
        if let MemberOutcome::Failed {
            code,
            message,
            quarantine: Some(base),
            ..
        } = outcome
        {
            safety::quarantine(tx, m, code, message, *base, now).await?;
        }
    }
    Ok(())
}

/// Whether settling `settled` quarantines an instance (more than [`settle_writes`] writes).
fn quarantines(settled: &[(BatchMember, MemberOutcome)]) -> bool {
    settled.iter().any(|(_, o)| {
        matches!(
            o,
            MemberOutcome::Failed {
                quarantine: Some(_),
                ..
            }
        )
    })
}

/// The writes that move the settled members of batch `batch` to their final state, with an
/// event each, quarantines aside; each ends with a `WHERE` clause (see [`Chain::write`]).
/// Members that end the same way are updated together: usually the whole batch at once.
fn settle_writes(
    batch: BatchId,
    settled: &[(BatchMember, MemberOutcome)],
    now: DateTime<Utc>,
) -> Vec<Sql> {
    let mut events = Vec::with_capacity(settled.len());
    let mut groups: BTreeMap<SettledColumns, Vec<ReleaseId>> = BTreeMap::new();
    for (m, outcome) in settled {
        let s = Settled::of(outcome);
        groups
            .entry((s.state, s.code.clone(), s.last_error, s.request_id.clone()))
            .or_default()
            .push(m.release_id);
        events.push(NewEvent {
            kind: s.state.as_str(),
            release_id: Some(m.release_id),
            batch_id: Some(batch),
            policy: Some(m.policy.clone()),
            instance_id: Some(m.instance_id.clone()),
            code: s.code,
            request_id: s.request_id,
            detail: s.detail,
            ..NewEvent::default()
        });
    }
    let mut writes = Vec::new();
    for ((state, code, last_error, request_id), ids) in &groups {
        for chunk in ids.chunks(400) {
            let mut q = Sql::new("UPDATE releases SET state = ");
            q.push_bind(state.as_str());
            q.push(", last_code = COALESCE(").push_bind(code.as_deref());
            q.push(", last_code), last_message = ")
                .push_bind(last_error.as_deref());
            q.push(", request_id = COALESCE(")
                .push_bind(request_id.as_deref());
            q.push(", request_id), updated_at = ").push_bind(ms(now));
            // The calls that named it in this batch: every attempt since it joined.
            q.push(
                ", attempts = attempts + COALESCE((SELECT b.attempts FROM batches b WHERE b.id = ",
            )
            .push_bind(batch);
            q.push("), 0) WHERE batch_id = ").push_bind(batch);
            q.push(" AND state = 'in_flight' AND id IN ");
            q.push_list(chunk.iter().copied());
            writes.push(q);
        }
    }
    writes.extend(events_insert(&events, now));
    writes
}

/// The fence's condition: `$1` the batch, `$2` its lease owner, `$3` its claim number.
const FENCED: &str = "id = $1 AND lease_owner = $2 AND claims = $3 AND state = 'open'";

/// A statement fenced by `fence`: `text` ends with a `WHERE` that [`FENCED`] completes, and
/// may use `$1`..`$3` itself; the caller binds from `$4` on.
fn fenced(text: &str, fence: &Fence) -> Sql {
    Sql::new(format!("{text} {FENCED}"))
        .bind(fence.batch_id)
        .bind(&fence.owner)
        .bind(fence.claims)
}

/// What a retry follows, for [`Store::retry_later_as`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryHow {
    /// The re-check failed before any call (it counts as a try).
    pub recheck_failed: bool,
    /// The call it follows may have taken effect (sticky for the batch).
    pub uncertain: bool,
    /// ECS throttled the call: it gives its try back in the batch's first
    /// [`THROTTLED_FREE_FOR`].
    pub throttled: bool,
}

/// How long after a batch is formed a throttled answer does not use up one of its tries.
pub const THROTTLED_FREE_FOR: chrono::Duration = chrono::Duration::hours(1);

impl Store {
    /// Extends a lease while a call is in flight. False when the lease was lost.
    pub async fn renew_lease(
        &self,
        fence: &Fence,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let n = self
            .pool
            .execute(
                fenced(
                    "UPDATE batches SET lease_expires_at = $4, updated_at = $5 WHERE",
                    fence,
                )
                .bind(ms(now) + lease.as_millis() as i64)
                .bind(ms(now)),
            )
            .await?;
        Ok(n == 1)
    }

    /// Before a call: settles the members the re-check removed, counts the attempt and logs
    /// the call with its token, fenced. False when the lease was lost (do not call).
    pub async fn begin_attempt(
        &self,
        fence: &Fence,
        settled: &[(BatchMember, MemberOutcome)],
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.begin_attempt_for(fence, settled, token, None, None, now)
            .await
    }

    /// [`Store::begin_attempt`], the last word before a call is sent: refused (false) when the
    /// lease was lost or has expired, when releases are paused, or when a member has become
    /// exempt (`ecs-janitor exempt`) since the re-check, all in the same write that counts the
    /// attempt; and, given this process's policy set (`policy_set`, its digest), when a replica
    /// running at `now` runs another. With `lease`, the lease is extended from `now`, so the
    /// call starts with a whole lease ahead of it.
    pub async fn begin_attempt_for(
        &self,
        fence: &Fence,
        settled: &[(BatchMember, MemberOutcome)],
        token: &str,
        lease: Option<Duration>,
        policy_set: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let extend: Option<i64> = lease.map(|l| ms(now) + l.as_millis() as i64);
        let mut gate = fenced(
            "UPDATE batches SET attempts = attempts + 1, tries = tries + 1,
                    uncertain = CASE WHEN attempts > 0 AND last_code IS NULL THEN 1 ELSE uncertain END,
                    last_code = NULL, updated_at = $4,
                    lease_expires_at = COALESCE($5, lease_expires_at)
             WHERE",
            fence,
        )
        .bind(ms(now))
        .bind(extend);
        gate.push(" AND lease_expires_at > $4 AND NOT ");
        settings::paused_sql(&mut gate);
        // A replica with another policy set that joined since the claim's read (the workers
        // hold at their next claim; a batch already claimed would still have gone out).
        if let Some(own) = policy_set {
            gate.push(
                " AND NOT EXISTS (SELECT 1 FROM replicas WHERE live_until >= $4
                   AND policies_digest <> ",
            )
            .push_bind(own)
            .push(")");
        }
        // An operator's exemption written since the re-check stops the call too: the batch is
        // given back, and the next re-check drops the exempt member. Only the members the call
        // will name count, not those settled above (see `Chain` on what its parts read).
        gate.push(
            " AND NOT EXISTS (SELECT 1 FROM releases r
                 JOIN exemptions e ON e.instance_id = r.instance_id
                 WHERE r.batch_id = $1 AND r.state = 'in_flight' AND e.until > $4",
        );
        if !settled.is_empty() {
            gate.push(" AND r.id NOT IN ")
                .push_list(settled.iter().map(|(m, _)| m.release_id));
        }
        gate.push(")");
        let mut chain = Chain::new(gate);
        // The members the decision settled first; a refusal leaves them as they were.
        chain.first(settle_writes(fence.batch_id, settled, now));
        // The members' own count takes the batch's when they leave it (`settle`, `assign`).
        chain.then(events_insert(
            &[NewEvent {
                kind: "call_sent",
                batch_id: Some(fence.batch_id),
                client_token: Some(token.to_string()),
                ..NewEvent::default()
            }],
            now,
        ));
        self.commit_settling(chain, settled, now).await
    }

    /// Runs `chain`, and the quarantines of `settled` when it has any: then in a transaction on
    /// either database (a quarantine reads before it writes), after the chain's writes, so that
    /// the transaction writes before it reads. False when its gate changed no row.
    async fn commit_settling(
        &self,
        chain: Chain,
        settled: &[(BatchMember, MemberOutcome)],
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        if !quarantines(settled) {
            return chain.run(&self.pool).await;
        }
        let mut tx = self.pool.begin().await?;
        if !chain.run_in(&mut tx).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        quarantine_refused(&mut tx, settled, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Ends a batch (fenced): settles every listed member, moves the batch to `state` (`done`,
    /// `failed` or `split`), and puts each group of `regroup` into a new batch under a new
    /// token. False when the lease was lost (nothing is written).
    pub async fn finish_batch(
        &self,
        fence: &Fence,
        state: BatchState,
        code: Option<&str>,
        settled: &[(BatchMember, MemberOutcome)],
        regroup: &[Vec<ReleaseId>],
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let end = |returning: &str| {
            let mut q = fenced(
                "UPDATE batches SET state = $4, last_code = $5, lease_owner = NULL,
                        lease_expires_at = NULL, updated_at = $6 WHERE",
                fence,
            )
            .bind(state.as_str())
            .bind(code)
            .bind(ms(now));
            q.push(returning);
            q
        };
        if regroup.iter().all(|g| g.is_empty()) {
            let mut chain = Chain::new(end(""));
            chain.then(settle_writes(fence.batch_id, settled, now));
            return self.commit_settling(chain, settled, now).await;
        }
        // Re-forming needs the batch's kind, read as it ends.
        let mut tx = self.pool.begin().await?;
        let kind: Option<BatchKind> = tx
            .fetch_optional(end(
                " RETURNING account, region, force, terminate_subscription",
            ))
            .await?;
        let Some(kind) = kind else {
            tx.rollback().await?;
            return Ok(false);
        };
        settle(&mut tx, fence.batch_id, settled, now).await?;
        for group in regroup.iter().filter(|g| !g.is_empty()) {
            let token = new_client_token();
            let id = new_batch(&mut tx, &kind, &token, group, now).await?;
            insert_event(
                &mut tx,
                NewEvent {
                    kind: "split",
                    batch_id: Some(id),
                    client_token: Some(token),
                    code: code.map(str::to_string),
                    detail: format!("{} releases from batch {}", group.len(), fence.batch_id),
                    ..NewEvent::default()
                },
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Schedules the same batch (same token, same members) for another attempt, fenced.
    /// `recheck_failed`: the try failed before any call (the re-check), so it counts here; a
    /// call's try was counted by [`Store::begin_attempt`]. The code of a re-check failure does
    /// not replace the last call's, which tells whether that call's outcome is unknown.
    pub async fn retry_later(
        &self,
        fence: &Fence,
        code: &str,
        message: &str,
        at: DateTime<Utc>,
        recheck_failed: bool,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let how = RetryHow {
            recheck_failed,
            ..RetryHow::default()
        };
        self.retry_later_as(fence, code, message, at, how, now)
            .await
    }

    /// [`Store::retry_later`], with what the retry follows ([`RetryHow`]).
    pub async fn retry_later_as(
        &self,
        fence: &Fence,
        code: &str,
        message: &str,
        at: DateTime<Utc>,
        how: RetryHow,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        // A throttled answer gives its try back while the batch is younger than
        // THROTTLED_FREE_FOR: ECS did nothing, and a tight quota would otherwise use up the
        // attempts of every batch waiting on it. Past that, throttling counts, so the loop
        // stays bounded in time as well as in tries.
        let free_since = now - THROTTLED_FREE_FOR;
        let mut tx = self.pool.begin().await?;
        let n = tx
            .execute(
                fenced(
                    "UPDATE batches SET next_attempt_at = $4,
                            last_code = CASE WHEN $7 = 1 AND attempts > 0 THEN last_code ELSE $5 END,
                            tries = tries + $7
                                - CASE WHEN $9 = 1 AND created_at > $10 THEN 1 ELSE 0 END,
                            uncertain = CASE WHEN $8 = 1 THEN 1 ELSE uncertain END,
                            lease_owner = NULL, lease_expires_at = NULL,
                            updated_at = $6
                     WHERE",
                    fence,
                )
                .bind(ms(at))
                .bind(code)
                .bind(ms(now))
                .bind(how.recheck_failed)
                .bind(how.uncertain)
                .bind(how.throttled)
                .bind(ms(free_since)),
            )
            .await?;
        if n != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.execute(
            Sql::new(
                "UPDATE releases SET last_code = $2, last_message = $3, updated_at = $4
                 WHERE batch_id = $1 AND state = 'in_flight'",
            )
            .bind(fence.batch_id)
            .bind(code)
            .bind(message)
            .bind(ms(now)),
        )
        .await?;
        insert_event(
            &mut tx,
            NewEvent {
                kind: "retry_scheduled",
                batch_id: Some(fence.batch_id),
                code: Some(code.to_string()),
                detail: format!("next attempt at {}", at.to_rfc3339()),
                ..NewEvent::default()
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Gives a batch back untouched until `at` (paused, window closed): no try is counted and
    /// its token and members stay as they are. Fenced.
    pub async fn postpone(
        &self,
        fence: &Fence,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let n = self
            .pool
            .execute(
                fenced(
                    "UPDATE batches SET next_attempt_at = $4, lease_owner = NULL,
                            lease_expires_at = NULL, updated_at = $5
                     WHERE",
                    fence,
                )
                .bind(ms(at))
                .bind(ms(now)),
            )
            .await?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_success_keeps_its_words_in_the_log_not_as_the_last_error() {
        let s = Settled::of(&MemberOutcome::Succeeded {
            request_id: Some("RID".into()),
            code: None,
            detail: "released".into(),
        });
        assert_eq!(s.state, ReleaseState::Succeeded);
        assert_eq!(s.last_error, None);
        assert_eq!(s.detail, "released");
        assert_eq!(s.request_id.as_deref(), Some("RID"));
    }

    #[test]
    fn a_failure_is_the_last_error_with_its_code() {
        let s = Settled::of(&MemberOutcome::Failed {
            code: "ChargeTypeViolation".into(),
            message: "no".into(),
            request_id: None,
            quarantine: None,
        });
        assert_eq!(s.state, ReleaseState::Failed);
        assert_eq!(s.code.as_deref(), Some("ChargeTypeViolation"));
        assert_eq!(s.last_error.as_deref(), Some("no"));
        let c = Settled::of(&MemberOutcome::Cancelled {
            reason: "protected".into(),
        });
        assert_eq!(
            (c.state, c.code, c.last_error.as_deref()),
            (ReleaseState::Cancelled, None, Some("protected"))
        );
    }

    #[test]
    fn fenced_writes_bind_the_fence_first() {
        let f = Fence {
            batch_id: BatchId(7),
            owner: "w".into(),
            claims: 2,
        };
        let q = fenced("UPDATE batches SET x = $4 WHERE", &f).bind(1i64);
        assert_eq!(
            q.text(),
            "UPDATE batches SET x = $4 WHERE id = $1 AND lease_owner = $2 AND claims = $3 AND state = 'open'"
        );
        assert_eq!(q.values().len(), 4);
    }
}
