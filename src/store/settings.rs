//! Settings shared by every replica and command: the pause, the database's id, keyed values.
//!
//! The pause (kill switch) is kept with who paused and why. Its keys are spelled here only;
//! other modules ask [`paused_sql`] or [`Store::pause_state`].

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::audit::insert_event;
use super::db::{Pool, Sql};
use super::{NewEvent, Store, StoreError};

/// The settings keys of the pause. `paused` is [`TRUE`] or `false`.
const PAUSED: &str = "paused";
const PAUSED_BY: &str = "paused_by";
const PAUSED_REASON: &str = "paused_reason";
const PAUSED_AT: &str = "paused_at";
const TRUE: &str = "true";
const DATABASE_ID: &str = "database_id";

/// Who paused releases, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PauseInfo {
    pub by: String,
    pub reason: String,
    #[serde(with = "crate::timefmt::option")]
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

/// Appends to `q` a condition that holds while releases are paused, for a write that must be
/// refused in the same statement that would make it (see [`Store::begin_attempt_for`]).
pub(super) fn paused_sql(q: &mut Sql) -> &mut Sql {
    q.push("EXISTS (SELECT 1 FROM settings WHERE key = ")
        .push_bind(PAUSED)
        .push(" AND value = ")
        .push_bind(TRUE)
        .push(")")
}

/// Writes `key`'s value, replacing the one before.
fn upsert(key: &str, value: &str) -> Sql {
    Sql::new(
        "INSERT INTO settings (key, value) VALUES ($1, $2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(key)
    .bind(value)
}

/// Reads the settings of [`PAUSE_KEYS`] as (key, value) rows.
fn pause_sql() -> Sql {
    Sql::new("SELECT key, value FROM settings WHERE key IN ($1, $2, $3, $4)")
        .bind(PAUSED)
        .bind(PAUSED_BY)
        .bind(PAUSED_REASON)
        .bind(PAUSED_AT)
}

/// What [`Store::before_claim`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeforeClaim {
    /// `Some` while releases are paused.
    pub paused: Option<PauseInfo>,
    /// Some pending release waits for its snapshots (see [`Store::claim_snapshot_stage`]).
    pub snapshots_waiting: bool,
    /// The digests of the policy sets the running replicas run (`replicas`).
    pub live_policy_sets: Vec<String>,
}

/// Whether releases are paused, in one read.
pub(super) async fn is_paused(pool: &Pool) -> Result<bool, StoreError> {
    let v: Option<(String,)> = pool
        .fetch_optional(Sql::new("SELECT value FROM settings WHERE key = $1").bind(PAUSED))
        .await?;
    Ok(v.is_some_and(|(v,)| v == TRUE))
}

/// The settings' keys that tell whether releases are paused, by whom, why and since when.
pub(super) const PAUSE_KEYS: [&str; 4] = [PAUSED, PAUSED_BY, PAUSED_REASON, PAUSED_AT];

/// The pause that `rows` (key, value) of [`PAUSE_KEYS`] describe; `None` when not paused.
pub(super) fn pause_from(rows: &[(String, String)]) -> Option<PauseInfo> {
    let get = |k: &str| {
        rows.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    if get(PAUSED).as_deref() != Some(TRUE) {
        return None;
    }
    Some(PauseInfo {
        by: get(PAUSED_BY).unwrap_or_else(|| "an unknown operator".into()),
        reason: get(PAUSED_REASON).unwrap_or_default(),
        at: get(PAUSED_AT)
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc)),
    })
}

impl Store {
    /// Reads a setting.
    pub async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let v: Option<(String,)> = self
            .pool
            .fetch_optional(Sql::new("SELECT value FROM settings WHERE key = $1").bind(key))
            .await?;
        Ok(v.map(|(v,)| v))
    }

    /// Writes a setting.
    pub async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.pool.execute(upsert(key, value)).await?;
        Ok(())
    }

    /// Pauses releases on every replica and command; recorded in the audit log with who and why.
    /// A pause already in force is kept as it is, with its own who, why and since when (so the
    /// alert on a long pause cannot be put off by pausing again), and returned; `None` when
    /// this call paused.
    pub async fn pause(
        &self,
        by: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<PauseInfo>, StoreError> {
        // One transaction whose first write decides: the flag is set only where it was not
        // (an upsert's WHERE, re-read under the row's lock), so of pauses made at the same
        // moment exactly one makes the pause, and the others read it.
        let mut tx = self.pool.begin().await?;
        let made: Vec<(String,)> = tx
            .fetch_all(
                Sql::new(
                    "INSERT INTO settings (key, value) VALUES ($1, $2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value
                     WHERE settings.value <> excluded.value
                     RETURNING key",
                )
                .bind(PAUSED)
                .bind(TRUE),
            )
            .await?;
        if made.is_empty() {
            let rows: Vec<(String, String)> = tx.fetch_all(pause_sql()).await?;
            tx.rollback().await?;
            return Ok(pause_from(&rows));
        }
        for (k, v) in [
            (PAUSED_BY, by.to_string()),
            (PAUSED_REASON, reason.to_string()),
            (PAUSED_AT, now.to_rfc3339()),
        ] {
            tx.execute(upsert(k, &v)).await?;
        }
        insert_event(
            &mut tx,
            NewEvent {
                kind: "paused",
                detail: super::audit::who_and_why(by, reason),
                ..NewEvent::default()
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(None)
    }

    /// Lifts the pause; recorded in the audit log with who and why (`reason` may be empty).
    pub async fn resume(
        &self,
        by: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.set_setting(PAUSED, "false").await?;
        self.record_event(
            NewEvent {
                kind: "resumed",
                detail: super::audit::who_and_why(by, reason),
                ..NewEvent::default()
            },
            now,
        )
        .await
    }

    /// `Some` while releases are paused, in one read (workers read it with more before each
    /// claim: [`Store::before_claim`]).
    pub async fn pause_state(&self) -> Result<Option<PauseInfo>, StoreError> {
        let rows: Vec<(String, String)> = self.pool.fetch_all(pause_sql()).await?;
        Ok(pause_from(&rows))
    }

    /// What a worker reads before each claim, in one read: the pause, whether any release
    /// waits for its snapshots (work for the snapshot stage), and the policy sets the replicas
    /// running at `now` run.
    pub async fn before_claim(&self, now: DateTime<Utc>) -> Result<BeforeClaim, StoreError> {
        let mut q = pause_sql();
        q.push(&format!(
            " UNION ALL SELECT '', '' WHERE EXISTS (SELECT 1 FROM releases WHERE {})",
            super::snapshots::WAITING
        ));
        q.push(" UNION ALL SELECT DISTINCT 'digest', policies_digest FROM replicas WHERE live_until >= ")
            .push_bind(super::ms(now));
        let rows: Vec<(String, String)> = self.pool.fetch_all(q).await?;
        Ok(BeforeClaim {
            paused: pause_from(&rows),
            snapshots_waiting: rows.iter().any(|(key, _)| key.is_empty()),
            live_policy_sets: rows
                .iter()
                .filter(|(key, _)| key == "digest")
                .map(|(_, d)| d.clone())
                .collect(),
        })
    }

    /// This database's identity, made on first use: a saved plan records it, so that a plan
    /// made against one database is not applied to another.
    pub async fn database_id(&self) -> Result<String, StoreError> {
        self.pool
            .execute(
                Sql::new(
                    "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                )
                .bind(DATABASE_ID)
                .bind(super::new_client_token()),
            )
            .await?;
        Ok(self.setting(DATABASE_ID).await?.unwrap_or_default())
    }
}
