//! Which policy set each running daemon runs: replicas that disagree hold every release.

use chrono::{DateTime, Utc};

use super::db::Sql;
use super::{from_ms, ms, Store, StoreError};

/// A daemon as it last said: its policy set, by digest and by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRow {
    pub id: String,
    /// SHA-256 of the set's files (names relative to the folder, and contents).
    pub policies_digest: String,
    /// The set's policy names, comma-separated, for people.
    pub policies: String,
    /// Counted as running until then: three of its own leases after it last said so.
    pub live_until: DateTime<Utc>,
}

impl Store {
    /// Records that replica `id`, written by process `nonce`, runs the policy set `digest`
    /// (named `policies`), to be counted as running until `live_until`. Returns until when
    /// another process was counted as running under the same id, if one still was at `now`
    /// (two daemons given one id, or this one before a crash).
    pub async fn replica_seen(
        &self,
        id: &str,
        nonce: &str,
        digest: &str,
        policies: &str,
        live_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let before: Option<(String, i64)> = self
            .pool
            .fetch_optional(
                Sql::new("SELECT nonce, live_until FROM replicas WHERE id = $1").bind(id),
            )
            .await?;
        self.pool
            .execute(
                Sql::new(
                    "INSERT INTO replicas (id, policies_digest, policies, live_until, nonce)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (id) DO UPDATE SET policies_digest = excluded.policies_digest,
                         policies = excluded.policies, live_until = excluded.live_until,
                         nonce = excluded.nonce",
                )
                .bind(id)
                .bind(digest)
                .bind(policies)
                .bind(ms(live_until))
                .bind(nonce),
            )
            .await?;
        Ok(before
            .filter(|(other, until)| other != nonce && *until >= ms(now))
            .map(|(_, until)| from_ms(until)))
    }

    /// The replicas running at `now`, by id.
    pub async fn live_replicas(&self, now: DateTime<Utc>) -> Result<Vec<ReplicaRow>, StoreError> {
        let rows: Vec<(String, String, String, i64)> = self
            .pool
            .fetch_all(
                Sql::new(
                    "SELECT id, policies_digest, policies, live_until FROM replicas
                     WHERE live_until >= $1 ORDER BY id",
                )
                .bind(ms(now)),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, policies_digest, policies, until)| ReplicaRow {
                id,
                policies_digest,
                policies,
                live_until: from_ms(until),
            })
            .collect())
    }

    /// Forgets replica `id` (it stopped cleanly): the others need not wait for it to age out.
    pub async fn replica_gone(&self, id: &str) -> Result<(), StoreError> {
        self.pool
            .execute(Sql::new("DELETE FROM replicas WHERE id = $1").bind(id))
            .await?;
        Ok(())
    }
}

/// Why releases must wait, when the replicas in `live` run different policy sets: each set
/// with the replicas that run it. `None` when they agree (or there is one).
pub fn disagreement(live: &[ReplicaRow]) -> Option<String> {
    let mut sets: std::collections::BTreeMap<(&str, &str), Vec<&str>> = Default::default();
    for r in live {
        sets.entry((r.policies_digest.as_str(), r.policies.as_str()))
            .or_default()
            .push(r.id.as_str());
    }
    if sets.len() < 2 {
        return None;
    }
    let each: Vec<String> = sets
        .iter()
        .map(|((_, names), ids)| format!("{} run [{names}]", ids.join(", ")))
        .collect();
    Some(format!(
        "the replicas run different policy sets ({}); releases wait until every replica runs the same files (update or stop the others)",
        each.join("; ")
    ))
}
