//! The release queue: enqueueing, claiming due work as leased batches, cancelling and retrying.
//!
//! Also when work is next due. Cancels and retries are the reconciler's and operators'.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::audit::{insert_event, insert_events};
use super::batches::BATCH_ROW;
use super::batches::{self, BatchKind};
use super::db::{Pool, Sql, Tx};
use super::rows::{members_json, BatchRow, ClaimRow};
use super::{
    from_ms, ms, new_client_token, safety, BatchId, ClaimedBatch, NewEvent, ReleaseId,
    ReleaseState, Store, StoreError,
};

/// The states of an active release, as SQL.
pub(super) const ACTIVE: &str = "('pending', 'in_flight')";

/// How many releases one enqueue must add before PostgreSQL's statistics are refreshed.
const ANALYZE_AFTER: usize = 1_000;
/// Releases per INSERT of an enqueue (16 values each, within every driver's limit on binds).
const ENQUEUE_CHUNK: usize = 400;

/// A release the reconciler wants queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRelease {
    pub instance_id: String,
    pub instance_name: String,
    /// The account it belongs to (`""`: the default account).
    pub account: String,
    pub region: String,
    pub policy: String,
    pub force: bool,
    pub terminate_subscription: bool,
    pub not_before: DateTime<Utc>,
    pub reasons: String,
    /// Snapshots to take before DeleteInstances (`release.snapshot`).
    pub snapshot: Option<crate::policy::SnapshotOptions>,
    /// The saving it was planned with, kept with it; `None` when it was not priced.
    pub saving: Option<super::ReleaseSaving>,
}

/// What a claim may take: work due at `now`, in `scope` (`""`: the whole queue), not of the
/// accounts in `skip`.
struct Due<'a> {
    now: DateTime<Utc>,
    scope: &'a str,
    /// `|a|b|`, or `""` to skip none.
    skip: String,
    /// `|account:region|...`: where this process already has batches in flight, so a new
    /// batch is taken elsewhere when one is due there (each region and API is paced on its
    /// own, so spread claims keep every key busy); `""` for none.
    busy: String,
    /// What a claim's reads append to lock the rows they return.
    lock: &'static str,
}

/// Leaves out the accounts of `$3` (see [`Due::skip_list`]).
const SKIP_FILTER: &str =
    " AND ($3 = '' OR $3 NOT LIKE ('%|' || REPLACE(account, '_', '\\_') || '|%') ESCAPE '\\')";

/// Leaves out the (account, region) pairs of `$4` (see [`Due::busy`]).
const BUSY_FILTER: &str = " AND $4 NOT LIKE ('%|' || REPLACE(account, '_', '\\_') || ':'
    || REPLACE(region, '_', '\\_') || '|%') ESCAPE '\\'";

/// Only batches all of whose in-flight members are in the scope `$9` (`''`: the whole queue).
const BATCH_SCOPE: &str = " AND ($9 = '' OR NOT EXISTS (SELECT 1 FROM releases m
         WHERE m.batch_id = batches.id AND m.state = 'in_flight'
           AND NOT EXISTS (SELECT 1 FROM scope_members s WHERE s.scope = $9 AND s.release_id = m.id)))";

/// Only releases in the scope `$9` (`''`: the whole queue).
/// A release that must be snapshotted first is batched only once every snapshot is
/// accomplished: the gate between CreateSnapshot and DeleteInstances.
pub(super) const SNAPSHOTS_READY: &str = " AND (snapshot_days IS NULL OR snapshot_stage = 'ready')";

const RELEASE_SCOPE: &str =
    " AND ($9 = '' OR EXISTS (SELECT 1 FROM scope_members s WHERE s.scope = $9 AND s.release_id = releases.id))";

/// The detail of a `batched` event: "N releases in REGION".
fn batched_detail(members: usize, region: &str) -> String {
    format!("{members} releases in {region}")
}

/// [`batched_detail`] in SQL, for a claim that writes its event in the statement that forms the
/// batch: `count` is the members' count, and the batch is `b`.
fn batched_detail_sql(count: &str) -> String {
    format!("{count} || ' releases in ' || b.region")
}

impl Due<'_> {
    /// `|a|b|`: account names are letters, digits, dashes and underscores (`_` is escaped in
    /// the LIKE pattern), so one bind carries the list on both databases.
    fn skip_list(accounts: &[String]) -> String {
        if accounts.is_empty() {
            String::new()
        } else {
            format!("|{}|", accounts.join("|"))
        }
    }

    /// `|account:region|...` for [`Due::busy`].
    fn busy_list(pairs: &[(String, String)]) -> String {
        if pairs.is_empty() {
            return String::new();
        }
        let joined: Vec<String> = pairs.iter().map(|(a, r)| format!("{a}:{r}")).collect();
        format!("|{}|", joined.join("|"))
    }

    /// The kind of the oldest due release, without a lock: `$1` now, `$2` the scope, `$3` the
    /// accounts skipped and, when `elsewhere`, `$4` the busy pairs it must be outside.
    fn head_sql(elsewhere: bool) -> String {
        // `+not_before`: filter on the due time, but walk the pending releases in id order (the
        // partial indexes of migration 0003), never sort them all.
        let scope = RELEASE_SCOPE.replace("$9", "$2");
        let busy = if elsewhere { BUSY_FILTER } else { "" };
        format!(
            "SELECT account, region, force, terminate_subscription FROM releases
             WHERE state = 'pending' AND +not_before <= $1{scope}{SKIP_FILTER}{busy}{SNAPSHOTS_READY}
             ORDER BY id LIMIT 1"
        )
    }

    /// A stored batch whose retry is due or whose lease expired, oldest first. The scope is
    /// always bound, so each query has one shape.
    async fn stored_batch(&self, tx: &mut Tx) -> Result<Option<BatchId>, StoreError> {
        let id: Option<(BatchId,)> = tx.fetch_optional(self.stored_sql()).await?;
        Ok(id.map(|(id,)| id))
    }

    /// The id of [`Due::stored_batch`], locked (PostgreSQL) skipping those another claim holds.
    fn stored_sql(&self) -> Sql {
        self.stored_sql_with(self.lock)
    }

    /// The id of [`Due::stored_batch`], with `lock` appended.
    fn stored_sql_with(&self, lock: &str) -> Sql {
        let scope = BATCH_SCOPE.replace("$9", "$2");
        Sql::new(format!(
            "SELECT id FROM batches WHERE state = 'open' AND next_attempt_at <= $1
               AND (lease_expires_at IS NULL OR lease_expires_at <= $1){scope}{SKIP_FILTER}
             ORDER BY next_attempt_at, id LIMIT 1{lock}"
        ))
        .bind(ms(self.now))
        .bind(self.scope)
        .bind(&self.skip)
    }

    /// PostgreSQL: a claim in one statement, with no transaction around it, most of the time: a
    /// new batch of the head's kind formed, leased and logged, unless a stored batch is due
    /// again; then that batch leased (its members read after), since retries come first.
    /// `None` when neither is found: nothing is due, or the head's group is held by another
    /// claim (then [`Due::new_batch_locked`] skips it).
    async fn claim_at_once(
        &self,
        pool: &Pool,
        max: usize,
        owner: &str,
        until: i64,
    ) -> Result<Option<ClaimedBatch>, StoreError> {
        let mut claimed = None;
        if !self.busy.is_empty() {
            let row = pool
                .fetch_optional(self.form(true, max, owner, until))
                .await?;
            claimed = ClaimRow::claimed(row, owner)?;
        }
        if claimed.is_none() {
            let row = pool
                .fetch_optional(self.form(false, max, owner, until))
                .await?;
            claimed = ClaimRow::claimed(row, owner)?;
        }
        if claimed.is_some() {
            return Ok(claimed);
        }
        let lease = batches::lease_sql(self.stored_sql(), owner, until, self.now);
        if let Some(b) = pool.fetch_optional::<BatchRow>(lease).await? {
            let members = pool.fetch_all(batches::members_of(b.id())).await?;
            return Ok(Some(b.into_claimed(owner, members)));
        }
        Ok(None)
    }

    /// PostgreSQL: [`Due::pick`], and the new batch of what it picked formed, leased to `owner`
    /// until `until` and logged, in one statement: one row, the batch with its members. It
    /// picks nothing while a stored batch is due again (a check made once, before the pick
    /// locks any row).
    fn form(&self, elsewhere: bool, max: usize, owner: &str, until: i64) -> Sql {
        let now = ms(self.now);
        let mut q = Sql::new("WITH picked AS (SELECT * FROM (");
        q.append(self.pick(elsewhere, max));
        q.push(") p WHERE NOT EXISTS (");
        q.append(self.stored_sql_with(""));
        q.push(
            ")), b AS (INSERT INTO batches (region, force, terminate_subscription, client_token,
                 state, next_attempt_at, created_at, updated_at, account, lease_owner,
                 lease_expires_at, claims)
               SELECT region, force, terminate_subscription, ",
        );
        q.push_bind(new_client_token()).push(", 'open', ");
        q.push_bind(now).push(", ").push_bind(now).push(", ");
        q.push_bind(now).push(", account, ").push_bind(owner);
        q.push(", ").push_bind(until);
        q.push(&format!(
            ", 1 FROM picked ORDER BY id LIMIT 1 RETURNING {BATCH_ROW}),
             m AS (UPDATE releases SET state = 'in_flight', batch_id = b.id, updated_at = "
        ));
        q.push_bind(now);
        q.push(
            " FROM b WHERE releases.state = 'pending' AND releases.id IN (SELECT id FROM picked)
               RETURNING releases.id AS release_id, releases.instance_id, releases.instance_name,
                         releases.policy, releases.snapshot_days),
             e AS (INSERT INTO events (at, kind, batch_id, client_token, detail)
               SELECT ",
        );
        q.push_bind(now);
        q.push(", 'batched', b.id, b.client_token, ");
        q.push(&batched_detail_sql("(SELECT COUNT(*) FROM m)"));
        q.push(" FROM b) SELECT b.*, ");
        q.push(&members_json(true, "m"));
        q.push(" AS members FROM b");
        q
    }

    /// SQLite: a new batch of up to `max` due releases, leased to `owner` until `until`: the
    /// oldest due release (outside the busy pairs if any is due there, else anywhere), and those
    /// of its account, region and flags after it. Its token, membership, lease and `batched`
    /// event are written in one script, before any call; nothing else writes in between (SQLite
    /// has one writer).
    async fn new_batch(
        &self,
        tx: &mut Tx,
        max: usize,
        owner: &str,
        until: i64,
    ) -> Result<Option<ClaimedBatch>, StoreError> {
        let row: Option<ClaimRow> = tx
            .fetch_optional(self.form_script(max, owner, until))
            .await?;
        Ok(ClaimRow::claimed(row, owner)?)
    }

    /// The script of [`Due::new_batch`]: the batch inserted with the head's kind, the head's
    /// group's due releases made its members, the event, and the batch read back with them
    /// (one row with its members; none when nothing is due). Each statement finds the batch by its
    /// token.
    fn form_script(&self, max: usize, owner: &str, until: i64) -> Sql {
        let (now, token) = (ms(self.now), new_client_token());
        let mut q = Sql::new(
            "INSERT INTO batches (region, force, terminate_subscription, client_token, state,
               next_attempt_at, created_at, updated_at, account, lease_owner, lease_expires_at,
               claims)
             SELECT region, force, terminate_subscription, ",
        );
        q.push_bind(&token).push(", 'open', ");
        q.push_bind(now).push(", ").push_bind(now).push(", ");
        q.push_bind(now).push(", account, ").push_bind(owner);
        q.push(", ").push_bind(until).push(", 1 FROM (");
        if !self.busy.is_empty() {
            q.push("SELECT 0 AS preference, * FROM (")
                .append(self.head(true))
                .push(") UNION ALL ");
        }
        q.push("SELECT 1 AS preference, * FROM (")
            .append(self.head(false))
            .push(") ORDER BY preference LIMIT 1);\n");
        q.push("UPDATE releases SET state = 'in_flight', updated_at = ")
            .push_bind(now);
        q.push(", batch_id = (SELECT id FROM batches WHERE client_token = ")
            .push_bind(&token);
        q.push(
            ") WHERE state = 'pending' AND id IN (SELECT id FROM releases
               WHERE state = 'pending' AND +not_before <= ",
        )
        .push_bind(now);
        q.push(" AND (").push_bind(self.scope);
        q.push(" = '' OR EXISTS (SELECT 1 FROM scope_members s WHERE s.scope = ")
            .push_bind(self.scope);
        q.push(" AND s.release_id = releases.id))");
        q.push(SNAPSHOTS_READY);
        q.push(
            " AND (account, region, force, terminate_subscription) = (SELECT account, region,
                 force, terminate_subscription FROM batches WHERE client_token = ",
        )
        .push_bind(&token);
        q.push(") ORDER BY id LIMIT ")
            .push_bind(max as i64)
            .push(");\n");
        q.push("INSERT INTO events (at, kind, batch_id, client_token, detail) SELECT ")
            .push_bind(now);
        q.push(", 'batched', b.id, b.client_token, ");
        q.push(&batched_detail_sql(
            "(SELECT COUNT(*) FROM releases r WHERE r.batch_id = b.id AND r.state = 'in_flight')",
        ));
        q.push(" FROM batches b WHERE b.client_token = ")
            .push_bind(&token);
        q.push(&format!(";\nSELECT {BATCH_ROW}, "));
        q.push(&members_json(
            false,
            "(SELECT id AS release_id, instance_id, instance_name, policy, snapshot_days
               FROM releases WHERE batch_id = batches.id AND state = 'in_flight')",
        ));
        q.push(" AS members FROM batches WHERE client_token = ")
            .push_bind(&token);
        q
    }

    /// The kind of the oldest due release (see [`Due::head_sql`]), bound.
    fn head(&self, elsewhere: bool) -> Sql {
        let q = Sql::new(Self::head_sql(elsewhere))
            .bind(ms(self.now))
            .bind(self.scope)
            .bind(&self.skip);
        if elsewhere {
            q.bind(&self.busy)
        } else {
            q
        }
    }

    /// PostgreSQL: a new batch when [`Due::claim_at_once`] found none, in two locked reads, in
    /// the claim's transaction.
    async fn new_batch_locked(
        &self,
        tx: &mut Tx,
        max: usize,
        owner: &str,
        until: i64,
    ) -> Result<Option<ClaimedBatch>, StoreError> {
        // The one-statement claim may have found the head's group held by another claim; the
        // reads below skip locked rows and take the next group.
        let lock = self.lock;
        let head = |elsewhere: bool| {
            let mut q = self.head(elsewhere);
            q.push(lock);
            q
        };
        // Elsewhere than where this process is busy, if anything is due there; else anywhere.
        let mut kind: Option<BatchKind> = None;
        if !self.busy.is_empty() {
            kind = tx.fetch_optional(head(true)).await?;
        }
        if kind.is_none() {
            kind = tx.fetch_optional(head(false)).await?;
        }
        let Some(kind) = kind else {
            return Ok(None);
        };
        let scope = RELEASE_SCOPE.replace("$9", "$7");
        let ids: Vec<(ReleaseId,)> = tx
            .fetch_all(
                Sql::new(format!(
                    "SELECT id FROM releases
                     WHERE state = 'pending' AND +not_before <= $1 AND region = $2
                       AND force = $3 AND terminate_subscription = $4
                       AND account = $6{scope}{SNAPSHOTS_READY}
                     ORDER BY id LIMIT $5{lock}"
                ))
                .bind(ms(self.now))
                .bind(&kind.region)
                .bind(kind.force)
                .bind(kind.terminate_subscription)
                .bind(max as i64)
                .bind(&kind.account)
                .bind(self.scope),
            )
            .await?;
        let ids: Vec<ReleaseId> = ids.into_iter().map(|(id,)| id).collect();
        self.lease_new(tx, &kind, &ids, owner, until).await
    }

    /// The due releases of the kind of the oldest due release (outside the busy pairs when
    /// `elsewhere`), oldest first, up to `max`, each with its kind. The head is read without a
    /// lock; the releases returned are locked (PostgreSQL), skipping those another claim holds.
    fn pick(&self, elsewhere: bool, max: usize) -> Sql {
        let scope = RELEASE_SCOPE.replace("$9", "$2");
        let limit = if elsewhere { "$5" } else { "$4" };
        let (head, lock) = (Self::head_sql(elsewhere), self.lock);
        let q = Sql::new(format!(
            "SELECT id, account, region, force, terminate_subscription FROM releases
             WHERE state = 'pending' AND +not_before <= $1{scope}{SNAPSHOTS_READY}
               AND (account, region, force, terminate_subscription) = ({head})
             ORDER BY id LIMIT {limit}{lock}"
        ))
        .bind(ms(self.now))
        .bind(self.scope)
        .bind(&self.skip);
        if elsewhere {
            q.bind(&self.busy).bind(max as i64)
        } else {
            q.bind(max as i64)
        }
    }

    /// A new batch of `kind` made of `ids` (none: `None`), leased to `owner` until `until`,
    /// with its `batched` event.
    async fn lease_new(
        &self,
        tx: &mut Tx,
        kind: &BatchKind,
        ids: &[ReleaseId],
        owner: &str,
        until: i64,
    ) -> Result<Option<ClaimedBatch>, StoreError> {
        if ids.is_empty() {
            return Ok(None);
        }
        let token = new_client_token();
        let batch =
            batches::new_leased_batch(tx, kind, &token, ids, owner, until, self.now).await?;
        insert_event(
            tx,
            NewEvent {
                kind: "batched",
                batch_id: Some(batch.fence.batch_id),
                client_token: Some(token),
                detail: batched_detail(ids.len(), &kind.region),
                ..NewEvent::default()
            },
            self.now,
        )
        .await?;
        Ok(Some(batch))
    }
}

impl Store {
    /// Queues releases. An instance that already has an active release is left alone (the
    /// partial unique index decides), and so is one already released: ECS never reuses an
    /// instance id, so a pass that listed the instance before another replica released it must
    /// not queue it again. Returns the ids of the releases created.
    pub async fn enqueue(
        &self,
        releases: &[NewRelease],
        now: DateTime<Utc>,
    ) -> Result<Vec<(ReleaseId, String)>, StoreError> {
        self.enqueue_from(releases, |r| Some(r.clone()), now).await
    }

    /// [`Store::enqueue`] of what `make` makes of each of `items` (`None`: nothing to queue),
    /// made as it is inserted, 400 at a time, in one transaction: a pass that queues a whole
    /// fleet never holds a second copy of its plan.
    pub async fn enqueue_from<T: Sync>(
        &self,
        items: &[T],
        make: impl Fn(&T) -> Option<NewRelease> + Sync,
        now: DateTime<Utc>,
    ) -> Result<Vec<(ReleaseId, String)>, StoreError> {
        let mut created = Vec::new();
        let mut tx = self.pool.begin().await?;
        let mut rest = items;
        let mut chunk: Vec<NewRelease> = Vec::with_capacity(ENQUEUE_CHUNK);
        loop {
            chunk.clear();
            while chunk.len() < ENQUEUE_CHUNK {
                let Some((first, more)) = rest.split_first() else {
                    break;
                };
                rest = more;
                chunk.extend(make(first));
            }
            if chunk.is_empty() {
                break;
            }
            // One statement decides and inserts: the "already released" and "held" checks
            // cannot be separated from the insert by another replica's commit in between.
            let mut q = Sql::new(
                "INSERT INTO releases (instance_id, instance_name, region, policy, force,
                 terminate_subscription, state, not_before, reasons, created_at, updated_at,
                 account, snapshot_days, snapshot_disks, saving_basis, saving_minor,
                 saving_currency, renewal_minor)
                 SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6,
                        'pending', v.column7, v.column8, v.column9, v.column9, v.column10,
                        v.column11, v.column12, v.column13, v.column14, v.column15, v.column16
                 FROM (",
            );
            q.push_values(&chunk, |r| {
                let saving = r.saving.as_ref();
                let currency = saving
                    .and_then(|s| s.monthly.as_ref().or(s.renewal_avoided.as_ref()))
                    .map(|m| m.currency.as_str());
                [
                    r.instance_id.as_str().into(),
                    r.instance_name.as_str().into(),
                    r.region.as_str().into(),
                    r.policy.as_str().into(),
                    r.force.into(),
                    r.terminate_subscription.into(),
                    ms(r.not_before).into(),
                    r.reasons.as_str().into(),
                    ms(now).into(),
                    r.account.as_str().into(),
                    r.snapshot.map(|s| i64::from(s.retention_days)).into(),
                    r.snapshot.map(|s| s.disks.as_str()).into(),
                    saving.map(|s| s.basis.as_str()).into(),
                    saving
                        .and_then(|s| s.monthly.as_ref())
                        .map(|m| m.minor)
                        .into(),
                    currency.into(),
                    saving
                        .and_then(|s| s.renewal_avoided.as_ref())
                        .map(|m| m.minor)
                        .into(),
                ]
            });
            q.push(
                ") AS v WHERE NOT EXISTS (SELECT 1 FROM releases d
                      WHERE d.instance_id = v.column1 AND d.state = 'succeeded')
                 AND NOT EXISTS (SELECT 1 FROM holds h
                      WHERE h.instance_id = v.column1 AND h.policy = v.column4
                        AND (h.until IS NULL OR h.until > ",
            );
            q.push_bind(ms(now));
            q.push(&format!(
                "))
                 ON CONFLICT (instance_id) WHERE state IN {ACTIVE} DO NOTHING
                 RETURNING id, instance_id, policy"
            ));
            let rows: Vec<(ReleaseId, String, String)> = tx.fetch_all(q).await?;
            let mut events = Vec::with_capacity(rows.len());
            for (id, instance, policy) in rows {
                events.push(NewEvent {
                    kind: "enqueued",
                    release_id: Some(id),
                    policy: Some(policy),
                    instance_id: Some(instance.clone()),
                    ..NewEvent::default()
                });
                created.push((id, instance));
            }
            insert_events(&mut tx, &events, now).await?;
        }
        tx.commit().await?;
        self.refresh_statistics(created.len()).await;
        Ok(created)
    }

    /// After a large enqueue, brings PostgreSQL's statistics of the releases up to date: its
    /// planner picks the claim's index walks from them, and with the counts of before the
    /// enqueue (a few pending releases) it sorts every pending release on each claim and scans
    /// the whole table for each re-check instead (tens of milliseconds a batch). Autovacuum
    /// would get there, a minute or more later. SQLite plans without statistics.
    async fn refresh_statistics(&self, inserted: usize) {
        if !self.is_postgres() || inserted < ANALYZE_AFTER {
            return;
        }
        if let Err(e) = self.pool.execute(Sql::new("ANALYZE releases")).await {
            tracing::warn!(error = %e, "ANALYZE releases failed; claims may be slower until autovacuum runs");
        }
    }

    /// Cancels pending releases that no batch holds yet, each with its reason. Returns those it
    /// cancelled (a release already batched is left to the worker's re-check).
    pub async fn cancel_pending(
        &self,
        cancels: &[(ReleaseId, String)],
        now: DateTime<Utc>,
    ) -> Result<Vec<ReleaseId>, StoreError> {
        self.end_pending(cancels, ReleaseState::Cancelled, now)
            .await
    }

    /// Settles as vanished pending releases that no batch holds yet, whose instances ECS no
    /// longer has, each with what was seen. Returns those it settled.
    pub async fn vanish_pending(
        &self,
        gone: &[(ReleaseId, String)],
        now: DateTime<Utc>,
    ) -> Result<Vec<ReleaseId>, StoreError> {
        self.end_pending(gone, ReleaseState::Vanished, now).await
    }

    async fn end_pending(
        &self,
        ends: &[(ReleaseId, String)],
        state: ReleaseState,
        now: DateTime<Utc>,
    ) -> Result<Vec<ReleaseId>, StoreError> {
        let mut ended = Vec::new();
        let mut tx = self.pool.begin().await?;
        for (id, reason) in ends {
            let row: Option<(String, String)> = tx
                .fetch_optional(
                    Sql::new(
                        "UPDATE releases SET state = $4, last_message = $2, updated_at = $3
                         WHERE id = $1 AND state = 'pending' AND batch_id IS NULL
                         RETURNING policy, instance_id",
                    )
                    .bind(*id)
                    .bind(reason)
                    .bind(ms(now))
                    .bind(state.as_str()),
                )
                .await?;
            if let Some((policy, instance_id)) = row {
                ended.push(*id);
                let ev = NewEvent {
                    kind: state.as_str(),
                    release_id: Some(*id),
                    policy: Some(policy),
                    instance_id: Some(instance_id),
                    detail: reason.clone(),
                    ..NewEvent::default()
                };
                insert_event(&mut tx, ev, now).await?;
            }
        }
        tx.commit().await?;
        Ok(ended)
    }

    /// Claims the next due batch under a lease: first a stored batch whose retry is due or whose
    /// lease expired (with its token and members unchanged), else a new batch of up to
    /// `max_batch` due releases of one account, one region and one set of flags, whose token and
    /// membership are written together (one statement on PostgreSQL, one transaction on
    /// SQLite), before any call. With `scope`, only that run's
    /// releases are claimed (see [`Store::create_scope`]), and only batches all of whose members
    /// are in it.
    pub async fn claim(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        max_batch: usize,
        scope: Option<&str>,
    ) -> Result<Option<ClaimedBatch>, StoreError> {
        self.claim_spread(owner, now, lease, max_batch, scope, &[], &[])
            .await
    }

    /// [`Store::claim`], leaving alone the batches and releases of `skip_accounts` (accounts
    /// ECS refused as a whole a moment ago), and taking a new batch from another (account,
    /// region) than those of `busy` when one is due there.
    #[allow(clippy::too_many_arguments)]
    pub async fn claim_spread(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        max_batch: usize,
        scope: Option<&str>,
        skip_accounts: &[String],
        busy: &[(String, String)],
    ) -> Result<Option<ClaimedBatch>, StoreError> {
        let due = Due {
            now,
            scope: scope.unwrap_or_default(),
            skip: Due::skip_list(skip_accounts),
            busy: Due::busy_list(busy),
            lock: if self.is_postgres() {
                " FOR UPDATE SKIP LOCKED"
            } else {
                ""
            },
        };
        let until = ms(now) + lease.as_millis() as i64;
        let postgres = self.is_postgres();
        if postgres {
            // One statement a claim, most of the time: no transaction, no BEGIN, no COMMIT.
            if let Some(b) = due
                .claim_at_once(&self.pool, max_batch, owner, until)
                .await?
            {
                return Ok(Some(b));
            }
        }
        let mut tx = self.pool.begin().await?;
        let claimed = match due.stored_batch(&mut tx).await? {
            Some(id) => Some(batches::lease(&mut tx, id, owner, until, now).await?),
            // The head's group may be held by another claim: the locked reads skip it.
            None if postgres => {
                due.new_batch_locked(&mut tx, max_batch, owner, until)
                    .await?
            }
            None => due.new_batch(&mut tx, max_batch, owner, until).await?,
        };
        tx.commit().await?;
        Ok(claimed)
    }

    /// When the queue next has work for a worker without new releases being queued: now if
    /// something is due, the earliest retry or lease expiry otherwise, `None` when idle.
    /// With `scope`, only that run's releases count.
    pub async fn next_due(
        &self,
        now: DateTime<Utc>,
        scope: Option<&str>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let scope = scope.unwrap_or_default();
        let (pending,): (Option<i64>,) = self
            .pool
            .fetch_one(
                Sql::new(
                    "SELECT MIN(not_before) FROM releases WHERE state = 'pending' AND not_before <= $1
                       AND ($2 = '' OR EXISTS (SELECT 1 FROM scope_members s WHERE s.scope = $2 AND s.release_id = releases.id))",
                )
                .bind(ms(now))
                .bind(scope),
            )
            .await?;
        let (batches,): (Option<i64>,) = self
            .pool
            .fetch_one(
                Sql::new(
                    "SELECT MIN(CASE WHEN lease_expires_at IS NOT NULL AND lease_expires_at > next_attempt_at
                                     THEN lease_expires_at ELSE next_attempt_at END)
                     FROM batches WHERE state = 'open'
                       AND ($1 = '' OR NOT EXISTS (SELECT 1 FROM releases m
                            WHERE m.batch_id = batches.id AND m.state = 'in_flight'
                              AND NOT EXISTS (SELECT 1 FROM scope_members s WHERE s.scope = $1 AND s.release_id = m.id)))",
                )
                .bind(scope),
            )
            .await?;
        Ok(match (pending, batches) {
            (Some(_), _) => Some(now),
            (None, Some(b)) => Some(from_ms(b).max(now)),
            (None, None) => None,
        })
    }

    /// Puts a failed, cancelled or vanished release back in the queue, and lifts the hold or
    /// quarantine that kept its instance out of its policy. What was left of its grace period
    /// stays: it is due at its old `not_before`, or now if that has passed.
    pub async fn retry_release(
        &self,
        id: ReleaseId,
        by: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let r = self.release(id).await?;
        if !matches!(
            r.state,
            ReleaseState::Failed | ReleaseState::Cancelled | ReleaseState::Vanished
        ) {
            return Err(StoreError::WrongState {
                id,
                state: r.state,
                what: "only failed, cancelled or vanished releases can be retried",
            });
        }
        let retried = async {
            let mut tx = self.pool.begin().await?;
            tx.execute(
                Sql::new(
                    "UPDATE releases SET state = 'pending', batch_id = NULL, attempts = 0,
                            stage_owner = NULL, stage_until = NULL, snapshot_stage = NULL,
                            stage_started = NULL,
                            not_before = CASE WHEN not_before > $2 THEN not_before ELSE $2 END,
                            updated_at = $2
                     WHERE id = $1 AND state IN ('failed', 'cancelled', 'vanished')",
                )
                .bind(id)
                .bind(ms(now)),
            )
            .await?;
            super::snapshots::reset_failed(&mut tx, id).await?;
            tx.execute(
                Sql::new("DELETE FROM holds WHERE instance_id = $1 AND policy = $2")
                    .bind(&r.instance_id)
                    .bind(&r.policy),
            )
            .await?;
            insert_event(
                &mut tx,
                NewEvent {
                    kind: "retried",
                    release_id: Some(id),
                    policy: Some(r.policy.clone()),
                    instance_id: Some(r.instance_id.clone()),
                    detail: super::audit::who_and_why(by, reason),
                    ..NewEvent::default()
                },
                now,
            )
            .await?;
            tx.commit().await
        };
        match retried.await {
            Err(StoreError::Db(sqlx::Error::Database(d))) if d.is_unique_violation() => {
                Err(StoreError::WrongState {
                    id,
                    state: r.state,
                    what: "its instance already has an active release",
                })
            }
            other => other,
        }
    }

    /// An operator's cancel: cancels a pending release that no batch holds yet, and holds its
    /// instance out of its policy's enqueue until `queue retry`, or until `until`. `by` and
    /// `reason` are recorded with the hold and in the audit log.
    pub async fn cancel_release(
        &self,
        id: ReleaseId,
        by: &str,
        reason: &str,
        until: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let r = self.release(id).await?;
        let why = format!("cancelled by {by}: {reason}");
        let mut tx = self.pool.begin().await?;
        let n = tx
            .execute(
                Sql::new(
                    "UPDATE releases SET state = 'cancelled', last_message = $2, updated_at = $3
                     WHERE id = $1 AND state = 'pending' AND batch_id IS NULL",
                )
                .bind(id)
                .bind(&why)
                .bind(ms(now)),
            )
            .await?;
        if n == 1 {
            safety::hold(&mut tx, &r.instance_id, &r.policy, until, by, reason, now).await?;
            insert_event(
                &mut tx,
                NewEvent {
                    kind: "cancelled",
                    release_id: Some(id),
                    policy: Some(r.policy.clone()),
                    instance_id: Some(r.instance_id.clone()),
                    detail: match until {
                        Some(t) => format!("{why}; held until {}", t.format("%Y-%m-%d %H:%M UTC")),
                        None => format!("{why}; held until `queue retry`"),
                    },
                    ..NewEvent::default()
                },
                now,
            )
            .await?;
        }
        tx.commit().await?;
        if n == 0 {
            return Err(StoreError::WrongState {
                id,
                state: r.state,
                what: "only pending releases not yet in a batch can be cancelled",
            });
        }
        Ok(())
    }
}
