//! Named leases: work one replica at a time should do (reconciling marks), taken when free or
//! run out, and given back when done.

use chrono::{DateTime, Utc};

use super::db::Sql;
use super::{ms, Store, StoreError};

impl Store {
    /// Takes the lease `name` for `owner` until `until`, if it is free, ran out by `now`, or is
    /// `owner`'s already. Whether `owner` holds it now.
    pub async fn take_lease(
        &self,
        name: &str,
        owner: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let taken = self
            .pool
            .execute(
                Sql::new(
                    "INSERT INTO leases (name, owner, until_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,
                         until_ms = excluded.until_ms
                     WHERE leases.until_ms <= $4 OR leases.owner = excluded.owner",
                )
                .bind(name)
                .bind(owner)
                .bind(ms(until))
                .bind(ms(now)),
            )
            .await?;
        Ok(taken == 1)
    }

    /// Gives the lease `name` back, if `owner` holds it.
    pub async fn end_lease(&self, name: &str, owner: &str) -> Result<(), StoreError> {
        self.pool
            .execute(
                Sql::new("DELETE FROM leases WHERE name = $1 AND owner = $2")
                    .bind(name)
                    .bind(owner),
            )
            .await?;
        Ok(())
    }
}
