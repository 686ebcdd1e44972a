//! The durable release queue's front door: `Store`, opening and migrating it, and its errors.
//!
//! The queue keeps releases, batches with their ClientTokens, policy runs, observations, the
//! audit log and settings, in SQLite (one process) or PostgreSQL (replicas). One implementation
//! serves both databases: the schema is the same (times are UTC milliseconds, flags 0/1), each
//! database has its own migrations, and every query is written once with `$N` placeholders,
//! which both understand (`db` runs them on either). The only difference is how a claim
//! locks: PostgreSQL uses `FOR UPDATE SKIP LOCKED`; SQLite has one writer connection, so its
//! transactions never overlap.
//!
//! The database enforces the queue's invariants: one active release per instance (a partial
//! unique index), one run per (policy, tick) (a primary key), states by CHECK, and completion
//! fenced by lease owner and claim number, so a worker that lost its lease cannot overwrite a
//! result.
//!
//! The store's jobs, one module each: `queue` (enqueue, claim, cancel and retry releases),
//! `batches` (leases, attempts, settling and re-forming batches), `runs` (policy runs), `audit`
//! (the audit log), `settings` (the pause and the database's identity), `observations` (when
//! instances were first seen Stopped), `marks` (the tags written on instances waiting out their
//! grace), `safety` (holds, quarantines, scopes, what was already
//! released), `views` (what operators and metrics read), `rows` (the typed rows, states and
//! ids they return), `diagnose` (SQLite's errors explained) and `db` (the two databases).

mod audit;
mod batches;
mod chain;
mod db;
mod diagnose;
mod exemptions;
mod leases;
mod marks;
mod observations;
mod queue;
mod recheck;
mod replicas;
mod rows;
mod runs;
mod safety;
mod savings;
mod settings;
mod snapshots;
mod views;

use chrono::{DateTime, TimeZone, Utc};

pub use audit::{EventFilter, NewEvent, EVENT_KINDS};
pub use batches::{MemberOutcome, RetryHow, THROTTLED_FREE_FOR};
pub use diagnose::{SqliteDiagnosis, SqliteProblem};
pub use exemptions::{Exempted, ExemptionRow, SeenExemption};
pub use marks::{MarkRow, MarkState};
pub use observations::Seen;
pub use queue::NewRelease;
pub use recheck::RecheckReads;
pub use replicas::{disagreement, ReplicaRow};
pub use rows::{
    BatchId, BatchMember, BatchState, ClaimedBatch, EventId, EventRow, Fence, ReleaseId,
    ReleaseRow, ReleaseSaving, ReleaseState, RunRow, RunStatus, SavedTotals,
};
pub use runs::{AbandonedRun, RunEnd};
pub use safety::{HoldKind, HoldRow};
pub use savings::{DaySavings, PolicySavings, SavingsSummary};
pub use settings::{BeforeClaim, PauseInfo};
pub use snapshots::{SnapshotRow, SnapshotUpdate, StagedRelease};
pub use views::{MetricsSnapshot, ReleaseFilter, StateCounts};

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
    /// SQLite refused the database file (locked, read-only): the diagnosis names the file,
    /// what went wrong and how to fix it. Its text is the diagnosis, whole.
    #[error("{0}")]
    Sqlite(#[source] SqliteDiagnosis),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error(
        "there is no database at {url} ({path} does not exist): an operator's command acts on the \
         database `apply` and `run` use; give the same --database (or JANITOR_DATABASE_URL) they do"
    )]
    Missing { url: String, path: String },
    #[error("release {0} does not exist")]
    NoSuchRelease(ReleaseId),
    #[error("release {id} is {state}; {what}")]
    WrongState {
        id: ReleaseId,
        state: ReleaseState,
        what: &'static str,
    },
}

impl StoreError {
    /// What SQLite said was wrong with the database file and how to fix it, when it said so.
    pub fn sqlite_diagnosis(&self) -> Option<&SqliteDiagnosis> {
        match self {
            StoreError::Sqlite(d) => Some(d),
            _ => None,
        }
    }
}

/// Milliseconds since the epoch, the stored form of every time.
pub fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// The inverse of [`ms`].
pub fn from_ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v).single().unwrap_or_default()
}

/// A fresh ClientToken: 32 hex characters, well within ECS's 64 ASCII.
pub fn new_client_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
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

/// The queue. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: db::Pool,
    url_for_errors: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.url_for_errors)
            .finish()
    }
}

impl Store {
    /// Opens (creating a SQLite file if needed) and migrates the database at `url`. A SQLite
    /// file that is locked or read-only is [`StoreError::Sqlite`], which says what to do.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let shown = redact_url(url);
        let pool = db::Pool::open(url, &shown).await?;
        // Processes that open a new SQLite file at once would each find it unmigrated and
        // collide ("table releases already exists"): one migrates at a time.
        let _one_at_a_time = match db::sqlite_path(url) {
            Some(path) => db::lock_beside(&path, "migrate-lock", &shown).await?,
            None => None,
        };
        pool.migrate(&shown).await?;
        Ok(Store {
            pool,
            url_for_errors: shown,
        })
    }

    /// Opens a database that must exist already, for an operator's commands that read or steer
    /// the queue (`queue`, `history`, `resume`): a SQLite file that is not there is an error,
    /// not a new empty queue that would show nothing (the wrong --database, most likely).
    pub async fn connect_existing(url: &str) -> Result<Store, StoreError> {
        if let Some(path) = Self::missing_file(url) {
            return Err(StoreError::Missing {
                url: redact_url(url),
                path: path.display().to_string(),
            });
        }
        Self::connect(url).await
    }

    /// For `run` on SQLite: holds a lock on a file beside the database for as long as the
    /// daemon runs, or says which file another daemon holds. SQLite takes one writer, so a
    /// second daemon on the same file would only wait on the first's writes ("database is
    /// locked") for as long as both ran; several replicas share the work through PostgreSQL.
    /// `None` for PostgreSQL and in-memory databases.
    pub fn lock_for_daemon(url: &str) -> Result<Option<std::fs::File>, String> {
        let Some(db) = db::sqlite_path(url) else {
            return Ok(None);
        };
        // Where no file can be made, neither can the database: the checks that follow say so.
        let Some((file, path)) = db::open_beside(&db, "run-lock") else {
            return Ok(None);
        };
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Err(format!(
                "another `ecs-janitor run` uses the SQLite database {} (it holds {}): SQLite \
                 takes one daemon; stop the other, or let several share the work through \
                 PostgreSQL (--database postgres://...)",
                redact_url(url),
                path.display()
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(format!(
                "cannot lock the daemon's lock file {}: {e}",
                path.display()
            )),
        }
    }

    /// The SQLite file `url` names when it does not exist yet (connecting would create it).
    pub fn missing_file(url: &str) -> Option<std::path::PathBuf> {
        db::sqlite_path(url).filter(|p| !p.exists())
    }

    /// The database as errors and messages show it (without its password).
    pub fn shown_url(&self) -> &str {
        &self.url_for_errors
    }

    /// True for PostgreSQL.
    fn is_postgres(&self) -> bool {
        self.pool.is_postgres()
    }

    /// True when the database takes one write at a time (SQLite's one writer): claims made side
    /// by side would only queue at it, so a process may as well make them one at a time.
    pub fn writes_one_at_a_time(&self) -> bool {
        !self.is_postgres()
    }

    /// Answers when the database does, with its schema: a database made again under a running
    /// process (no tables) fails here, as every query of the process would.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.pool
            .execute(db::Sql::new("SELECT 1 FROM settings LIMIT 1"))
            .await?;
        Ok(())
    }
}
