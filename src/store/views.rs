//! What operators, planners and metrics read of the queue: listings, counts, the snapshot.
//!
//! Release listings, one release, the active releases, counts by state and the metrics snapshot.
//! Nothing here writes.

use chrono::{DateTime, Utc};

use super::db::Sql;
use super::queue::ACTIVE;
use super::rows::{RawRelease, RELEASE_COLUMNS, RELEASE_SELECT};
use super::{
    from_ms, ms, settings, ReleaseId, ReleaseRow, ReleaseState, RunStatus, Store, StoreError,
};

/// Counts of releases by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StateCounts {
    pub pending: i64,
    pub snapshotting: i64,
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
    pub by_policy_state: Vec<(String, ReleaseState, i64)>,
    pub queue_depth: i64,
    pub oldest_due_age_seconds: f64,
    /// (policy, scheduled time of its last successful tick)
    pub last_success: Vec<(String, DateTime<Utc>)>,
    /// Policy → the scheduled time of its first tick in the store, whatever its outcome: when
    /// it was first tried, by any process or replica.
    pub first_run: std::collections::HashMap<String, DateTime<Utc>>,
    pub paused: bool,
}

/// Filters of [`Store::list_releases`].
#[derive(Debug, Clone, Default)]
pub struct ReleaseFilter {
    /// A [`ReleaseState`] name (`failed`); parse it first to tell a typo from an empty list.
    pub state: Option<String>,
    pub policy: Option<String>,
    pub limit: Option<i64>,
    /// Only releases changed at or after this time, and those still pending (what one `apply`
    /// touched or left waiting), rather than the whole history.
    pub touched_since: Option<DateTime<Utc>>,
}

/// Which way a listing runs, by release id.
#[derive(Debug, Clone, Copy)]
enum Order {
    NewestFirst,
    OldestFirst,
}

/// A stored state name as its [`ReleaseState`]: the CHECK constraint allows no other.
fn state(s: &str) -> Result<ReleaseState, StoreError> {
    s.parse()
        .map_err(|e: String| StoreError::Db(sqlx::Error::Decode(e.into())))
}

impl Store {
    /// Releases, newest first, with their batch's ClientToken.
    pub async fn list_releases(&self, f: &ReleaseFilter) -> Result<Vec<ReleaseRow>, StoreError> {
        let mut q = Sql::new("1 = 1");
        if let Some(s) = &f.state {
            q.push(" AND (CASE WHEN r.state = 'pending' AND r.snapshot_stage = 'snapshotting' THEN 'snapshotting' ELSE r.state END) = ").push_bind(s);
        }
        if let Some(pol) = &f.policy {
            q.push(" AND r.policy = ").push_bind(pol);
        }
        if let Some(t) = f.touched_since {
            q.push(" AND (r.updated_at >= ").push_bind(ms(t));
            q.push(" OR r.state = 'pending')");
        }
        self.releases_where(q, Order::NewestFirst, f.limit).await
    }

    /// One release.
    pub async fn release(&self, id: ReleaseId) -> Result<ReleaseRow, StoreError> {
        let mut q = Sql::new(RELEASE_SELECT);
        q.push(" WHERE r.id = ").push_bind(id);
        let row: Option<ReleaseRow> = self.pool.fetch_optional(q).await?;
        row.ok_or(StoreError::NoSuchRelease(id))
    }

    /// Pending releases (not yet batched or snapshotting) of policies other than `loaded`: those
    /// of a policy no longer loaded, oldest first.
    pub async fn pending_outside(&self, loaded: &[String]) -> Result<Vec<ReleaseRow>, StoreError> {
        let mut q = Sql::new("r.state = 'pending'");
        if !loaded.is_empty() {
            q.push(" AND r.policy NOT IN ")
                .push_list(loaded.iter().cloned());
        }
        self.releases_where(q, Order::OldestFirst, None).await
    }

    /// Pending and in-flight releases, newest first.
    pub async fn active_releases(&self) -> Result<Vec<ReleaseRow>, StoreError> {
        // Filtered in the database: every pass reads this, and history only grows.
        let q = Sql::new(format!("r.state IN {ACTIVE}"));
        self.releases_where(q, Order::NewestFirst, None).await
    }

    /// Pending and in-flight releases queued with a grace (due later than they were queued),
    /// newest first: the only ones an instance may carry a mark for. Usually none, where the
    /// active releases may be a whole fleet's.
    pub async fn waiting_releases(&self) -> Result<Vec<ReleaseRow>, StoreError> {
        let q = Sql::new(format!(
            "r.state IN {ACTIVE} AND r.not_before > r.created_at"
        ));
        self.releases_where(q, Order::NewestFirst, None).await
    }

    /// The releases `filter` (a condition on `r`, the release, and `b`, its batch) selects, in
    /// `order` of id, at most `limit`: a page at a time, each page one row (see
    /// `Pool::fetch_json_pages`), since sqlx decoding a row per release copied each of its 23
    /// columns, 16 µs a release. A release that changes meanwhile is read as it was when its
    /// page was, and one queued after its page was read is not read: to a pass reading the
    /// active releases, as if it had been queued after the read (and queueing its instance again
    /// is refused by the one-active-release index).
    async fn releases_where(
        &self,
        filter: Sql,
        order: Order,
        limit: Option<i64>,
    ) -> Result<Vec<ReleaseRow>, StoreError> {
        let (cmp, dir) = match order {
            Order::NewestFirst => ("<", "DESC"),
            Order::OldestFirst => (">", "ASC"),
        };
        self.pool
            .fetch_json_pages(
                RELEASE_COLUMNS,
                &format!("id {dir}"),
                limit,
                |r: &RawRelease| r.id,
                |after, n| {
                    let mut q = Sql::new(format!("{RELEASE_SELECT} WHERE ("));
                    q.append(filter.clone());
                    q.push(")");
                    if let Some(id) = after {
                        q.push(&format!(" AND r.id {cmp} ")).push_bind(*id);
                    }
                    q.push(&format!(" ORDER BY r.id {dir} LIMIT ")).push_bind(n);
                    q
                },
                RawRelease::decoded,
            )
            .await
    }

    /// Releases by state.
    pub async fn counts(&self) -> Result<StateCounts, StoreError> {
        let rows: Vec<(String, i64)> = self
            .pool
            .fetch_all(Sql::new(
                "SELECT CASE WHEN state = 'pending' AND snapshot_stage = 'snapshotting'
                        THEN 'snapshotting' ELSE state END AS shown, COUNT(*)
                 FROM releases GROUP BY shown",
            ))
            .await?;
        let mut c = StateCounts::default();
        for (s, n) in rows {
            let count = match state(&s)? {
                ReleaseState::Pending => &mut c.pending,
                ReleaseState::Snapshotting => &mut c.snapshotting,
                ReleaseState::InFlight => &mut c.in_flight,
                ReleaseState::Succeeded => &mut c.succeeded,
                ReleaseState::Failed => &mut c.failed,
                ReleaseState::Cancelled => &mut c.cancelled,
                ReleaseState::Vanished => &mut c.vanished,
            };
            *count = n;
        }
        Ok(c)
    }

    /// The numbers the metrics endpoint reports, read in one go.
    pub async fn metrics_snapshot(
        &self,
        now: DateTime<Utc>,
    ) -> Result<MetricsSnapshot, StoreError> {
        let rows: Vec<(String, String, i64)> = self
            .pool
            .fetch_all(Sql::new(
                "SELECT policy, CASE WHEN state = 'pending' AND snapshot_stage = 'snapshotting'
                                     THEN 'snapshotting' ELSE state END AS shown, COUNT(*)
                 FROM releases GROUP BY policy, shown ORDER BY policy, shown",
            ))
            .await?;
        let by_policy_state = rows
            .into_iter()
            .map(|(p, s, n)| Ok((p, state(&s)?, n)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let (oldest,): (Option<i64>,) = self
            .pool
            .fetch_one(
                Sql::new(
                    "SELECT MIN(not_before) FROM releases WHERE state = 'pending' AND not_before <= $1",
                )
                .bind(ms(now)),
            )
            .await?;
        let runs: Vec<(String, i64, Option<i64>)> = self
            .pool
            .fetch_all(
                Sql::new(
                    "SELECT policy, MIN(scheduled_for),
                            MAX(CASE WHEN outcome IN ($1, $2) THEN scheduled_for END)
                     FROM policy_runs GROUP BY policy ORDER BY policy",
                )
                .bind(RunStatus::Ok.as_str())
                .bind(RunStatus::DryRun.as_str()),
            )
            .await?;
        let paused = settings::is_paused(&self.pool).await?;
        Ok(MetricsSnapshot {
            queue_depth: by_policy_state
                .iter()
                .filter(|(_, s, _)| s.is_active())
                .map(|(_, _, n)| n)
                .sum(),
            by_policy_state,
            oldest_due_age_seconds: oldest
                .map(|t| ((ms(now) - t).max(0) as f64) / 1000.0)
                .unwrap_or(0.0),
            last_success: runs
                .iter()
                .filter_map(|(p, _, t)| Some((p.clone(), from_ms((*t)?))))
                .collect(),
            first_run: runs
                .into_iter()
                .map(|(p, first, _)| (p, from_ms(first)))
                .collect(),
            paused,
        })
    }
}
