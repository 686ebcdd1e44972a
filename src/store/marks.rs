//! The record of marks: what TagResources wrote on each instance waiting out its grace (or why it
//! was refused), and what is still to be removed, so each pass repairs the difference between
//! the marks the queue wants and the marks on the instances. A record is never read back as a
//! release: the queue decides, this only remembers calls.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;

use super::db::{Sql, Value};
use super::{from_ms, ms, ReleaseId, ReleaseState, Store, StoreError};

/// What is known of a mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkState {
    /// ECS accepted the tags: they are on the instance.
    Written,
    /// TagResources was refused (the record says why): the mark is missing.
    Failed,
    /// No longer wanted, and UntagResources was refused: the tags may still be there.
    Removing,
}

impl MarkState {
    pub fn as_str(self) -> &'static str {
        match self {
            MarkState::Written => "written",
            MarkState::Failed => "failed",
            MarkState::Removing => "removing",
        }
    }

    fn parse(s: &str) -> Result<MarkState, sqlx::Error> {
        match s {
            "written" => Ok(MarkState::Written),
            "failed" => Ok(MarkState::Failed),
            "removing" => Ok(MarkState::Removing),
            other => Err(sqlx::Error::Decode(
                format!("unknown mark state {other:?}").into(),
            )),
        }
    }
}

/// One instance's mark, as last written or tried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MarkRow {
    pub instance_id: String,
    /// The account it belongs to (`""`: the default account).
    pub account: String,
    pub region: String,
    /// The release the mark announces.
    pub release_id: ReleaseId,
    /// The keys' prefix (`janitor:`): the keys are `<prefix>release-after` and `<prefix>policy`.
    pub prefix: String,
    /// The value of `<prefix>release-after` (RFC 3339 UTC).
    pub release_after: String,
    /// The value of `<prefix>policy`.
    pub policy: String,
    pub state: MarkState,
    /// The refusal's code and message, when a call was refused.
    pub code: Option<String>,
    pub message: Option<String>,
    pub request_id: Option<String>,
    #[serde(with = "crate::timefmt")]
    pub updated_at: DateTime<Utc>,
    /// The state of the release it announces, when read back (`None`: the release is gone, or
    /// on a row about to be written).
    #[serde(skip)]
    pub release_state: Option<ReleaseState>,
}

#[derive(FromRow)]
struct RawMark {
    instance_id: String,
    account: String,
    region: String,
    release_id: i64,
    prefix: String,
    release_after: String,
    policy: String,
    state: String,
    code: Option<String>,
    message: Option<String>,
    request_id: Option<String>,
    updated_at: i64,
    release_state: Option<String>,
}

impl RawMark {
    fn typed(self) -> Result<MarkRow, StoreError> {
        let release_state = match self.release_state {
            None => None,
            Some(s) => Some(
                s.parse::<ReleaseState>()
                    .map_err(|e| StoreError::Db(sqlx::Error::Decode(e.into())))?,
            ),
        };
        Ok(MarkRow {
            instance_id: self.instance_id,
            account: self.account,
            region: self.region,
            release_id: ReleaseId(self.release_id),
            prefix: self.prefix,
            release_after: self.release_after,
            policy: self.policy,
            state: MarkState::parse(&self.state)?,
            code: self.code,
            message: self.message,
            request_id: self.request_id,
            updated_at: from_ms(self.updated_at),
            release_state,
        })
    }
}

/// Rows per statement: 12 values a row stays far below either database's limit of binds.
const ROWS_PER_STATEMENT: usize = 100;

impl Store {
    /// Every mark recorded, by instance id, each with the state of the release it announces.
    pub async fn marks(&self) -> Result<Vec<MarkRow>, StoreError> {
        let rows: Vec<RawMark> = self
            .pool
            .fetch_all(Sql::new(
                "SELECT m.instance_id, m.account, m.region, m.release_id, m.prefix,
                        m.release_after, m.policy, m.state, m.code, m.message, m.request_id,
                        m.updated_at, r.state AS release_state
                 FROM marks m LEFT JOIN releases r ON r.id = m.release_id
                 ORDER BY m.instance_id",
            ))
            .await?;
        rows.into_iter().map(RawMark::typed).collect()
    }

    /// Records these marks (written, refused, or being removed), replacing what was recorded of
    /// their instances.
    pub async fn record_marks(&self, marks: &[MarkRow]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for chunk in marks.chunks(ROWS_PER_STATEMENT) {
            let mut q = Sql::new(
                "INSERT INTO marks (instance_id, account, region, release_id, prefix,
                 release_after, policy, state, code, message, request_id, updated_at) ",
            );
            q.push_values(chunk, |m| -> [Value; 12] {
                [
                    m.instance_id.as_str().into(),
                    m.account.as_str().into(),
                    m.region.as_str().into(),
                    m.release_id.into(),
                    m.prefix.as_str().into(),
                    m.release_after.as_str().into(),
                    m.policy.as_str().into(),
                    m.state.as_str().into(),
                    m.code.clone().into(),
                    m.message.clone().into(),
                    m.request_id.clone().into(),
                    ms(m.updated_at).into(),
                ]
            });
            q.push(
                " ON CONFLICT (instance_id) DO UPDATE SET account = excluded.account,
                 region = excluded.region, release_id = excluded.release_id,
                 prefix = excluded.prefix, release_after = excluded.release_after,
                 policy = excluded.policy, state = excluded.state, code = excluded.code,
                 message = excluded.message, request_id = excluded.request_id,
                 updated_at = excluded.updated_at",
            );
            tx.execute(q).await?;
        }
        tx.commit().await
    }

    /// Forgets the marks of these instances: removed, or gone with their instance.
    pub async fn forget_marks(&self, instance_ids: &[String]) -> Result<(), StoreError> {
        for chunk in instance_ids.chunks(ROWS_PER_STATEMENT) {
            let mut q = Sql::new("DELETE FROM marks WHERE instance_id IN ");
            q.push_list(chunk.iter());
            self.pool.execute(q).await?;
        }
        Ok(())
    }
}
