//! The one place that knows there are two databases: opening them and running SQL on either.
//!
//! It opens and migrates a SQLite or PostgreSQL pool and runs the store's SQL, written once with
//! `$N` placeholders. Every stored value is an integer or a text (times are milliseconds, flags
//! 0/1), so a query is its text plus a list of [`Value`]s ([`Sql`]); [`Pool`] and [`Tx`] bind
//! those to whichever driver they hold and decode rows that both drivers can decode
//! ([`FromEither`]). Errors leave here as [`StoreError`]s, SQLite's explained by
//! [`super::diagnose`].

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::encode::Encode;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow};
use sqlx::{Arguments, Database, FromRow, PgPool, Postgres, Sqlite, SqlitePool, Transaction, Type};

use super::diagnose::SqliteFile;
use super::{BatchId, ReleaseId, StoreError};

/// A value bound to a placeholder: every stored value is an integer or a text, or NULL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Value {
    Int(Option<i64>),
    Text(Option<String>),
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(Some(v))
    }
}

impl From<Option<i64>> for Value {
    fn from(v: Option<i64>) -> Value {
        Value::Int(v)
    }
}

/// Flags are stored as 0 or 1.
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Int(Some(i64::from(v)))
    }
}

impl From<ReleaseId> for Value {
    fn from(v: ReleaseId) -> Value {
        Value::Int(Some(v.0))
    }
}

impl From<Option<ReleaseId>> for Value {
    fn from(v: Option<ReleaseId>) -> Value {
        Value::Int(v.map(|v| v.0))
    }
}

impl From<BatchId> for Value {
    fn from(v: BatchId) -> Value {
        Value::Int(Some(v.0))
    }
}

impl From<Option<BatchId>> for Value {
    fn from(v: Option<BatchId>) -> Value {
        Value::Int(v.map(|v| v.0))
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(Some(v.to_string()))
    }
}

impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(Some(v))
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Value {
        Value::Text(Some(v.clone()))
    }
}

impl From<Option<&str>> for Value {
    fn from(v: Option<&str>) -> Value {
        Value::Text(v.map(str::to_string))
    }
}

impl From<Option<String>> for Value {
    fn from(v: Option<String>) -> Value {
        Value::Text(v)
    }
}

/// SQL text with `$N` placeholders and the values bound to them, in order: `$1` is the first.
///
/// [`Sql::bind`] binds the next placeholder already written in the text; [`Sql::push_bind`]
/// writes the next placeholder and binds it. Both number from the values bound so far, so a
/// query may start with a text of its own `$1`..`$k` and grow with pushed ones after them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Sql {
    text: String,
    args: Vec<Value>,
}

impl Sql {
    pub(super) fn new(text: impl Into<String>) -> Sql {
        Sql {
            text: text.into(),
            args: Vec::new(),
        }
    }

    /// Binds the next placeholder of the text.
    pub(super) fn bind(mut self, v: impl Into<Value>) -> Sql {
        self.args.push(v.into());
        self
    }

    /// Appends SQL text.
    pub(super) fn push(&mut self, text: &str) -> &mut Sql {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder bound to `v`.
    pub(super) fn push_bind(&mut self, v: impl Into<Value>) -> &mut Sql {
        self.args.push(v.into());
        self.text.push('$');
        self.text.push_str(&self.args.len().to_string());
        self
    }

    /// Appends `(v1, v2, ...)`, each bound: the list of an `IN`.
    pub(super) fn push_list<V: Into<Value>>(
        &mut self,
        vs: impl IntoIterator<Item = V>,
    ) -> &mut Sql {
        self.push("(");
        for (i, v) in vs.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.push_bind(v);
        }
        self.push(")")
    }

    /// Appends `VALUES (..), (..)`: one row of bound values per item.
    pub(super) fn push_values<T, const N: usize>(
        &mut self,
        items: &[T],
        row: impl Fn(&T) -> [Value; N],
    ) -> &mut Sql {
        self.push("VALUES ");
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.push_list(row(item));
        }
        self
    }

    /// Appends `other`, its placeholders renumbered after the values bound so far: two
    /// statements written with their own `$1`.. become parts of one.
    pub(super) fn append(&mut self, other: Sql) -> &mut Sql {
        let offset = self.args.len();
        let text = rewrite_placeholders(&other.text, |n, out| {
            out.push('$');
            out.push_str(&(n + offset).to_string());
            true
        });
        self.text.push_str(&text);
        self.args.extend(other.args);
        self
    }

    /// The same statement with anonymous `?` placeholders, its values bound in the order the
    /// placeholders appear (a value used twice is bound twice), for SQLite. SQLite's driver
    /// looks each numbered placeholder up by name, a scan of all of them, so a statement with
    /// thousands (a multi-row insert) cost time quadratic in its size; anonymous ones cost
    /// nothing to look up.
    fn anonymous(&self) -> Sql {
        let mut args = Vec::with_capacity(self.args.len());
        let text = rewrite_placeholders(&self.text, |n, out| {
            match n.checked_sub(1).and_then(|k| self.args.get(k)) {
                Some(v) => {
                    out.push('?');
                    args.push(v.clone());
                    true
                }
                // Unbound: left for the driver to refuse, as before.
                None => false,
            }
        });
        Sql { text, args }
    }

    /// The values in the form `DB`'s driver binds.
    fn arguments<'q, DB: Database>(&'q self) -> Result<DB::Arguments<'q>, sqlx::Error>
    where
        Option<i64>: Encode<'q, DB> + Type<DB>,
        Option<&'q str>: Encode<'q, DB> + Type<DB>,
    {
        let mut args = DB::Arguments::<'q>::default();
        for v in &self.args {
            match v {
                Value::Int(i) => args.add(*i),
                Value::Text(s) => args.add(s.as_deref()),
            }
            .map_err(sqlx::Error::Encode)?;
        }
        Ok(args)
    }

    #[cfg(test)]
    pub(super) fn text(&self) -> &str {
        &self.text
    }

    #[cfg(test)]
    pub(super) fn values(&self) -> &[Value] {
        &self.args
    }
}

/// An aggregate of the rows in scope as one JSON text: an array holding an array of `columns`
/// for each row, in `order_by`'s order if given (SQLite's `json_group_array` gives `[]` for no
/// rows, PostgreSQL's `json_agg` NULL). Many rows read as one: sqlx copies every column of
/// every row it decodes, which for a hundred rows costs more than the statement itself.
pub(super) fn json_rows(postgres: bool, columns: &str, order_by: Option<&str>) -> String {
    let order = order_by
        .map(|o| format!(" ORDER BY {o}"))
        .unwrap_or_default();
    if postgres {
        format!("json_agg(json_build_array({columns}){order})::text")
    } else {
        format!("json_group_array(json_array({columns}){order})")
    }
}

/// How many rows [`Pool::fetch_json_pages`] reads a statement: 5,000 releases are about 2 MB of
/// JSON text.
pub(super) const JSON_PAGE: i64 = 5_000;

/// The rows [`json_rows`] aggregated, each decoded as a `T` (a tuple of its columns).
pub(super) fn parse_json_rows<T: serde::de::DeserializeOwned>(
    text: Option<&str>,
    what: &str,
) -> Result<Vec<T>, sqlx::Error> {
    serde_json::from_str(text.unwrap_or("[]")).map_err(|e| sqlx::Error::ColumnDecode {
        index: what.to_string(),
        source: Box::new(e),
    })
}

/// `text` with each `$N` placeholder outside quoted text and identifiers written by `write`
/// (`false`: left as it was).
fn rewrite_placeholders(text: &str, mut write: impl FnMut(usize, &mut String) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quote: Option<char> = None;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '$') if chars.peek().is_some_and(|(_, d)| d.is_ascii_digit()) => {
                let start = i + 1;
                let mut end = start;
                while let Some((j, d)) = chars.peek().copied() {
                    if !d.is_ascii_digit() {
                        break;
                    }
                    end = j + 1;
                    chars.next();
                }
                let n: usize = text[start..end].parse().unwrap_or(0);
                if !write(n, &mut out) {
                    out.push_str(&text[i..end]);
                }
                continue;
            }
            (None, _) => {}
        }
        out.push(c);
    }
    out
}

/// A row both drivers decode: a row type of [`super::rows`], or a tuple of integers and texts.
pub(super) trait FromEither:
    for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{
}

impl<T> FromEither for T where
    T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{
}

/// A connection pool to one of the two databases.
#[derive(Clone)]
pub(super) enum Pool {
    Sqlite(SqliteFiles),
    Postgres(PgPool),
}

/// A SQLite file's connections: the one that writes, and those that only read.
#[derive(Clone)]
pub(super) struct SqliteFiles {
    /// Every write and every transaction: SQLite has one writer anyway, and this keeps claims
    /// serial.
    writer: SqlitePool,
    /// A read outside a transaction (a statement that starts with `SELECT`). SQLite's driver runs
    /// each connection's statements on a thread of its own, and handing a statement to it and
    /// back costs more than most statements (100 µs or more where threads wake on another
    /// CPU); reads on their own connections run beside the writer's work instead of waiting
    /// behind it. In WAL mode a read sees every commit made before it starts. The writer
    /// itself for a database in memory, whose connections would share one cache and lock it.
    readers: SqlitePool,
    file: Arc<SqliteFile>,
}

/// Connections that only read, per SQLite file.
const SQLITE_READERS: u32 = 2;

impl SqliteFiles {
    /// The pool a statement outside a transaction runs on.
    fn for_statement(&self, q: &Sql) -> &SqlitePool {
        if q.text.trim_start().starts_with("SELECT") {
            &self.readers
        } else {
            &self.writer
        }
    }
}

/// A transaction on one of the two databases. Dropped without [`Tx::commit`], it rolls back.
pub(super) enum Tx {
    Sqlite(Transaction<'static, Sqlite>, Arc<SqliteFile>),
    Postgres(Transaction<'static, Postgres>),
}

/// The file a `sqlite:` URL names; `None` for another database or an in-memory one.
pub(super) fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    if !url.starts_with("sqlite:") || url.contains(":memory:") || url.contains("mode=memory") {
        return None;
    }
    let opts = SqliteConnectOptions::from_str(url).ok()?;
    Some(opts.get_filename().to_path_buf())
}

/// The file `DB.{suffix}` beside the SQLite file `db`, opened (made if need be) to be locked,
/// with its path; `None` where it cannot be made (a read-only folder).
pub(super) fn open_beside(
    db: &std::path::Path,
    suffix: &str,
) -> Option<(std::fs::File, std::path::PathBuf)> {
    let mut name = db.as_os_str().to_owned();
    name.push(format!(".{suffix}"));
    let path = std::path::PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .ok()?;
    Some((file, path))
}

/// Waits (at most 60 s) for an exclusive lock on the file `DB.{suffix}` beside the SQLite file
/// `db`, held until the returned file is dropped. `None` where the file cannot be made (a
/// read-only folder: nothing there can be migrated by anyone either).
pub(super) async fn lock_beside(
    db: &std::path::Path,
    suffix: &str,
    shown: &str,
) -> Result<Option<std::fs::File>, StoreError> {
    let Some((file, name)) = open_beside(db, suffix) else {
        return Ok(None);
    };
    let waited = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || file.lock().map(|()| file)),
    )
    .await;
    match waited {
        Ok(Ok(Ok(file))) => Ok(Some(file)),
        // The platform cannot lock files there: go on as before locks were taken.
        Ok(Ok(Err(_))) | Ok(Err(_)) => Ok(None),
        Err(_) => Err(StoreError::Connect {
            url: shown.to_string(),
            source: sqlx::Error::Protocol(format!(
                "another process held {} for more than 60 s while migrating the database",
                name.display()
            )),
        }),
    }
}

/// Turns a driver error into a store error, explaining SQLite's when it can.
fn sqlite_err(file: &SqliteFile) -> impl Fn(sqlx::Error) -> StoreError + '_ {
    move |e| file.diagnose(e)
}

impl Pool {
    /// Opens a pool for `url` (`sqlite:` or `postgres:`/`postgresql:`), creating a SQLite file
    /// if needed. `shown` is the URL as errors show it (without its password).
    pub(super) async fn open(url: &str, shown: &str) -> Result<Pool, StoreError> {
        let connect_err = |source| StoreError::Connect {
            url: shown.to_string(),
            source,
        };
        if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(connect_err)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10));
            let file = Arc::new(SqliteFile::new(url, opts.get_filename()));
            // `sqlite::memory:` or `mode=memory`: the driver shares such a database between its
            // connections through SQLite's shared cache, whose table locks would fail a read
            // while the writer holds them. Its reads stay on the writer.
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            let writer = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(opts.clone())
                .await
                .map_err(|e| file.diagnose_or(e, connect_err))?;
            // Opened when first used: after the writer has created and migrated the file.
            let readers = if in_memory {
                writer.clone()
            } else {
                SqlitePoolOptions::new()
                    .max_connections(SQLITE_READERS)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_lazy_with(opts.create_if_missing(false).read_only(true))
            };
            Ok(Pool::Sqlite(SqliteFiles {
                writer,
                readers,
                file,
            }))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let opts = PgConnectOptions::from_str(url).map_err(connect_err)?;
            // One connection first, for its own error: the pool retries a refused connection
            // until its timeout and then says only that it timed out.
            use sqlx::Connection as _;
            match tokio::time::timeout(
                Duration::from_secs(10),
                sqlx::PgConnection::connect_with(&opts),
            )
            .await
            {
                Ok(Ok(c)) => c.close().await.map_err(connect_err)?,
                Ok(Err(e)) => return Err(connect_err(e)),
                Err(_) => return Err(connect_err(sqlx::Error::PoolTimedOut)),
            }
            let p = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts)
                .await
                .map_err(connect_err)?;
            Ok(Pool::Postgres(p))
        } else {
            Err(StoreError::Url {
                url: shown.to_string(),
            })
        }
    }

    /// Applies this database's migrations. `shown` is the URL as errors show it.
    pub(super) async fn migrate(&self, shown: &str) -> Result<(), StoreError> {
        let migrator = match self {
            Pool::Sqlite(..) => sqlx::migrate!("./migrations/sqlite"),
            Pool::Postgres(_) => sqlx::migrate!("./migrations/postgres"),
        };
        let known = migrator.iter().map(|m| m.version).max().unwrap_or_default();
        let result = match self {
            Pool::Sqlite(f) => migrator
                .run(&f.writer)
                .await
                .map_err(|e| f.file.explain_migration(e)),
            Pool::Postgres(p) => migrator.run(p).await.map_err(Err),
        };
        result.map_err(|e| match e {
            Ok(explained) => explained,
            Err(sqlx::migrate::MigrateError::VersionMissing(found)) => StoreError::TooNew {
                url: shown.to_string(),
                found,
                known,
            },
            Err(source) => StoreError::Migrate {
                url: shown.to_string(),
                source,
            },
        })
    }

    /// True on PostgreSQL, whose claims lock the rows they read (`FOR UPDATE SKIP LOCKED`).
    pub(super) fn is_postgres(&self) -> bool {
        matches!(self, Pool::Postgres(_))
    }

    pub(super) async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(match self {
            // IMMEDIATE: the write lock is taken at BEGIN, where SQLite's busy timeout waits
            // for another process's writer. A deferred transaction that reads and then writes
            // after another process wrote cannot wait: SQLite fails it at once as "database is
            // locked" (found running two applies on one file: both ended on that error).
            Pool::Sqlite(f) => Tx::Sqlite(
                f.writer
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(sqlite_err(&f.file))?,
                f.file.clone(),
            ),
            Pool::Postgres(p) => Tx::Postgres(p.begin().await?),
        })
    }

    /// Runs a statement; returns how many rows it changed.
    pub(super) async fn execute(&self, q: Sql) -> Result<u64, StoreError> {
        Ok(match self {
            Pool::Sqlite(f) => {
                let (p, file) = (f.for_statement(&q), &f.file);
                let q = q.anonymous();
                sqlx::query_with(&q.text, q.arguments::<Sqlite>()?)
                    .execute(p)
                    .await
                    .map_err(sqlite_err(file))?
                    .rows_affected()
            }
            Pool::Postgres(p) => sqlx::query_with(&q.text, q.arguments::<Postgres>()?)
                .execute(p)
                .await?
                .rows_affected(),
        })
    }

    pub(super) async fn fetch_all<O: FromEither>(&self, q: Sql) -> Result<Vec<O>, StoreError> {
        Ok(match self {
            Pool::Sqlite(f) => {
                let (p, file) = (f.for_statement(&q), &f.file);
                let q = q.anonymous();
                sqlx::query_as_with(&q.text, q.arguments::<Sqlite>()?)
                    .fetch_all(p)
                    .await
                    .map_err(sqlite_err(file))?
            }
            Pool::Postgres(p) => {
                sqlx::query_as_with(&q.text, q.arguments::<Postgres>()?)
                    .fetch_all(p)
                    .await?
            }
        })
    }

    /// The rows of `q` (whose result has exactly `columns`), read as one row: aggregated into
    /// one JSON text by the database (see [`json_rows`]) and each decoded as a `T`, a tuple or
    /// struct of those columns in order. In no particular order.
    pub(super) async fn fetch_json<T: serde::de::DeserializeOwned>(
        &self,
        columns: &str,
        q: Sql,
    ) -> Result<Vec<T>, StoreError> {
        self.fetch_json_ordered(columns, None, q).await
    }

    /// [`Pool::fetch_json`], the rows in `order_by`'s order (columns of `q`) if given.
    async fn fetch_json_ordered<T: serde::de::DeserializeOwned>(
        &self,
        columns: &str,
        order_by: Option<&str>,
        q: Sql,
    ) -> Result<Vec<T>, StoreError> {
        let mut one = Sql::new(format!(
            "SELECT {} FROM (",
            json_rows(self.is_postgres(), columns, order_by)
        ));
        one.append(q).push(") rows_as_json");
        let (text,): (Option<String>,) = self.fetch_one(one).await?;
        Ok(parse_json_rows(text.as_deref(), columns)?)
    }

    /// [`Pool::fetch_json`] a page of up to [`JSON_PAGE`] rows at a time, for reads that may
    /// be a whole fleet's: one page's text is held at a time, not the whole read's.
    /// `page(after, n)` is the query for the first `n` rows in `order_by`'s order (`key`, a
    /// unique key of its columns) that follow `after`, the key of the last row of the page
    /// before (`None` for the first); at most `limit` rows in all, in that order, each as
    /// `decode` makes it. The database orders and
    /// compares the key, so its collation and the pages agree, and no row is read twice. A page
    /// that does not move past the one before is refused, never read again and again.
    ///
    /// Each page is its own statement: a row that changes meanwhile is read as it was when its
    /// page was, and one added after its page was read is not read, as if the read had been
    /// made before it was added.
    pub(super) async fn fetch_json_pages<T: serde::de::DeserializeOwned, K: PartialEq, U>(
        &self,
        columns: &str,
        order_by: &str,
        limit: Option<i64>,
        key: impl Fn(&T) -> K,
        page: impl Fn(Option<&K>, i64) -> Sql,
        decode: impl Fn(T) -> Result<U, sqlx::Error>,
    ) -> Result<Vec<U>, StoreError> {
        let mut out: Vec<U> = Vec::new();
        let mut before: Option<K> = None;
        loop {
            let want = match limit {
                Some(l) => (l - out.len() as i64).clamp(0, JSON_PAGE),
                None => JSON_PAGE,
            };
            if want == 0 {
                break;
            }
            let q = page(before.as_ref(), want);
            let rows: Vec<T> = self.fetch_json_ordered(columns, Some(order_by), q).await?;
            let last = rows.last().map(&key);
            if before.is_some() && last == before {
                return Err(StoreError::Db(sqlx::Error::Protocol(format!(
                    "a page of ({columns}) ordered by {order_by} did not move past the one \
                     before, so the read was stopped rather than repeated; nothing was written. \
                     This is a defect in ecs-janitor's query, not in your data: please report it \
                     with the database kind and version"
                ))));
            }
            let full = rows.len() as i64 == want;
            // Decoded a page at a time: a whole read's raw rows never sit beside its result.
            out.reserve(rows.len());
            for r in rows {
                out.push(decode(r)?);
            }
            before = last;
            if !full {
                break;
            }
        }
        Ok(out)
    }

    pub(super) async fn fetch_optional<O: FromEither>(
        &self,
        q: Sql,
    ) -> Result<Option<O>, StoreError> {
        Ok(match self {
            Pool::Sqlite(f) => {
                let (p, file) = (f.for_statement(&q), &f.file);
                let q = q.anonymous();
                sqlx::query_as_with(&q.text, q.arguments::<Sqlite>()?)
                    .fetch_optional(p)
                    .await
                    .map_err(sqlite_err(file))?
            }
            Pool::Postgres(p) => {
                sqlx::query_as_with(&q.text, q.arguments::<Postgres>()?)
                    .fetch_optional(p)
                    .await?
            }
        })
    }

    pub(super) async fn fetch_one<O: FromEither>(&self, q: Sql) -> Result<O, StoreError> {
        Ok(match self {
            Pool::Sqlite(f) => {
                let (p, file) = (f.for_statement(&q), &f.file);
                let q = q.anonymous();
                sqlx::query_as_with(&q.text, q.arguments::<Sqlite>()?)
                    .fetch_one(p)
                    .await
                    .map_err(sqlite_err(file))?
            }
            Pool::Postgres(p) => {
                sqlx::query_as_with(&q.text, q.arguments::<Postgres>()?)
                    .fetch_one(p)
                    .await?
            }
        })
    }
}

impl Tx {
    /// True on PostgreSQL, which takes one statement at a time.
    pub(super) fn is_postgres(&self) -> bool {
        matches!(self, Tx::Postgres(_))
    }

    pub(super) async fn commit(self) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(t, file) => t.commit().await.map_err(sqlite_err(&file)),
            Tx::Postgres(t) => Ok(t.commit().await?),
        }
    }

    pub(super) async fn rollback(self) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(t, file) => t.rollback().await.map_err(sqlite_err(&file)),
            Tx::Postgres(t) => Ok(t.rollback().await?),
        }
    }

    /// Runs a statement; returns how many rows it changed.
    pub(super) async fn execute(&mut self, q: Sql) -> Result<u64, StoreError> {
        Ok(match self {
            Tx::Sqlite(t, file) => {
                let q = q.anonymous();
                sqlx::query_with(&q.text, q.arguments::<Sqlite>()?)
                    .execute(&mut **t)
                    .await
                    .map_err(sqlite_err(file))?
                    .rows_affected()
            }
            Tx::Postgres(t) => sqlx::query_with(&q.text, q.arguments::<Postgres>()?)
                .execute(&mut **t)
                .await?
                .rows_affected(),
        })
    }

    pub(super) async fn fetch_all<O: FromEither>(&mut self, q: Sql) -> Result<Vec<O>, StoreError> {
        Ok(match self {
            Tx::Sqlite(t, file) => {
                let q = q.anonymous();
                sqlx::query_as_with(&q.text, q.arguments::<Sqlite>()?)
                    .fetch_all(&mut **t)
                    .await
                    .map_err(sqlite_err(file))?
            }
            Tx::Postgres(t) => {
                sqlx::query_as_with(&q.text, q.arguments::<Postgres>()?)
                    .fetch_all(&mut **t)
                    .await?
            }
        })
    }

    pub(super) async fn fetch_optional<O: FromEither>(
        &mut self,
        q: Sql,
    ) -> Result<Option<O>, StoreError> {
        Ok(match self {
            Tx::Sqlite(t, file) => {
                let q = q.anonymous();
                sqlx::query_as_with(&q.text, q.arguments::<Sqlite>()?)
                    .fetch_optional(&mut **t)
                    .await
                    .map_err(sqlite_err(file))?
            }
            Tx::Postgres(t) => {
                sqlx::query_as_with(&q.text, q.arguments::<Postgres>()?)
                    .fetch_optional(&mut **t)
                    .await?
            }
        })
    }

    pub(super) async fn fetch_one<O: FromEither>(&mut self, q: Sql) -> Result<O, StoreError> {
        Ok(match self {
            Tx::Sqlite(t, file) => {
                let q = q.anonymous();
                sqlx::query_as_with(&q.text, q.arguments::<Sqlite>()?)
                    .fetch_one(&mut **t)
                    .await
                    .map_err(sqlite_err(file))?
            }
            Tx::Postgres(t) => {
                sqlx::query_as_with(&q.text, q.arguments::<Postgres>()?)
                    .fetch_one(&mut **t)
                    .await?
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushed_placeholders_number_on_from_the_bound_ones() {
        let mut q = Sql::new("UPDATE t SET a = $1 WHERE b = $2")
            .bind(7)
            .bind("x");
        q.push(" AND id IN ")
            .push_list([ReleaseId(1), ReleaseId(2)]);
        assert_eq!(
            q.text(),
            "UPDATE t SET a = $1 WHERE b = $2 AND id IN ($3, $4)"
        );
        assert_eq!(
            q.values(),
            [
                Value::Int(Some(7)),
                Value::Text(Some("x".into())),
                Value::Int(Some(1)),
                Value::Int(Some(2))
            ]
        );
    }

    #[test]
    fn values_rows_are_bound_in_order() {
        let mut q = Sql::new("INSERT INTO t (a, b) ");
        q.push_values(&[(1i64, "p"), (2, "q")], |(n, s)| {
            [(*n).into(), (*s).into()]
        });
        assert_eq!(q.text(), "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)");
        assert_eq!(q.values().len(), 4);
        assert_eq!(q.values()[3], Value::Text(Some("q".into())));
    }

    #[test]
    fn nulls_keep_their_type() {
        assert_eq!(Value::from(None::<i64>), Value::Int(None));
        assert_eq!(Value::from(None::<&str>), Value::Text(None));
        assert_eq!(Value::from(None::<BatchId>), Value::Int(None));
        assert_eq!(Value::from(true), Value::Int(Some(1)));
    }

    #[test]
    fn sqlite_gets_anonymous_placeholders_in_the_order_they_appear() {
        let mut q = Sql::new("SELECT $2 || '$1' || \"$3\" WHERE a = $1 OR b = $2")
            .bind(7)
            .bind("x");
        q.push(" AND c IN ").push_list([ReleaseId(5)]);
        let a = q.anonymous();
        assert_eq!(
            a.text(),
            "SELECT ? || '$1' || \"$3\" WHERE a = ? OR b = ? AND c IN (?)"
        );
        assert_eq!(
            a.values(),
            [
                Value::Text(Some("x".into())),
                Value::Int(Some(7)),
                Value::Text(Some("x".into())),
                Value::Int(Some(5)),
            ]
        );
        // A placeholder with no value stays as written, for the driver to refuse.
        assert_eq!(Sql::new("SELECT $1").anonymous().text(), "SELECT $1");
    }

    /// A fresh SQLite database (kept while the folder lives) with table `t (a, b)`, `a` its
    /// key when `keyed`.
    async fn scratch(keyed: bool) -> (tempfile::TempDir, Pool) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let pool = Pool::open(&url, &url).await.unwrap();
        let key = if keyed { " PRIMARY KEY" } else { "" };
        pool.execute(Sql::new(format!("CREATE TABLE t (a INTEGER{key}, b TEXT)")))
            .await
            .unwrap();
        (dir, pool)
    }

    #[tokio::test]
    async fn sqlite_runs_a_statement_of_thousands_of_values_once_each() {
        let (_dir, pool) = scratch(false).await;
        let rows: Vec<(i64, String)> = (0..3000).map(|k| (k, format!("v{k}"))).collect();
        let mut q = Sql::new("INSERT INTO t (a, b) ");
        q.push_values(&rows, |(a, b)| [(*a).into(), b.as_str().into()]);
        assert_eq!(pool.execute(q).await.unwrap(), 3000);
        let back: Vec<(i64, String)> = pool
            .fetch_all(
                Sql::new("SELECT a, b FROM t WHERE a >= $2 AND b <> $1 ORDER BY a LIMIT 2")
                    .bind("v2998")
                    .bind(2998),
            )
            .await
            .unwrap();
        assert_eq!(back, vec![(2999, "v2999".to_string())]);
    }

    #[tokio::test]
    async fn a_paged_read_stops_at_a_page_that_does_not_move_on() {
        let (_dir, pool) = scratch(true).await;
        let rows: Vec<(i64, String)> = (0..12_000).map(|k| (k, format!("\"{k}\""))).collect();
        for chunk in rows.chunks(4_000) {
            let mut q = Sql::new("INSERT INTO t (a, b) ");
            q.push_values(chunk, |(a, b)| [(*a).into(), b.as_str().into()]);
            pool.execute(q).await.unwrap();
        }
        let read = |cmp: &'static str| {
            let pool = &pool;
            async move {
                pool.fetch_json_pages(
                    "a, b",
                    "a",
                    None,
                    |r: &(i64, String)| r.0,
                    |after, n| {
                        let mut q = Sql::new("SELECT a, b FROM t WHERE 1 = 1");
                        if let Some(a) = after {
                            q.push(&format!(" AND a {cmp} ")).push_bind(*a);
                        }
                        q.push(" ORDER BY a LIMIT ").push_bind(n);
                        q
                    },
                    Ok,
                )
                .await
            }
        };
        // Three pages, each row once, in order, text whole.
        assert_eq!(read(">").await.unwrap(), rows);
        // A key compared the wrong way reads the first page again: refused, not looped on.
        let err = read("<=").await.unwrap_err().to_string();
        assert!(err.contains("did not move past"), "{err}");
    }
}
