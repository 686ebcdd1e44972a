//! The durable release queue: releases, batches with their ClientTokens, policy runs,
//! observations, the audit log and settings, in SQLite (one process) or PostgreSQL (replicas).
//!
//! One implementation serves both databases: the schema is the same (times are UTC milliseconds,
//! flags 0/1), each database has its own migrations, and every query is written once with `$N`
//! placeholders, which both understand. The only difference is how a claim locks: PostgreSQL uses
//! `FOR UPDATE SKIP LOCKED`; SQLite has one writer connection, so its transactions never overlap.
//!
//! The database enforces the queue's invariants: one active release per instance (a partial
//! unique index), one run per (policy, tick) (a primary key), states by CHECK, and completion fenced
//! by lease owner and claim number, so a worker that lost its lease cannot overwrite a result.

mod rows;

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{PgPool, QueryBuilder, Row, SqlitePool};

pub use rows::{
    BatchId, BatchMember, BatchState, ClaimedBatch, EventRow, ReleaseId, ReleaseRow, ReleaseState,
    RunRow,
};
pub use safety::{HoldKind, HoldRow, PauseInfo};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database URL {url:?} is not supported: use sqlite://PATH or postgres://USER@HOST/DB")]
    Url { url: String },
    #[error("cannot open the database at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "the database at {url} has schema version {found}, newer than this ecs-janitor knows \
         ({known}); run a newer ecs-janitor against it, or point --database elsewhere"
    )]
    TooNew { url: String, found: i64, known: i64 },
    #[error("cannot migrate the database at {url}: {source}")]
    Migrate {
        url: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("release {0} does not exist")]
    NoSuchRelease(ReleaseId),
    #[error("release {id} is {state}; {what}")]
    WrongState {
        id: ReleaseId,
        state: String,
        what: &'static str,
    },
}

/// Milliseconds since the epoch, the stored form of every time.
pub fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// The inverse of [`ms`].
pub fn from_ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v).single().unwrap_or_default()
}

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$p` bound to whichever pool the store has; the body is compiled once per
/// database, so each query is written once.
macro_rules! with_pool {
    ($store:expr, $p:ident => $body:expr) => {
        match &$store.pool {
            Pool::Sqlite($p) => $body,
            Pool::Postgres($p) => $body,
        }
    };
}

/// Appends events inside the transaction `$tx`.
macro_rules! insert_events {
    ($tx:ident, $events:expr, $now:expr) => {{
        let events: &[NewEvent] = $events;
        for chunk in events.chunks(400) {
            let mut q = QueryBuilder::new(
                "INSERT INTO events (at, kind, release_id, batch_id, policy, instance_id, code,
                 request_id, client_token, detail) ",
            );
            q.push_values(chunk, |mut b, e| {
                b.push_bind(ms($now))
                    .push_bind(e.kind)
                    .push_bind(e.release_id)
                    .push_bind(e.batch_id)
                    .push_bind(e.policy.clone())
                    .push_bind(e.instance_id.clone())
                    .push_bind(e.code.clone())
                    .push_bind(e.request_id.clone())
                    .push_bind(e.client_token.clone())
                    .push_bind(e.detail.clone());
            });
            q.build().execute(&mut *$tx).await?;
        }
    }};
}

/// Makes `$ids` the in-flight members of batch `$batch`, inside `$tx`.
macro_rules! assign {
    ($tx:ident, $batch:expr, $ids:expr, $now:expr) => {{
        let ids: &[ReleaseId] = $ids;
        let mut q = QueryBuilder::new("UPDATE releases SET state = 'in_flight', batch_id = ");
        q.push_bind($batch);
        q.push(", updated_at = ").push_bind(ms($now));
        q.push(" WHERE state IN ('pending', 'in_flight') AND id IN (");
        let mut sep = q.separated(", ");
        for id in ids {
            sep.push_bind(*id);
        }
        q.push(")");
        q.build().execute(&mut *$tx).await?;
    }};
}

/// Creates an open batch with its token and makes `$ids` its members, inside `$tx`: the token
/// and the membership are stored together, before any call. Evaluates to the batch id.
macro_rules! new_batch {
    ($tx:ident, $account:expr, $region:expr, $force:expr, $ts:expr, $token:expr, $ids:expr, $now:expr) => {{
        let id: BatchId = sqlx::query_scalar(
            "INSERT INTO batches (region, force, terminate_subscription,
               client_token, state, next_attempt_at, created_at, updated_at, account)
             VALUES ($1, $2, $3, $4, 'open', $5, $5, $5, $6) RETURNING id",
        )
        .bind($region)
        .bind($force)
        .bind($ts)
        .bind($token)
        .bind(ms($now))
        .bind($account)
        .fetch_one(&mut *$tx)
        .await?;
        assign!($tx, id, $ids, $now);
        id
    }};
}

/// Quarantines member `$m` after a permanent refusal, inside `$tx`: its instance stays out of its
/// policy's enqueue for `$base`, doubled for each quarantine it already had (at most 2^10 times).
macro_rules! quarantine {
    ($tx:ident, $m:expr, $code:expr, $message:expr, $base:expr, $now:expr) => {{
        let m: &BatchMember = $m;
        let before: Option<i64> = sqlx::query_scalar(
            "SELECT repeats FROM holds WHERE instance_id = $1 AND policy = $2 AND kind = 'quarantine'",
        )
        .bind(&m.instance_id)
        .bind(&m.policy)
        .fetch_optional(&mut *$tx)
        .await?;
        let repeats = before.unwrap_or(0) + 1;
        let base: chrono::Duration = $base;
        let factor = 1i64 << (repeats - 1).clamp(0, 10);
        let until = ms($now).saturating_add(base.num_milliseconds().saturating_mul(factor));
        sqlx::query(
            "INSERT INTO holds (instance_id, policy, kind, until, by_whom, reason, repeats, created_at)
             VALUES ($1, $2, 'quarantine', $3, 'ecs-janitor', $4, $5, $6)
             ON CONFLICT (instance_id, policy, kind) DO UPDATE SET until = excluded.until,
                 reason = excluded.reason, repeats = excluded.repeats, created_at = excluded.created_at",
        )
        .bind(&m.instance_id)
        .bind(&m.policy)
        .bind(until)
        .bind(format!("refused with {}: {}", $code, $message))
        .bind(repeats)
        .bind(ms($now))
        .execute(&mut *$tx)
        .await?;
    }};
}

/// Moves settled members of batch `$batch` to their final state, with an event each.
macro_rules! settle {
    ($tx:ident, $batch:expr, $settled:expr, $now:expr) => {{
        let settled: &[(BatchMember, MemberOutcome)] = $settled;
        let mut events = Vec::with_capacity(settled.len());
        // Members that end the same way are updated together: usually the whole batch at once.
        #[allow(clippy::type_complexity)]
        let mut groups: std::collections::BTreeMap<
            (&str, Option<String>, String, Option<String>),
            Vec<ReleaseId>,
        > = std::collections::BTreeMap::new();
        for (m, outcome) in settled {
            let (state, code, message, request_id, kind) = match outcome {
                MemberOutcome::Succeeded {
                    request_id,
                    code,
                    detail,
                } => (
                    "succeeded",
                    code.clone(),
                    detail.clone(),
                    request_id.clone(),
                    "succeeded",
                ),
                MemberOutcome::Failed {
                    code,
                    message,
                    request_id,
                    quarantine,
                } => {
                    if let Some(base) = quarantine {
                        quarantine!($tx, m, code, message, *base, $now);
                    }
                    (
                        "failed",
                        Some(code.clone()),
                        message.clone(),
                        request_id.clone(),
                        "failed",
                    )
                }
                MemberOutcome::Cancelled { reason } => {
                    ("cancelled", None, reason.clone(), None, "cancelled")
                }
                MemberOutcome::Vanished { detail } => {
                    ("vanished", None, detail.clone(), None, "vanished")
                }
            };
            groups
                .entry((state, code.clone(), message.clone(), request_id.clone()))
                .or_insert_with(Vec::new)
                .push(m.release_id);
            events.push(NewEvent {
                kind,
                release_id: Some(m.release_id),
                batch_id: Some($batch),
                policy: Some(m.policy.clone()),
                instance_id: Some(m.instance_id.clone()),
                code,
                request_id,
                detail: message,
                ..NewEvent::default()
            });
        }
        for ((state, code, message, request_id), ids) in &groups {
            for chunk in ids.chunks(400) {
                let mut q = QueryBuilder::new("UPDATE releases SET state = ");
                q.push_bind(*state);
                q.push(", last_code = COALESCE(").push_bind(code.clone());
                // A success has no error to show: its words stay in the audit log only.
                let last_message = (*state != "succeeded").then(|| message.clone());
                q.push(", last_code), last_message = ")
                    .push_bind(last_message);
                q.push(", request_id = COALESCE(")
                    .push_bind(request_id.clone());
                q.push(", request_id), updated_at = ").push_bind(ms($now));
                q.push(" WHERE batch_id = ").push_bind($batch);
                q.push(" AND state = 'in_flight' AND id IN (");
                let mut sep = q.separated(", ");
                for id in chunk {
                    sep.push_bind(*id);
                }
                q.push(")");
                q.build().execute(&mut *$tx).await?;
            }
        }
        insert_events!($tx, &events, $now);
    }};
}

mod safety;

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
}

/// How one member of a batch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberOutcome {
    Succeeded {
        request_id: Option<String>,
        code: Option<String>,
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

/// Proof that a worker holds a batch's lease: completion is refused without the current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub batch_id: BatchId,
    pub owner: String,
    pub claims: i64,
}

/// Counts of releases by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StateCounts {
    pub pending: i64,
    pub in_flight: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
    pub vanished: i64,
}

/// What the metrics endpoint reads from the store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// (policy, state, count)
    pub by_policy_state: Vec<(String, String, i64)>,
    pub queue_depth: i64,
    pub oldest_due_age_seconds: f64,
    /// (policy, scheduled time of its last successful tick)
    pub last_success: Vec<(String, DateTime<Utc>)>,
    pub paused: bool,
}

/// Filters of [`Store::list_releases`].
#[derive(Debug, Clone, Default)]
pub struct ReleaseFilter {
    pub state: Option<String>,
    pub policy: Option<String>,
    pub limit: Option<i64>,
    /// Only releases changed at or after this time, and those still pending (what one `apply`
    /// touched or left waiting), rather than the whole history.
    pub touched_since: Option<DateTime<Utc>>,
}

/// Filters of [`Store::events_where`].
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub policy: Option<String>,
    pub instance_id: Option<String>,
    pub kind: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub limit: Option<i64>,
}

/// An event to append to the audit log.
#[derive(Debug, Clone, Default)]
pub struct NewEvent {
    pub kind: &'static str,
    pub release_id: Option<ReleaseId>,
    pub batch_id: Option<BatchId>,
    pub policy: Option<String>,
    pub instance_id: Option<String>,
    pub code: Option<String>,
    pub request_id: Option<String>,
    pub client_token: Option<String>,
    pub detail: String,
}

/// The queue. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    url_for_errors: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.url_for_errors)
            .finish()
    }
}

/// Hides a password in a database URL, for messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("REDACTED"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

const ACTIVE: &str = "('pending', 'in_flight')";

impl Store {
    /// Opens (creating a SQLite file if needed) and migrates the database at `url`.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let shown = redact_url(url);
        let connect_err = |source| StoreError::Connect {
            url: shown.clone(),
            source,
        };
        let pool = if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(connect_err)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10));
            // One connection: SQLite has one writer anyway, and this keeps claims serial.
            let p = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(opts)
                .await
                .map_err(connect_err)?;
            Pool::Sqlite(p)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let opts = PgConnectOptions::from_str(url).map_err(connect_err)?;
            let p = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts)
                .await
                .map_err(connect_err)?;
            Pool::Postgres(p)
        } else {
            return Err(StoreError::Url { url: shown });
        };
        let store = Store {
            pool,
            url_for_errors: shown,
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = match &self.pool {
            Pool::Sqlite(_) => sqlx::migrate!("./migrations/sqlite"),
            Pool::Postgres(_) => sqlx::migrate!("./migrations/postgres"),
        };
        let known = migrator.iter().map(|m| m.version).max().unwrap_or_default();
        let result = with_pool!(self, p => migrator.run(p).await);
        result.map_err(|source| match source {
            sqlx::migrate::MigrateError::VersionMissing(found) => StoreError::TooNew {
                url: self.url_for_errors.clone(),
                found,
                known,
            },
            source => StoreError::Migrate {
                url: self.url_for_errors.clone(),
                source,
            },
        })
    }

    /// True for PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self.pool, Pool::Postgres(_))
    }

    /// Answers when the database does.
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_pool!(self, p => sqlx::query("SELECT 1").execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// Appends to the audit log.
    pub async fn record_event(&self, e: NewEvent, now: DateTime<Utc>) -> Result<(), StoreError> {
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            insert_events!(tx, &[e], now);
            tx.commit().await
        })?;
        Ok(())
    }

    // ---- reconcile ------------------------------------------------------------------------

    /// Records that `policy`'s tick `scheduled_for` is being reconciled by `owner`. False when
    /// some replica already took it: each tick is reconciled once.
    pub async fn begin_run(
        &self,
        policy: &str,
        scheduled_for: DateTime<Utc>,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let r = with_pool!(self, p => sqlx::query(
            "INSERT INTO policy_runs (policy, scheduled_for, owner, started_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (policy, scheduled_for) DO NOTHING",
        )
        .bind(policy)
        .bind(ms(scheduled_for))
        .bind(owner)
        .bind(ms(now))
        .execute(p)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(r == 1)
    }

    /// Closes a run with its outcome and counts.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish_run(
        &self,
        policy: &str,
        scheduled_for: DateTime<Utc>,
        outcome: &str,
        planned: i64,
        enqueued: i64,
        cancelled: i64,
        refused: i64,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        with_pool!(self, p => sqlx::query(
            "UPDATE policy_runs SET finished_at = $3, outcome = $4, planned = $5, enqueued = $6,
                    cancelled = $7, refused = $8
             WHERE policy = $1 AND scheduled_for = $2",
        )
        .bind(policy)
        .bind(ms(scheduled_for))
        .bind(ms(now))
        .bind(outcome)
        .bind(planned)
        .bind(enqueued)
        .bind(cancelled)
        .bind(refused)
        .execute(p)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    /// Every run, newest first (at most `limit`).
    pub async fn runs(&self, limit: i64) -> Result<Vec<RunRow>, StoreError> {
        let rows = with_pool!(self, p => sqlx::query_as::<_, RunRow>(
            "SELECT policy, scheduled_for, owner, started_at, finished_at, outcome, planned, enqueued,
                    cancelled, refused
             FROM policy_runs ORDER BY scheduled_for DESC, policy LIMIT $1",
        )
        .bind(limit)
        .fetch_all(p)
        .await)?;
        Ok(rows)
    }

    /// Updates when instances of `account`'s `region` were first seen Stopped, from what one
    /// listing `seen` shows: recorded the first time, kept while they stay Stopped, cleared for
    /// an instance listed in another state, and cleared for an unlisted one only when the
    /// listing could have returned it (it met every constraint the listing had, and the
    /// listing could list Stopped instances). So a stop that ended never counts towards
    /// `stopped_for`, and one policy's filtered pass never resets another policy's clock.
    pub async fn observe(
        &self,
        account: &str,
        region: &str,
        seen: &crate::inventory::Seen,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        use std::collections::{BTreeSet, HashSet};
        let known: Vec<(String, String)> = with_pool!(self, p => sqlx::query_as(
            "SELECT instance_id, seen_with FROM observations WHERE region = $1 AND account = $2",
        )
        .bind(region)
        .bind(account)
        .fetch_all(p)
        .await)?;
        let constraints: BTreeSet<&str> = seen.constraints.iter().map(String::as_str).collect();
        let stopped: HashSet<&String> = seen.stopped.iter().collect();
        let not_stopped: HashSet<&String> = seen.not_stopped.iter().collect();
        let known_ids: HashSet<&String> = known.iter().map(|(i, _)| i).collect();
        let fresh: Vec<&String> = seen
            .stopped
            .iter()
            .filter(|i| !known_ids.contains(i))
            .collect();
        let mut ended: Vec<&String> = Vec::new();
        // Known and listed Stopped again: it met this listing's constraints too.
        let mut widened: Vec<(&String, String)> = Vec::new();
        for (id, with) in &known {
            let met: BTreeSet<&str> = with.lines().filter(|l| !l.is_empty()).collect();
            if stopped.contains(id) {
                if !constraints.is_subset(&met) {
                    let all: Vec<&str> = met.union(&constraints).copied().collect();
                    widened.push((id, all.join("\n")));
                }
            } else if not_stopped.contains(id) || (seen.sees_stopped && constraints.is_subset(&met))
            {
                ended.push(id);
            }
        }
        let with_now = seen.constraints.join("\n");
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            for chunk in fresh.chunks(400) {
                let mut q = QueryBuilder::new(
                    "INSERT INTO observations (instance_id, region, first_seen_stopped_at, account, seen_with) ",
                );
                q.push_values(chunk, |mut b, id| {
                    b.push_bind((*id).clone())
                        .push_bind(region)
                        .push_bind(ms(now))
                        .push_bind(account)
                        .push_bind(with_now.clone());
                });
                q.push(" ON CONFLICT (instance_id) DO NOTHING");
                q.build().execute(&mut *tx).await?;
            }
            for (id, with) in &widened {
                sqlx::query("UPDATE observations SET seen_with = $2 WHERE instance_id = $1")
                    .bind(*id)
                    .bind(with)
                    .execute(&mut *tx)
                    .await?;
            }
            for chunk in ended.chunks(500) {
                let mut q = QueryBuilder::new("DELETE FROM observations WHERE instance_id IN (");
                let mut sep = q.separated(", ");
                for id in chunk {
                    sep.push_bind((*id).clone());
                }
                q.push(")");
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await
        })?;
        Ok(())
    }

    /// When each instance was first seen Stopped.
    pub async fn observations(&self) -> Result<HashMap<String, DateTime<Utc>>, StoreError> {
        let rows: Vec<(String, i64)> = with_pool!(self, p => sqlx::query_as(
            "SELECT instance_id, first_seen_stopped_at FROM observations",
        )
        .fetch_all(p)
        .await)?;
        Ok(rows.into_iter().map(|(i, t)| (i, from_ms(t))).collect())
    }

    /// When each of `ids` was first seen Stopped (those never seen are left out): a batch's
    /// re-check reads its own instances only.
    pub async fn observations_of(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, DateTime<Utc>>, StoreError> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(500) {
            let rows: Vec<(String, i64)> = with_pool!(self, p => {
                let mut q = QueryBuilder::new(
                    "SELECT instance_id, first_seen_stopped_at FROM observations WHERE instance_id IN (",
                );
                let mut sep = q.separated(", ");
                for id in chunk {
                    sep.push_bind(id.clone());
                }
                q.push(")");
                q.build_query_as().fetch_all(p).await
            })?;
            out.extend(rows.into_iter().map(|(i, t)| (i, from_ms(t))));
        }
        Ok(out)
    }

    /// Pending and in-flight releases, newest first.
    pub async fn active_releases(&self) -> Result<Vec<ReleaseRow>, StoreError> {
        // Filtered in the database: every pass reads this, and history only grows.
        let sql = format!(
            "{} WHERE r.state IN {ACTIVE} ORDER BY r.id DESC",
            rows::RELEASE_SELECT
        );
        let rows = with_pool!(self, p => sqlx::query_as::<_, ReleaseRow>(&sql).fetch_all(p).await)?;
        Ok(rows)
    }

    /// Queues releases. An instance that already has an active release is left alone (the
    /// partial unique index decides), and so is one already released: ECS never reuses an
    /// instance id, so a pass that listed the instance before another replica released it must
    /// not queue it again. Returns the ids of the releases created.
    pub async fn enqueue(
        &self,
        releases: &[NewRelease],
        now: DateTime<Utc>,
    ) -> Result<Vec<(ReleaseId, String)>, StoreError> {
        let mut created = Vec::new();
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            for chunk in releases.chunks(400) {
                // One statement decides and inserts: the "already released" and "held" checks
                // cannot be separated from the insert by another replica's commit in between.
                let mut q = QueryBuilder::new(
                    "INSERT INTO releases (instance_id, instance_name, region, policy, force,
                     terminate_subscription, state, not_before, reasons, created_at, updated_at,
                     account)
                     SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6,
                            'pending', v.column7, v.column8, v.column9, v.column9, v.column10
                     FROM (",
                );
                q.push_values(chunk, |mut b, r| {
                    b.push_bind(r.instance_id.clone())
                        .push_bind(r.instance_name.clone())
                        .push_bind(r.region.clone())
                        .push_bind(r.policy.clone())
                        .push_bind(r.force as i64)
                        .push_bind(r.terminate_subscription as i64)
                        .push_bind(ms(r.not_before))
                        .push_bind(r.reasons.clone())
                        .push_bind(ms(now))
                        .push_bind(r.account.clone());
                });
                q.push(") AS v WHERE NOT EXISTS (SELECT 1 FROM releases d
                          WHERE d.instance_id = v.column1 AND d.state = 'succeeded')
                     AND NOT EXISTS (SELECT 1 FROM holds h
                          WHERE h.instance_id = v.column1 AND h.policy = v.column4
                            AND (h.until IS NULL OR h.until > ");
                q.push_bind(ms(now));
                q.push(format!(
                    "))
                     ON CONFLICT (instance_id) WHERE state IN {ACTIVE} DO NOTHING
                     RETURNING id, instance_id, policy"
                ));
                let rows = q.build().fetch_all(&mut *tx).await?;
                let mut events = Vec::with_capacity(rows.len());
                for row in rows {
                    let id: ReleaseId = row.try_get(0)?;
                    let instance: String = row.try_get(1)?;
                    let policy: String = row.try_get(2)?;
                    events.push(NewEvent {
                        kind: "enqueued",
                        release_id: Some(id),
                        policy: Some(policy),
                        instance_id: Some(instance.clone()),
                        ..NewEvent::default()
                    });
                    created.push((id, instance));
                }
                insert_events!(tx, &events, now);
            }
            tx.commit().await
        })?;
        Ok(created)
    }

    /// Cancels pending releases that no batch holds yet, each with its reason. Returns how many
    /// were cancelled (a release already batched is left to the worker's re-check).
    pub async fn cancel_pending(
        &self,
        cancels: &[(ReleaseId, String)],
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let mut n = 0;
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            for (id, reason) in cancels {
                let row = sqlx::query(
                    "UPDATE releases SET state = 'cancelled', last_message = $2, updated_at = $3
                     WHERE id = $1 AND state = 'pending' AND batch_id IS NULL
                     RETURNING policy, instance_id",
                )
                .bind(id)
                .bind(reason)
                .bind(ms(now))
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(row) = row {
                    n += 1;
                    let ev = NewEvent {
                        kind: "cancelled",
                        release_id: Some(*id),
                        policy: Some(row.try_get(0)?),
                        instance_id: Some(row.try_get(1)?),
                        detail: reason.clone(),
                        ..NewEvent::default()
                    };
                    insert_events!(tx, &[ev], now);
                }
            }
            tx.commit().await
        })?;
        Ok(n)
    }

    // ---- workers --------------------------------------------------------------------------

    /// Claims the next due batch under a lease: first a stored batch whose retry is due or whose
    /// lease expired (with its token and members unchanged), else a new batch of up to
    /// `max_batch` due releases of one account, one region and one set of flags, whose token and membership
    /// are written in the same transaction, before any call. With `scope`, only that run's
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
        self.claim_skipping(owner, now, lease, max_batch, scope, &[])
            .await
    }

    /// [`Store::claim`], leaving alone the batches and releases of `skip_accounts` (accounts
    /// ECS refused as a whole a moment ago).
    pub async fn claim_skipping(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        max_batch: usize,
        scope: Option<&str>,
        skip_accounts: &[String],
    ) -> Result<Option<ClaimedBatch>, StoreError> {
        // `|a|b|`: account names are letters, digits, dashes and underscores (`_` is escaped in
        // the LIKE pattern), so one bind carries the list on both databases.
        let skip = if skip_accounts.is_empty() {
            String::new()
        } else {
            format!("|{}|", skip_accounts.join("|"))
        };
        let skip_filter = " AND ($3 = '' OR $3 NOT LIKE ('%|' || REPLACE(account, '_', '\\_') || '|%') ESCAPE '\\')";
        let lock = if self.is_postgres() {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        // `$9` is the scope (`''`: the whole queue), always bound so each query has one shape.
        let batch_scope = " AND ($9 = '' OR NOT EXISTS (SELECT 1 FROM releases m
                 WHERE m.batch_id = batches.id AND m.state = 'in_flight'
                   AND m.id NOT IN (SELECT release_id FROM scope_members WHERE scope = $9)))";
        let release_scope =
            " AND ($9 = '' OR id IN (SELECT release_id FROM scope_members WHERE scope = $9))";
        let scope = scope.unwrap_or_default();
        let until = ms(now) + lease.as_millis() as i64;
        let claimed = with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let existing: Option<BatchId> = sqlx::query_scalar(&format!(
                "SELECT id FROM batches WHERE state = 'open' AND next_attempt_at <= $1
                   AND (lease_expires_at IS NULL OR lease_expires_at <= $1){}{skip_filter}
                 ORDER BY next_attempt_at, id LIMIT 1{lock}",
                batch_scope.replace("$9", "$2")
            ))
            .bind(ms(now))
            .bind(scope)
            .bind(&skip)
            .fetch_optional(&mut *tx)
            .await?;
            let batch_id = match existing {
                Some(id) => Some(id),
                None => {
                    // `+not_before`: filter on the due time, but walk the pending releases
                    // in id order (the partial indexes of migration 0003), never sort them all.
                    let head: Option<(String, String, i64, i64)> = sqlx::query_as(&format!(
                        "SELECT account, region, force, terminate_subscription FROM releases
                         WHERE state = 'pending' AND +not_before <= $1{}{skip_filter}
                         ORDER BY id LIMIT 1{lock}",
                        release_scope.replace("$9", "$2")
                    ))
                    .bind(ms(now))
                    .bind(scope)
                    .bind(&skip)
                    .fetch_optional(&mut *tx)
                    .await?;
                    match head {
                        None => None,
                        Some((account, region, force, ts)) => {
                            let ids: Vec<ReleaseId> = sqlx::query_scalar(&format!(
                                "SELECT id FROM releases
                                 WHERE state = 'pending' AND +not_before <= $1 AND region = $2
                                   AND force = $3 AND terminate_subscription = $4
                                   AND account = $6{}
                                 ORDER BY id LIMIT $5{lock}",
                                release_scope.replace("$9", "$7")
                            ))
                            .bind(ms(now))
                            .bind(&region)
                            .bind(force)
                            .bind(ts)
                            .bind(max_batch as i64)
                            .bind(&account)
                            .bind(scope)
                            .fetch_all(&mut *tx)
                            .await?;
                            if ids.is_empty() {
                                None
                            } else {
                                let token = new_client_token();
                                let id = new_batch!(tx, &account, &region, force, ts, &token, &ids, now);
                                insert_events!(tx, &[NewEvent {
                                    kind: "batched",
                                    batch_id: Some(id),
                                    client_token: Some(token),
                                    detail: format!("{} releases in {region}", ids.len()),
                                    ..NewEvent::default()
                                }], now);
                                Some(id)
                            }
                        }
                    }
                }
            };
            let claimed = match batch_id {
                None => None,
                Some(id) => {
                    let b = sqlx::query_as::<_, rows::BatchRow>(
                        "UPDATE batches SET lease_owner = $2, lease_expires_at = $3,
                                claims = claims + 1, updated_at = $4
                         WHERE id = $1
                         RETURNING id, account, region, force, terminate_subscription, client_token,
                                   attempts, tries, claims, last_code, uncertain",
                    )
                    .bind(id)
                    .bind(owner)
                    .bind(until)
                    .bind(ms(now))
                    .fetch_one(&mut *tx)
                    .await?;
                    let members = sqlx::query_as::<_, BatchMember>(
                        "SELECT id AS release_id, instance_id, instance_name, policy FROM releases
                         WHERE batch_id = $1 AND state = 'in_flight' ORDER BY id",
                    )
                    .bind(id)
                    .fetch_all(&mut *tx)
                    .await?;
                    Some(b.into_claimed(owner, members))
                }
            };
            tx.commit().await?;
            Ok::<_, sqlx::Error>(claimed)
        })?;
        Ok(claimed)
    }

    /// Extends a lease while a call is in flight. False when the lease was lost.
    pub async fn renew_lease(
        &self,
        fence: &Fence,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let n = with_pool!(self, p => sqlx::query(
            "UPDATE batches SET lease_expires_at = $4, updated_at = $5
             WHERE id = $1 AND lease_owner = $2 AND claims = $3 AND state = 'open'",
        )
        .bind(fence.batch_id)
        .bind(&fence.owner)
        .bind(fence.claims)
        .bind(ms(now) + lease.as_millis() as i64)
        .bind(ms(now))
        .execute(p)
        .await
        .map(|r| r.rows_affected()))?;
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
        self.begin_attempt_for(fence, settled, token, None, now)
            .await
    }

    /// [`Store::begin_attempt`], the last word before a call is sent: refused (false) when the
    /// lease was lost or has expired, or when releases are paused, all in the same write that
    /// counts the attempt. With `lease`, the lease is extended from `now`, so the call starts
    /// with a whole lease ahead of it.
    pub async fn begin_attempt_for(
        &self,
        fence: &Fence,
        settled: &[(BatchMember, MemberOutcome)],
        token: &str,
        lease: Option<Duration>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let extend: Option<i64> = lease.map(|l| ms(now) + l.as_millis() as i64);
        let ok = with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let n = sqlx::query(
                "UPDATE batches SET attempts = attempts + 1, tries = tries + 1,
                        uncertain = CASE WHEN attempts > 0 AND last_code IS NULL THEN 1 ELSE uncertain END,
                        last_code = NULL, updated_at = $4,
                        lease_expires_at = COALESCE($5, lease_expires_at)
                 WHERE id = $1 AND lease_owner = $2 AND claims = $3 AND state = 'open'
                   AND lease_expires_at > $4
                   AND NOT EXISTS (SELECT 1 FROM settings WHERE key = 'paused' AND value = 'true')",
            )
            .bind(fence.batch_id)
            .bind(&fence.owner)
            .bind(fence.claims)
            .bind(ms(now))
            .bind(extend)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n != 1 {
                tx.rollback().await?;
                false
            } else {
                settle!(tx, fence.batch_id, settled, now);
                sqlx::query(
                    "UPDATE releases SET attempts = attempts + 1, updated_at = $2
                     WHERE batch_id = $1 AND state = 'in_flight'",
                )
                .bind(fence.batch_id)
                .bind(ms(now))
                .execute(&mut *tx)
                .await?;
                insert_events!(tx, &[NewEvent {
                    kind: "call_sent",
                    batch_id: Some(fence.batch_id),
                    client_token: Some(token.to_string()),
                    ..NewEvent::default()
                }], now);
                tx.commit().await?;
                true
            }
        });
        Ok(ok)
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
        let ok = with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let batch: Option<(String, String, i64, i64)> = sqlx::query_as(
                "UPDATE batches SET state = $4, last_code = $5, lease_owner = NULL,
                        lease_expires_at = NULL, updated_at = $6
                 WHERE id = $1 AND lease_owner = $2 AND claims = $3 AND state = 'open'
                 RETURNING account, region, force, terminate_subscription",
            )
            .bind(fence.batch_id)
            .bind(&fence.owner)
            .bind(fence.claims)
            .bind(state.as_str())
            .bind(code)
            .bind(ms(now))
            .fetch_optional(&mut *tx)
            .await?;
            match batch {
                None => {
                    tx.rollback().await?;
                    false
                }
                Some((account, region, force, ts)) => {
                    settle!(tx, fence.batch_id, settled, now);
                    for group in regroup.iter().filter(|g| !g.is_empty()) {
                        let token = new_client_token();
                        let id = new_batch!(tx, &account, &region, force, ts, &token, group, now);
                        insert_events!(tx, &[NewEvent {
                            kind: "split",
                            batch_id: Some(id),
                            client_token: Some(token),
                            code: code.map(str::to_string),
                            detail: format!("{} releases from batch {}", group.len(), fence.batch_id),
                            ..NewEvent::default()
                        }], now);
                    }
                    tx.commit().await?;
                    true
                }
            }
        });
        Ok(ok)
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
        self.retry_later_as(fence, code, message, at, recheck_failed, false, now)
            .await
    }

    /// [`Store::retry_later`], recording whether the call it follows may have taken effect
    /// (`uncertain`, sticky for the batch).
    #[allow(clippy::too_many_arguments)]
    pub async fn retry_later_as(
        &self,
        fence: &Fence,
        code: &str,
        message: &str,
        at: DateTime<Utc>,
        recheck_failed: bool,
        uncertain: bool,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let ok = with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let n = sqlx::query(
                "UPDATE batches SET next_attempt_at = $4,
                        last_code = CASE WHEN $7 = 1 AND attempts > 0 THEN last_code ELSE $5 END,
                        tries = tries + $7, uncertain = CASE WHEN $8 = 1 THEN 1 ELSE uncertain END,
                        lease_owner = NULL, lease_expires_at = NULL,
                        updated_at = $6
                 WHERE id = $1 AND lease_owner = $2 AND claims = $3 AND state = 'open'",
            )
            .bind(fence.batch_id)
            .bind(&fence.owner)
            .bind(fence.claims)
            .bind(ms(at))
            .bind(code)
            .bind(ms(now))
            .bind(i64::from(recheck_failed))
            .bind(i64::from(uncertain))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 1 {
                sqlx::query(
                    "UPDATE releases SET last_code = $2, last_message = $3, updated_at = $4
                     WHERE batch_id = $1 AND state = 'in_flight'",
                )
                .bind(fence.batch_id)
                .bind(code)
                .bind(message)
                .bind(ms(now))
                .execute(&mut *tx)
                .await?;
                insert_events!(tx, &[NewEvent {
                    kind: "retry_scheduled",
                    batch_id: Some(fence.batch_id),
                    code: Some(code.to_string()),
                    detail: format!("next attempt at {}", at.to_rfc3339()),
                    ..NewEvent::default()
                }], now);
                tx.commit().await?;
            } else {
                tx.rollback().await?;
            }
            n == 1
        });
        Ok(ok)
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
        let (pending, batches): (Option<i64>, Option<i64>) = with_pool!(self, p => {
            let pending: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(not_before) FROM releases WHERE state = 'pending' AND not_before <= $1
                   AND ($2 = '' OR id IN (SELECT release_id FROM scope_members WHERE scope = $2))",
            )
            .bind(ms(now))
            .bind(scope)
            .fetch_one(p)
            .await?;
            let batches: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(CASE WHEN lease_expires_at IS NOT NULL AND lease_expires_at > next_attempt_at
                                 THEN lease_expires_at ELSE next_attempt_at END)
                 FROM batches WHERE state = 'open'
                   AND ($1 = '' OR NOT EXISTS (SELECT 1 FROM releases m
                        WHERE m.batch_id = batches.id AND m.state = 'in_flight'
                          AND m.id NOT IN (SELECT release_id FROM scope_members WHERE scope = $1)))",
            )
            .bind(scope)
            .fetch_one(p)
            .await?;
            Ok::<_, sqlx::Error>((pending, batches))
        })?;
        Ok(match (pending, batches) {
            (Some(_), _) => Some(now),
            (None, Some(b)) => Some(from_ms(b).max(now)),
            (None, None) => None,
        })
    }

    // ---- operators ------------------------------------------------------------------------

    /// Releases, newest first, with their batch's ClientToken.
    pub async fn list_releases(&self, f: &ReleaseFilter) -> Result<Vec<ReleaseRow>, StoreError> {
        let rows = with_pool!(self, p => {
            let mut q = QueryBuilder::new(rows::RELEASE_SELECT);
            q.push(" WHERE 1 = 1");
            if let Some(s) = &f.state {
                q.push(" AND r.state = ").push_bind(s.clone());
            }
            if let Some(pol) = &f.policy {
                q.push(" AND r.policy = ").push_bind(pol.clone());
            }
            if let Some(t) = f.touched_since {
                q.push(" AND (r.updated_at >= ").push_bind(ms(t));
                q.push(" OR r.state = 'pending')");
            }
            q.push(" ORDER BY r.id DESC");
            if let Some(l) = f.limit {
                q.push(" LIMIT ").push_bind(l);
            }
            q.build_query_as::<ReleaseRow>().fetch_all(p).await
        })?;
        Ok(rows)
    }

    /// One release.
    pub async fn release(&self, id: ReleaseId) -> Result<ReleaseRow, StoreError> {
        let row = with_pool!(self, p => {
            let mut q = QueryBuilder::new(rows::RELEASE_SELECT);
            q.push(" WHERE r.id = ").push_bind(id);
            q.build_query_as::<ReleaseRow>().fetch_optional(p).await
        })?;
        row.ok_or(StoreError::NoSuchRelease(id))
    }

    /// Puts a failed, cancelled or vanished release back in the queue, and lifts the hold or
    /// quarantine that kept its instance out of its policy. What was left of its grace period
    /// stays: it is due at its old `not_before`, or now if that has passed.
    pub async fn retry_release(
        &self,
        id: ReleaseId,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let r = self.release(id).await?;
        if !matches!(
            r.state,
            ReleaseState::Failed | ReleaseState::Cancelled | ReleaseState::Vanished
        ) {
            return Err(StoreError::WrongState {
                id,
                state: r.state.to_string(),
                what: "only failed, cancelled or vanished releases can be retried",
            });
        }
        let res = with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let n = sqlx::query(
                "UPDATE releases SET state = 'pending', batch_id = NULL, attempts = 0,
                        not_before = CASE WHEN not_before > $2 THEN not_before ELSE $2 END,
                        updated_at = $2
                 WHERE id = $1 AND state IN ('failed', 'cancelled', 'vanished')",
            )
            .bind(id)
            .bind(ms(now))
            .execute(&mut *tx)
            .await;
            let n = match n {
                Ok(_) => sqlx::query("DELETE FROM holds WHERE instance_id = $1 AND policy = $2")
                    .bind(&r.instance_id)
                    .bind(&r.policy)
                    .execute(&mut *tx)
                    .await,
                Err(e) => Err(e),
            };
            match n {
                Ok(_) => {
                    insert_events!(tx, &[NewEvent {
                        kind: "retried",
                        release_id: Some(id),
                        policy: Some(r.policy.clone()),
                        instance_id: Some(r.instance_id.clone()),
                        detail: format!("by {by}"),
                        ..NewEvent::default()
                    }], now);
                    tx.commit().await
                }
                Err(e) => Err(e),
            }
        });
        match res {
            Ok(()) => Ok(()),
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                Err(StoreError::WrongState {
                    id,
                    state: r.state.to_string(),
                    what: "its instance already has an active release",
                })
            }
            Err(e) => Err(e.into()),
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
        let n = with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let n = sqlx::query(
                "UPDATE releases SET state = 'cancelled', last_message = $2, updated_at = $3
                 WHERE id = $1 AND state = 'pending' AND batch_id IS NULL",
            )
            .bind(id)
            .bind(&why)
            .bind(ms(now))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 1 {
                sqlx::query(
                    "INSERT INTO holds (instance_id, policy, kind, until, by_whom, reason, repeats, created_at)
                     VALUES ($1, $2, 'hold', $3, $4, $5, 1, $6)
                     ON CONFLICT (instance_id, policy, kind) DO UPDATE SET until = excluded.until,
                         by_whom = excluded.by_whom, reason = excluded.reason,
                         created_at = excluded.created_at",
                )
                .bind(&r.instance_id)
                .bind(&r.policy)
                .bind(until.map(ms))
                .bind(by)
                .bind(reason)
                .bind(ms(now))
                .execute(&mut *tx)
                .await?;
                insert_events!(tx, &[NewEvent {
                    kind: "cancelled",
                    release_id: Some(id),
                    policy: Some(r.policy.clone()),
                    instance_id: Some(r.instance_id.clone()),
                    detail: match until {
                        Some(t) => format!("{why}; held until {}", t.to_rfc3339()),
                        None => format!("{why}; held until `queue retry`"),
                    },
                    ..NewEvent::default()
                }], now);
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(n)
        })?;
        if n == 0 {
            return Err(StoreError::WrongState {
                id,
                state: r.state.to_string(),
                what: "only pending releases not yet in a batch can be cancelled",
            });
        }
        Ok(())
    }

    /// The audit log, newest first (at most `limit`).
    pub async fn events(&self, limit: i64) -> Result<Vec<EventRow>, StoreError> {
        self.events_where(&EventFilter {
            limit: Some(limit),
            ..EventFilter::default()
        })
        .await
    }

    /// The audit log, newest first, narrowed by `f`.
    pub async fn events_where(&self, f: &EventFilter) -> Result<Vec<EventRow>, StoreError> {
        let rows = with_pool!(self, p => {
            let mut q = QueryBuilder::new(
                "SELECT id, at, kind, release_id, batch_id, policy, instance_id, code, request_id,
                        client_token, detail
                 FROM events WHERE 1 = 1",
            );
            if let Some(v) = &f.policy {
                q.push(" AND policy = ").push_bind(v.clone());
            }
            if let Some(v) = &f.instance_id {
                q.push(" AND instance_id = ").push_bind(v.clone());
            }
            if let Some(v) = &f.kind {
                q.push(" AND kind = ").push_bind(v.clone());
            }
            if let Some(t) = f.since {
                q.push(" AND at >= ").push_bind(ms(t));
            }
            q.push(" ORDER BY id DESC");
            if let Some(l) = f.limit {
                q.push(" LIMIT ").push_bind(l);
            }
            q.build_query_as::<EventRow>().fetch_all(p).await
        })?;
        Ok(rows)
    }

    /// Releases by state.
    pub async fn counts(&self) -> Result<StateCounts, StoreError> {
        let rows: Vec<(String, i64)> = with_pool!(self, p => sqlx::query_as(
            "SELECT state, COUNT(*) FROM releases GROUP BY state",
        )
        .fetch_all(p)
        .await)?;
        let mut c = StateCounts::default();
        for (s, n) in rows {
            match s.as_str() {
                "pending" => c.pending = n,
                "in_flight" => c.in_flight = n,
                "succeeded" => c.succeeded = n,
                "failed" => c.failed = n,
                "cancelled" => c.cancelled = n,
                "vanished" => c.vanished = n,
                _ => {}
            }
        }
        Ok(c)
    }

    /// The numbers the metrics endpoint reports, read in one go.
    pub async fn metrics_snapshot(
        &self,
        now: DateTime<Utc>,
    ) -> Result<MetricsSnapshot, StoreError> {
        let snap = with_pool!(self, p => {
            let by_policy_state: Vec<(String, String, i64)> = sqlx::query_as(
                "SELECT policy, state, COUNT(*) FROM releases GROUP BY policy, state ORDER BY policy, state",
            )
            .fetch_all(p)
            .await?;
            let oldest: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(not_before) FROM releases WHERE state = 'pending' AND not_before <= $1",
            )
            .bind(ms(now))
            .fetch_one(p)
            .await?;
            let last: Vec<(String, i64)> = sqlx::query_as(
                "SELECT policy, MAX(scheduled_for) FROM policy_runs WHERE outcome IN ('ok', 'dry_run')
                 GROUP BY policy ORDER BY policy",
            )
            .fetch_all(p)
            .await?;
            let paused: Option<String> = sqlx::query_scalar("SELECT value FROM settings WHERE key = 'paused'")
                .fetch_optional(p)
                .await?;
            Ok::<_, sqlx::Error>(MetricsSnapshot {
                queue_depth: by_policy_state
                    .iter()
                    .filter(|(_, s, _)| s == "pending" || s == "in_flight")
                    .map(|(_, _, n)| n)
                    .sum(),
                by_policy_state,
                oldest_due_age_seconds: oldest
                    .map(|t| ((ms(now) - t).max(0) as f64) / 1000.0)
                    .unwrap_or(0.0),
                last_success: last.into_iter().map(|(p, t)| (p, from_ms(t))).collect(),
                paused: paused.as_deref() == Some("true"),
            })
        })?;
        Ok(snap)
    }

    /// Reads a setting.
    pub async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let v = with_pool!(self, p => sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(p)
            .await)?;
        Ok(v)
    }

    /// Writes a setting.
    pub async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        with_pool!(self, p => sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(p)
        .await
        .map(|_| ()))?;
        Ok(())
    }
}

/// A fresh ClientToken: 32 hex characters, well within ECS's 64 ASCII.
pub fn new_client_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
