//! Observations: when each instance was first seen Stopped.
//!
//! The first sighting is kept from one listing to the next and cleared when a listing shows the
//! stop ended, so `stopped_for` counts one unbroken stop.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::ecs::client::DescribeFilter;
use crate::ecs::InstanceStatus;

/// What one listing shows of the Stopped instances of its (account, region): which it listed
/// Stopped, which it listed in another state, and which it could have listed at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    pub stopped: Vec<String>,
    pub not_stopped: Vec<String>,
    /// The listing's constraints besides status, one a string (`charge_type=PostPaid`,
    /// `tag:purpose=ci`), sorted: an instance not listed is known not to be Stopped only if it
    /// met all of them.
    pub constraints: Vec<String>,
    /// False when the listing filtered on a status other than Stopped: it could not have
    /// listed a Stopped instance, so an unlisted one says nothing.
    pub sees_stopped: bool,
}

impl Seen {
    /// What `filter`'s listing shows, from what it listed (each instance's id and state).
    pub fn of(filter: &DescribeFilter, listed: &[(String, InstanceStatus)]) -> Seen {
        let (stopped, not_stopped): (Vec<&(String, InstanceStatus)>, Vec<_>) = listed
            .iter()
            .partition(|(_, s)| *s == InstanceStatus::Stopped);
        let mut constraints: Vec<String> = filter
            .tags
            .iter()
            .map(|(k, v)| format!("tag:{k}={v}"))
            .collect();
        if let Some(c) = filter.charge_type {
            constraints.push(format!("charge_type={}", c.as_str()));
        }
        if let Some(ids) = &filter.instance_ids {
            // Only the instances named can be listed: one constraint names the set. It is
            // stored, so its digest must not change between builds (SHA-256, not the std hasher).
            use sha2::Digest;
            let mut sorted: Vec<&str> = ids.iter().map(String::as_str).collect();
            sorted.sort_unstable();
            let digest = sha2::Sha256::digest(sorted.join("\n").as_bytes());
            let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            constraints.push(format!("ids:{hex}"));
        }
        constraints.sort();
        constraints.dedup();
        Seen {
            stopped: stopped.iter().map(|(i, _)| i.clone()).collect(),
            not_stopped: not_stopped.iter().map(|(i, _)| i.clone()).collect(),
            constraints,
            sees_stopped: filter.status.is_none_or(|s| s == InstanceStatus::Stopped),
        }
    }
}

use chrono::{DateTime, Utc};

use super::db::Sql;
use super::{from_ms, ms, Store, StoreError};

impl Store {
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
        seen: &Seen,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let known: Vec<(String, String)> = self
            .observed(
                "seen_with",
                Sql::new("region = $1 AND account = $2")
                    .bind(region)
                    .bind(account),
            )
            .await?;
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
        let mut tx = self.pool.begin().await?;
        for chunk in fresh.chunks(400) {
            let mut q = Sql::new(
                "INSERT INTO observations (instance_id, region, first_seen_stopped_at, account, seen_with) ",
            );
            q.push_values(chunk, |id| {
                [
                    id.as_str().into(),
                    region.into(),
                    ms(now).into(),
                    account.into(),
                    with_now.as_str().into(),
                ]
            });
            q.push(" ON CONFLICT (instance_id) DO NOTHING");
            tx.execute(q).await?;
        }
        for (id, with) in &widened {
            tx.execute(
                Sql::new("UPDATE observations SET seen_with = $2 WHERE instance_id = $1")
                    .bind(*id)
                    .bind(with),
            )
            .await?;
        }
        for chunk in ended.chunks(500) {
            let mut q = Sql::new("DELETE FROM observations WHERE instance_id IN ");
            q.push_list(chunk.iter().copied());
            tx.execute(q).await?;
        }
        tx.commit().await
    }

    /// When each instance was first seen Stopped.
    pub async fn observations(&self) -> Result<HashMap<String, DateTime<Utc>>, StoreError> {
        let rows: Vec<(String, i64)> = self
            .observed("first_seen_stopped_at", Sql::new("1 = 1"))
            .await?;
        Ok(rows.into_iter().map(|(i, t)| (i, from_ms(t))).collect())
    }

    /// Each observation `filter` (a condition with its own `$1`..) selects, as its instance id
    /// and `column`: a page at a time, since it may be a whole fleet's.
    async fn observed<T: serde::de::DeserializeOwned>(
        &self,
        column: &str,
        filter: Sql,
    ) -> Result<Vec<(String, T)>, StoreError> {
        self.pool
            .fetch_json_pages(
                &format!("instance_id, {column}"),
                "instance_id",
                None,
                |r: &(String, T)| r.0.clone(),
                |after: Option<&String>, n| {
                    let mut q = Sql::new(format!(
                        "SELECT instance_id, {column} FROM observations WHERE ("
                    ));
                    q.append(filter.clone()).push(")");
                    if let Some(id) = after {
                        q.push(" AND instance_id > ").push_bind(id.as_str());
                    }
                    q.push(" ORDER BY instance_id LIMIT ").push_bind(n);
                    q
                },
                Ok,
            )
            .await
    }

    /// When each of `ids` was first seen Stopped (those never seen are left out): a batch's
    /// re-check reads its own instances only.
    pub async fn observations_of(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, DateTime<Utc>>, StoreError> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(500) {
            let mut q = Sql::new(
                "SELECT instance_id, first_seen_stopped_at FROM observations WHERE instance_id IN ",
            );
            q.push_list(chunk);
            let rows: Vec<(String, i64)> = self.pool.fetch_all(q).await?;
            out.extend(rows.into_iter().map(|(i, t)| (i, from_ms(t))));
        }
        Ok(out)
    }
}
