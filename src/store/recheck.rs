//! What a batch's re-check reads from the store, in one statement: when its instances were first
//! seen Stopped, which of them a release already released, the pause, and the exemptions in
//! force. Four reads each cost a trip to the database and back, more than the reads themselves.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::db::Sql;
use super::settings::{pause_from, PAUSE_KEYS};
use super::{from_ms, ms, PauseInfo, ReleaseId, Store, StoreError};
use crate::plan::exempt::Exemption;

/// The store's side of a re-check (see the module's note).
#[derive(Debug, Default)]
pub struct RecheckReads {
    /// [`Store::observations_of`] of the batch's instances.
    pub observations: HashMap<String, DateTime<Utc>>,
    /// Of the batch's instances, those some release already released, with that release's
    /// id: ECS may list an instance for a while after a successful DeleteInstances, and no
    /// second release of it may be sent.
    pub released: HashMap<String, ReleaseId>,
    /// [`Store::pause_state`].
    pub paused: Option<PauseInfo>,
    /// [`Store::exemption_map`] at `now`.
    pub exemptions: HashMap<String, Exemption>,
}

impl Store {
    /// The re-check's four reads for `ids` (a batch's instances, at most 100) at `now`, as one
    /// statement: each row is tagged with what it is.
    pub async fn recheck_reads(
        &self,
        ids: &[String],
        now: DateTime<Utc>,
    ) -> Result<RecheckReads, StoreError> {
        let mut out = RecheckReads::default();
        if ids.is_empty() {
            out.paused = self.pause_state().await?;
            out.exemptions = self.exemption_map(now).await?;
            return Ok(out);
        }
        let mut q = Sql::new(
            "SELECT 'seen' AS what, instance_id AS id, first_seen_stopped_at AS n,
                    NULL AS t1, NULL AS t2
             FROM observations WHERE instance_id IN ",
        );
        q.push_list(ids);
        q.push(
            " UNION ALL SELECT 'released', instance_id, MIN(id), NULL, NULL FROM releases
              WHERE state = 'succeeded' AND instance_id IN ",
        );
        q.push_list(ids);
        q.push(" GROUP BY instance_id UNION ALL SELECT 'setting', key, NULL, value, NULL FROM settings WHERE key IN ");
        q.push_list(PAUSE_KEYS);
        q.push(
            " UNION ALL SELECT 'exempt', instance_id, until, by_whom, reason FROM exemptions
              WHERE until > ",
        )
        .push_bind(ms(now));
        // One row back: up to 200 rows decoded one by one cost more than the statement.
        type Row = (String, String, Option<i64>, Option<String>, Option<String>);
        let rows: Vec<Row> = self.pool.fetch_json("what, id, n, t1, t2", q).await?;
        let mut settings = Vec::new();
        for (what, id, n, t1, t2) in rows {
            match (what.as_str(), n) {
                ("seen", Some(at)) => {
                    out.observations.insert(id, from_ms(at));
                }
                ("released", Some(release)) => {
                    out.released.insert(id, ReleaseId(release));
                }
                ("setting", _) => settings.push((id, t1.unwrap_or_default())),
                ("exempt", Some(until)) => {
                    out.exemptions.insert(
                        id,
                        Exemption {
                            until: from_ms(until),
                            by: t1.unwrap_or_default(),
                            reason: t2.unwrap_or_default(),
                        },
                    );
                }
                _ => {}
            }
        }
        out.paused = pause_from(&settings);
        Ok(out)
    }
}
