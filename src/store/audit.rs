//! The audit log: appending events and reading them back.
//!
//! Events are appended inside the write they record (or on their own), and read back newest
//! first, for `history` and the API; a release's success is read with the saving it was
//! released with (its release row keeps it, migration 0005).

use chrono::{DateTime, Utc};

use super::db::{Sql, Tx};
use super::{ms, BatchId, EventRow, ReleaseId, Store, StoreError};

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

/// Every kind of event the log records (`history --kind`).
pub const EVENT_KINDS: &[&str] = &[
    "batched",
    "call_sent",
    "cancelled",
    "enqueued",
    "exempted",
    "exemption_removed",
    "failed",
    "paused",
    "refused",
    "resumed",
    "retried",
    "retry_scheduled",
    "run_failed",
    "snapshotted",
    "split",
    "succeeded",
    "vanished",
];

/// Filters of [`Store::events_where`].
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub policy: Option<String>,
    pub instance_id: Option<String>,
    pub kind: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub limit: Option<i64>,
}

/// Appends `events`, all at `now`, inside `tx`: the log and the change it records are
/// committed together.
pub(super) async fn insert_events(
    tx: &mut Tx,
    events: &[NewEvent],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    for q in events_insert(events, now) {
        tx.execute(q).await?;
    }
    Ok(())
}

/// The statements that append `events`, all at `now`, 400 to a statement; each ends with a
/// `WHERE` clause that a [`super::chain::Chain`] may extend.
pub(super) fn events_insert(events: &[NewEvent], now: DateTime<Utc>) -> Vec<Sql> {
    events
        .chunks(400)
        .map(|chunk| {
            let mut q = Sql::new(
                "INSERT INTO events (at, kind, release_id, batch_id, policy, instance_id, code,
                 request_id, client_token, detail) SELECT * FROM (",
            );
            q.push_values(chunk, |e| {
                [
                    ms(now).into(),
                    e.kind.into(),
                    e.release_id.into(),
                    e.batch_id.into(),
                    e.policy.as_deref().into(),
                    e.instance_id.as_deref().into(),
                    e.code.as_deref().into(),
                    e.request_id.as_deref().into(),
                    e.client_token.as_deref().into(),
                    e.detail.as_str().into(),
                ]
            });
            q.push(") AS v WHERE 1 = 1");
            q
        })
        .collect()
}

/// Appends one event inside `tx`.
pub(super) async fn insert_event(
    tx: &mut Tx,
    event: NewEvent,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    insert_events(tx, &[event], now).await
}

impl Store {
    /// Appends to the audit log.
    pub async fn record_event(&self, e: NewEvent, now: DateTime<Utc>) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        insert_event(&mut tx, e, now).await?;
        tx.commit().await
    }

    /// The audit log, newest first (at most `limit`).
    pub async fn events(&self, limit: i64) -> Result<Vec<EventRow>, StoreError> {
        self.events_where(&EventFilter {
            limit: Some(limit),
            ..EventFilter::default()
        })
        .await
    }

    /// The audit log, newest first, narrowed by `f`. A release's success carries the saving
    /// it was released with.
    pub async fn events_where(&self, f: &EventFilter) -> Result<Vec<EventRow>, StoreError> {
        let mut q = Sql::new(
            "SELECT e.id, e.at, e.kind, e.release_id, e.batch_id, e.policy, e.instance_id, e.code,
                    e.request_id, e.client_token, e.detail, r.saving_basis, r.saving_minor,
                    r.saving_currency, r.renewal_minor
             FROM events e
             LEFT JOIN releases r ON r.id = e.release_id AND e.kind = 'succeeded'
             WHERE 1 = 1",
        );
        if let Some(v) = &f.policy {
            q.push(" AND e.policy = ").push_bind(v);
        }
        if let Some(v) = &f.instance_id {
            q.push(" AND e.instance_id = ").push_bind(v);
        }
        if let Some(v) = &f.kind {
            q.push(" AND e.kind = ").push_bind(v);
        }
        if let Some(t) = f.since {
            q.push(" AND e.at >= ").push_bind(ms(t));
        }
        q.push(" ORDER BY e.id DESC");
        if let Some(l) = f.limit {
            q.push(" LIMIT ").push_bind(l);
        }
        self.pool.fetch_all(q).await
    }

    /// The policies the log names, each once and sorted: what a `history --policy` that
    /// matched nothing could have meant.
    pub async fn event_policies(&self) -> Result<Vec<String>, StoreError> {
        let policies: Vec<(String,)> = self
            .pool
            .fetch_all(Sql::new(
                "SELECT DISTINCT policy FROM events WHERE policy IS NOT NULL ORDER BY policy",
            ))
            .await?;
        Ok(policies.into_iter().map(|(p,)| p).collect())
    }
}

/// An operator action's detail: `by alice@host (cli)`, with `: reason` when one was given.
pub(super) fn who_and_why(by: &str, reason: &str) -> String {
    match reason.trim() {
        "" => format!("by {by}"),
        why => format!("by {by}: {why}"),
    }
}
