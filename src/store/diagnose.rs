//! SQLite's result codes read as what is wrong with the database file and how to fix it.
//!
//! SQLite's own words for a locked or read-only file ("database is locked", "attempt to write a
//! readonly database") name neither the file nor a remedy. A SQLite store turns such an error
//! into [`StoreError::Sqlite`] with a [`SqliteDiagnosis`] that says both; other errors pass
//! through unchanged.

use std::path::Path;

use sqlx::migrate::MigrateError;

use super::StoreError;

/// What is wrong with a SQLite database file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqliteProblem {
    /// Another connection held the write lock for as long as SQLite's busy timeout waited
    /// (`SQLITE_BUSY`, `SQLITE_LOCKED`).
    Locked,
    /// The database URL opened the file read-only (`mode=ro`), and something had to write
    /// (`SQLITE_READONLY`).
    OpenedReadOnly,
    /// The file cannot be written by this process: its owner or permissions, its immutable
    /// attribute, or a read-only mount (`SQLITE_READONLY`).
    ReadOnly,
}

impl SqliteProblem {
    /// What to do about it.
    pub fn remedy(self) -> &'static str {
        match self {
            SqliteProblem::Locked => {
                "Usually that is another ecs-janitor (apply or run) using the same file, or a tool \
                 with a transaction open on it: let it finish or stop it, then run this again; \
                 nothing stored was lost. Replicas that run at the same time need PostgreSQL."
            }
            SqliteProblem::OpenedReadOnly => {
                "remove mode=ro to make it writable; nothing stored was lost."
            }
            SqliteProblem::ReadOnly => {
                "Make it writable: check the owner and permissions of the file and its directory, \
                 its immutable attribute (lsattr; chattr -i), and whether it is on a read-only \
                 mount; or point --database (JANITOR_DATABASE_URL) at a writable file. Nothing \
                 stored was lost."
            }
        }
    }
}

/// A SQLite error explained: which file, what went wrong and how to fix it. Its text is the
/// whole explanation, meant to be shown as it is; its source is the driver's error.
#[derive(Debug)]
pub struct SqliteDiagnosis {
    pub problem: SqliteProblem,
    /// The database file, as the database URL names it.
    pub file: String,
    /// SQLite's own words.
    pub said: String,
    source: sqlx::Error,
}

impl SqliteDiagnosis {
    /// What went wrong, naming the file, with SQLite's words.
    pub fn what(&self) -> String {
        let (file, said) = (&self.file, &self.said);
        match self.problem {
            SqliteProblem::Locked => format!(
                "the SQLite database {file} is locked: another connection holds its write lock \
                 and kept it for as long as this command waited (SQLite: {said})"
            ),
            SqliteProblem::OpenedReadOnly => format!(
                "the SQLite database {file} is opened read-only by the database URL (mode=ro) \
                 (SQLite: {said})"
            ),
            SqliteProblem::ReadOnly => {
                format!("the SQLite database {file} is read-only for this process (SQLite: {said})")
            }
        }
    }

    /// What to do about it.
    pub fn remedy(&self) -> &'static str {
        self.problem.remedy()
    }

    /// The diagnosis in `err` or among its sources: how a caller holding an error of its own
    /// (an `anyhow::Error`, or one that wraps a [`StoreError`] transparently) finds it.
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a SqliteDiagnosis> {
        let mut cur = Some(err);
        while let Some(e) = cur {
            if let Some(d) = e.downcast_ref::<SqliteDiagnosis>() {
                return Some(d);
            }
            if let Some(StoreError::Sqlite(d)) = e.downcast_ref::<StoreError>() {
                return Some(d);
            }
            cur = e.source();
        }
        None
    }
}

impl std::fmt::Display for SqliteDiagnosis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sep = match self.problem {
            SqliteProblem::OpenedReadOnly => ": ",
            SqliteProblem::Locked | SqliteProblem::ReadOnly => ". ",
        };
        write!(f, "{}{sep}{}", self.what(), self.remedy())
    }
}

impl std::error::Error for SqliteDiagnosis {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// A SQLite store's database file, as its errors name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SqliteFile {
    file: String,
    /// The URL asks for the file read-only (`mode=ro`).
    read_only_url: bool,
}

impl SqliteFile {
    /// The file `url` opens at `path`.
    pub(super) fn new(url: &str, path: &Path) -> SqliteFile {
        SqliteFile {
            file: path.display().to_string(),
            read_only_url: url::Url::parse(url)
                .is_ok_and(|u| u.query_pairs().any(|(k, v)| k == "mode" && v == "ro")),
        }
    }

    /// `e` explained, or given back when SQLite's result code is not one this knows.
    pub(super) fn explain(&self, e: sqlx::Error) -> Result<SqliteDiagnosis, sqlx::Error> {
        const SQLITE_BUSY: i32 = 5;
        const SQLITE_LOCKED: i32 = 6;
        const SQLITE_READONLY: i32 = 8;
        let (code, said) = match &e {
            sqlx::Error::Database(d) => (
                // The primary result code: extended codes keep it in the low byte.
                d.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0) & 0xff,
                d.message().to_string(),
            ),
            _ => return Err(e),
        };
        let problem = match code {
            SQLITE_BUSY | SQLITE_LOCKED => SqliteProblem::Locked,
            SQLITE_READONLY if self.read_only_url => SqliteProblem::OpenedReadOnly,
            SQLITE_READONLY => SqliteProblem::ReadOnly,
            _ => return Err(e),
        };
        Ok(SqliteDiagnosis {
            problem,
            file: self.file.clone(),
            said,
            source: e,
        })
    }

    /// `e` as a store error: explained when it can be, [`StoreError::Db`] otherwise.
    pub(super) fn diagnose(&self, e: sqlx::Error) -> StoreError {
        self.diagnose_or(e, StoreError::Db)
    }

    /// `e` explained when it can be, `otherwise(e)` when not.
    pub(super) fn diagnose_or(
        &self,
        e: sqlx::Error,
        otherwise: impl FnOnce(sqlx::Error) -> StoreError,
    ) -> StoreError {
        match self.explain(e) {
            Ok(d) => StoreError::Sqlite(d),
            Err(e) => otherwise(e),
        }
    }

    /// A failed migration explained when a statement of it failed in a way [`Self::explain`]
    /// knows; the migration error back otherwise.
    pub(super) fn explain_migration(&self, e: MigrateError) -> Result<StoreError, MigrateError> {
        match e {
            MigrateError::Execute(e) => self
                .explain(e)
                .map(StoreError::Sqlite)
                .map_err(MigrateError::Execute),
            MigrateError::ExecuteMigration(e, v) => self
                .explain(e)
                .map(StoreError::Sqlite)
                .map_err(|e| MigrateError::ExecuteMigration(e, v)),
            e => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diagnosis(problem: SqliteProblem) -> SqliteDiagnosis {
        SqliteDiagnosis {
            problem,
            file: "/var/lib/janitor.db".into(),
            said: "database is locked".into(),
            source: sqlx::Error::PoolClosed,
        }
    }

    #[test]
    fn each_problem_names_the_file_and_a_remedy() {
        assert_eq!(
            diagnosis(SqliteProblem::Locked).to_string(),
            "the SQLite database /var/lib/janitor.db is locked: another connection holds its \
             write lock and kept it for as long as this command waited (SQLite: database is \
             locked). Usually that is another ecs-janitor (apply or run) using the same file, or \
             a tool with a transaction open on it: let it finish or stop it, then run this again; \
             nothing stored was lost. Replicas that run at the same time need PostgreSQL."
        );
        assert_eq!(
            diagnosis(SqliteProblem::OpenedReadOnly).to_string(),
            "the SQLite database /var/lib/janitor.db is opened read-only by the database URL \
             (mode=ro) (SQLite: database is locked): remove mode=ro to make it writable; nothing \
             stored was lost."
        );
        assert_eq!(
            diagnosis(SqliteProblem::ReadOnly).to_string(),
            "the SQLite database /var/lib/janitor.db is read-only for this process (SQLite: \
             database is locked). Make it writable: check the owner and permissions of the file \
             and its directory, its immutable attribute (lsattr; chattr -i), and whether it is \
             on a read-only mount; or point --database (JANITOR_DATABASE_URL) at a writable \
             file. Nothing stored was lost."
        );
    }

    #[test]
    fn a_read_only_url_is_told_from_a_read_only_file() {
        let p = Path::new("/tmp/x.db");
        assert!(SqliteFile::new("sqlite:///tmp/x.db?mode=ro", p).read_only_url);
        assert!(!SqliteFile::new("sqlite:///tmp/x.db?mode=rwc", p).read_only_url);
        assert!(!SqliteFile::new("sqlite:///tmp/x.db", p).read_only_url);
    }

    #[test]
    fn errors_without_a_known_code_pass_through() {
        let f = SqliteFile::new("sqlite:///tmp/x.db", Path::new("/tmp/x.db"));
        assert!(matches!(
            f.diagnose(sqlx::Error::RowNotFound),
            StoreError::Db(sqlx::Error::RowNotFound)
        ));
    }

    #[test]
    fn the_diagnosis_is_found_behind_wrappers() {
        let e = StoreError::Sqlite(diagnosis(SqliteProblem::Locked));
        assert_eq!(
            SqliteDiagnosis::find(&e).map(|d| d.problem),
            Some(SqliteProblem::Locked)
        );
        // As the app's and worker's errors wrap it: transparently, so that the wrapper's
        // source is the store error's source, the diagnosis.
        #[derive(Debug, thiserror::Error)]
        enum Wrapper {
            #[error(transparent)]
            Store(#[from] StoreError),
        }
        let any = anyhow::Error::new(Wrapper::from(e)).context("while applying");
        assert_eq!(
            SqliteDiagnosis::find(&*any).map(|d| d.problem),
            Some(SqliteProblem::Locked)
        );
        assert!(any.chain().any(|c| c.is::<SqliteDiagnosis>()));
        assert!(
            SqliteDiagnosis::find(&StoreError::NoSuchRelease(super::super::ReleaseId(1))).is_none()
        );
    }
}
